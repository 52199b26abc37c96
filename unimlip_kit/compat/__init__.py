"""Drop-in classes under the peers' own names: switching is changing one import.

* :mod:`unimlip_kit.compat.open_clip` — ``ClipLoss``, ``SigLipLoss``, ``create_loss``
* :mod:`unimlip_kit.compat.lightly` — ``NTXentLoss`` (SimCLR, or MoCo with ``memory_bank_size``)
* :mod:`unimlip_kit.compat.huggingface` — ``DataCollatorForLanguageModeling`` for image-text batches

Each keeps the peer's argument names, defaults and return forms and computes with unimlip_kit's own
cores (no peer code); differences are listed in each module's docstring.
"""

__all__: list[str] = []
