"""unimlip_kit: medical vision-language pre-training in the style of Uni-Mlip (arXiv 2411.15207).

Importing the package never imports Triton, xformers or the medical IO
libraries; they load when a backend or reader that needs them is used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
