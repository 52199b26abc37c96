"""The one place in unimlip_kit that touches kornia internals, behind a version check.

kornia's documented extension contract (subclass an augmentation base, set
``self._param_generator`` and ``self.flags``, implement ``apply_transform``;
read a draw back from ``aug._params`` and replay it with ``aug(x, params=...)``)
is used directly by the transforms. Everything beyond it — helpers with a
leading underscore and base-class methods whose names and signatures moved
between releases — is reached only through the functions here, so a kornia
release that moves one of them breaks this file and nothing else:

* ``_AugmentationBase._commit_state`` (0.9; older releases set ``_params`` /
  ``_transform_matrix``): :func:`commit_state`;
* ``_process_kwargs_to_params_and_flags``: :func:`process_kwargs_to_params_and_flags`;
* ``transform_tensor`` / ``validate_tensor``: :func:`standardize_input`;
* ``kornia.augmentation.utils._transform_output_shape``: :func:`transform_output_shape`;
* ``is_autocast_enabled`` (``kornia.core.utils`` from 0.9, ``kornia.utils.helpers``
  before): :func:`is_autocast_enabled`, written here on torch's public API;
* ``ImageSequential``'s input-conversion / output-cache hooks (0.9): :func:`plain_sequential_call`;
* ``kornia.augmentation.container.image._get_new_batch_shape``: :func:`next_batch_shape`.

:data:`MIN_KORNIA` is the oldest kornia whose augmentation tests pass here
(``tests/test_augment_*``, ``tests/test_bad_inputs_augment.py`` and the doctests,
run against each release with torch 2.13): 0.9.0. Releases up to 0.8.3 sample
parameters only for the rows the ``p`` gate selected, while the transforms here
rely on 0.9's one row per sample (gated rows computed alone, exact replay of a
draw with an edited gate); 0.9.0rc1 fails one test inside kornia's
``equalize_clahe`` on a 2 x 3 image. The check compares release numbers, so
0.9.0 pre-releases pass it. Importing :mod:`unimlip_kit.augment` with an older
kornia raises an ``ImportError`` naming both versions.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import kornia
import torch
from kornia.augmentation.utils import _transform_output_shape

__all__ = [
    "KORNIA_VERSION",
    "MIN_KORNIA",
    "check_kornia_version",
    "commit_state",
    "is_autocast_enabled",
    "next_batch_shape",
    "parse_version",
    "plain_sequential_call",
    "process_kwargs_to_params_and_flags",
    "standardize_input",
    "transform_output_shape",
]

#: Oldest kornia release this package is tested against (see the module docstring).
MIN_KORNIA = "0.9.0"


def parse_version(text: str) -> Tuple[int, int, int]:
    """``"0.9.0rc1"`` -> ``(0, 9, 0)``: the numeric release, pre-release tags dropped (as a floor check needs).

    Example:
        >>> parse_version("0.9.0rc1"), parse_version("0.7.3"), parse_version("1.0")
        ((0, 9, 0), (0, 7, 3), (1, 0, 0))
    """
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if m is None:
        raise ValueError(f"cannot read a version number from {text!r}")
    return tuple(int(g) if g is not None else 0 for g in m.groups())  # type: ignore[return-value]


KORNIA_VERSION: str = getattr(kornia, "__version__", "0")


def check_kornia_version(installed: Optional[str] = None, required: str = MIN_KORNIA) -> None:
    """Raise ``ImportError`` naming both versions when the installed kornia is older than ``required``.

    Example:
        >>> check_kornia_version("0.9.0")
        >>> check_kornia_version("0.8.2")
        Traceback (most recent call last):
        ...
        ImportError: unimlip_kit.augment needs kornia>=0.9.0, but kornia 0.8.2 is installed; upgrade it with pip install -U 'kornia>=0.9.0'
    """
    installed = KORNIA_VERSION if installed is None else installed
    if parse_version(installed) < parse_version(required):
        raise ImportError(
            f"unimlip_kit.augment needs kornia>={required}, but kornia {installed} is installed; "
            f"upgrade it with pip install -U 'kornia>={required}'"
        )


check_kornia_version()


def is_autocast_enabled() -> bool:
    """Whether torch autocast is on for any device type (kornia's ``is_autocast_enabled(both=True)``).

    Written here on torch's public API because kornia moved its helper between modules.

    Example:
        >>> is_autocast_enabled()
        False
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     is_autocast_enabled()
        True
    """
    try:
        return any(torch.is_autocast_enabled(dt) for dt in ("cpu", "cuda", "mps", "xpu"))
    except (TypeError, RuntimeError):  # torch < 2.4: no device_type argument
        return bool(torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())


def transform_output_shape(output: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """kornia's ``keepdim`` reshaping: drop the batch dimensions the input did not have.

    Example:
        >>> transform_output_shape(torch.zeros(1, 1, 4, 4), (4, 4)).shape
        torch.Size([4, 4])
    """
    return _transform_output_shape(output, shape)


def standardize_input(module: Any, input: torch.Tensor) -> torch.Tensor:
    """A 2-D augmentation's input in batch form (kornia's ``transform_tensor`` then ``validate_tensor``).

    Example:
        >>> from kornia.augmentation import RandomHorizontalFlip
        >>> standardize_input(RandomHorizontalFlip(), torch.zeros(4, 4)).shape
        torch.Size([1, 1, 4, 4])
    """
    out = module.transform_tensor(input)
    module.validate_tensor(out)
    return out


def process_kwargs_to_params_and_flags(
    module: Any, params: Optional[Dict[str, torch.Tensor]], flags: Dict[str, Any], **kwargs: Any
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Record ``params`` as the module's last draw and apply keyword overrides, as kornia's ``forward`` does.

    Example:
        >>> from kornia.augmentation import RandomHorizontalFlip
        >>> flip = RandomHorizontalFlip(p=1.0)
        >>> p = flip.forward_parameters((1, 1, 2, 2))
        >>> params, flags = process_kwargs_to_params_and_flags(flip, p, flip.flags)
        >>> flip._params is p
        True
    """
    return module._process_kwargs_to_params_and_flags(module._params if params is None else params, flags, **kwargs)


def commit_state(module: Any, *, params: Any, transform_matrix: Optional[torch.Tensor] = None) -> None:
    """Store a draw (and its matrix) on a kornia augmentation as if its own forward had run.

    kornia 0.9 writes per-call state through ``_commit_state`` and computes some
    matrices lazily; older releases set ``_params`` / ``_transform_matrix``.

    Example:
        >>> from kornia.augmentation import RandomHorizontalFlip
        >>> flip = RandomHorizontalFlip(p=1.0)
        >>> p = flip.forward_parameters((1, 1, 2, 2))
        >>> commit_state(flip, params=p, transform_matrix=torch.eye(3)[None])
        >>> flip._params is p, flip.transform_matrix.shape
        (True, torch.Size([1, 3, 3]))
    """
    writer = getattr(module, "_commit_state", None)
    if writer is not None:
        writer(params=params)
        if transform_matrix is not None:
            writer(transform_matrix=transform_matrix)
            if getattr(module, "_lazy_matrix_args", None) is not None:
                writer(lazy_matrix_args=None)
        return
    module._params = params
    if transform_matrix is not None:
        module._transform_matrix = transform_matrix


def plain_sequential_call(module: Any) -> None:
    """Make an ``ImageSequential`` subclass a plain ``nn.Module`` call (no input conversion, no output cache).

    kornia 0.9's ``ImageSequential.__call__`` converts NumPy/PIL inputs and caches
    the last output unless ``disable_features`` is set; older releases have neither.

    Example:
        >>> from kornia.augmentation import ImageSequential
        >>> seq = ImageSequential()
        >>> plain_sequential_call(seq)
        >>> getattr(seq, "disable_features", True)
        True
    """
    if hasattr(type(module), "disable_features"):
        module.disable_features = True


def next_batch_shape(param: Any, batch_shape: torch.Size, module: Any) -> torch.Size:
    """The batch shape after ``module`` ran with ``param`` (a ``ParamItem``): kornia's container bookkeeping.

    Example:
        >>> from kornia.augmentation import RandomCrop
        >>> from kornia.augmentation.container.params import ParamItem
        >>> crop = RandomCrop((4, 4), p=1.0)
        >>> next_batch_shape(ParamItem("c", crop.forward_parameters((2, 1, 8, 8))), torch.Size((2, 1, 8, 8)), crop)
        torch.Size([2, 1, 4, 4])
    """
    from kornia.augmentation.container.image import _get_new_batch_shape

    return _get_new_batch_shape(param, batch_shape, module)
