"""Activation (gradient) checkpointing for the towers of :class:`~unimlip_kit.models.UniMlipModel`.

Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost" (arXiv 1604.06174): a
checkpointed block keeps only its input in forward and recomputes its activations in backward,
trading one more forward of the block for its activation memory. Transformer towers of Hugging
Face transformers (ViT, BERT, CLIP, ...) checkpoint each layer through their own
``gradient_checkpointing_enable()``; convolutional towers (``ResNetModel``, ``ConvNextModel``:
``supports_gradient_checkpointing`` is ``False``) are checkpointed stage by stage here with
``torch.utils.checkpoint`` (non-reentrant). Both restore the RNG state for the recomputation, so
dropout masks replay and gradients equal the plain ones to float rounding. During a CNN stage's
recomputation its BatchNorm layers normalise with the same batch statistics but do not update
their running statistics a second time. Module structure and ``state_dict`` keys do not change.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["enable_gradient_checkpointing"]

_PLAIN = "_unimlip_plain_forward"


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = 1·running + 0·batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _checkpoint_stage(stage: nn.Module) -> None:
    if hasattr(stage, _PLAIN):
        return
    plain = stage.forward

    def forward(*args, **kwargs):
        if not (stage.training and torch.is_grad_enabled()):
            return plain(*args, **kwargs)
        calls = [0]

        def run(*inputs):
            calls[0] += 1
            if calls[0] == 1:
                return plain(*inputs, **kwargs)
            with _frozen_running_stats(stage):  # the recomputation in backward
                return plain(*inputs, **kwargs)

        return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=True)

    setattr(stage, _PLAIN, plain)
    stage.forward = forward


def _plain_stage(stage: nn.Module) -> None:
    if hasattr(stage, _PLAIN):
        plain = getattr(stage, _PLAIN)
        delattr(stage, _PLAIN)
        if getattr(plain, "__func__", None) is type(stage).forward:
            del stage.forward  # back to the class's forward
        else:
            stage.forward = plain


def _cnn_stages(backbone: nn.Module) -> nn.ModuleList | None:
    stages = getattr(getattr(backbone, "encoder", None), "stages", None)
    return stages if isinstance(stages, nn.ModuleList) and len(stages) else None


def _set(name: str, tower: nn.Module, enabled: bool) -> str:
    if getattr(tower, "supports_gradient_checkpointing", False):
        kwargs = {"use_reentrant": False}
        if hasattr(tower, "activation_checkpointing_enable"):  # transformers >= 5 (the old names warn)
            if enabled:
                tower.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                tower.activation_checkpointing_disable()
        elif enabled:
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            tower.gradient_checkpointing_disable()
        return "transformers layers"
    stages = _cnn_stages(tower)
    if stages is None:
        raise ValueError(f"the {name} tower {type(tower).__name__} supports no gradient checkpointing: it is not a "
                         f"transformers model with supports_gradient_checkpointing, nor a CNN with encoder.stages")
    for stage in stages:
        (_checkpoint_stage if enabled else _plain_stage)(stage)
    return f"{len(stages)} CNN stages"


def enable_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> dict[str, str]:
    """Checkpoint (``enabled=False``: stop checkpointing) the image and text towers of a UniMlipModel.

    Set ``UniMlipModelConfig(gradient_checkpointing=True)`` to have the model call this when built.
    Active in training mode with gradients enabled only (evaluation and ``torch.no_grad`` passes,
    such as :func:`unimlip_kit.gradcache.grad_cache_step`'s embedding pass, run plainly). Returns
    what was checkpointed per tower; a tower that supports neither way raises ``ValueError``.

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> cfg = UniMlipModelConfig(image_tower="resnet", cnn_hidden_sizes=[8, 16], cnn_depths=[1, 1],
        ...                          text_layers=1, text_width=32, text_heads=2, vocab_size=40)
        >>> enable_gradient_checkpointing(UniMlipModel(cfg))
        {'image': '2 CNN stages', 'text': 'transformers layers'}
    """
    image = getattr(model, "image_tower", None)
    text = getattr(model, "text_tower", None)
    if image is None or text is None:
        raise ValueError(f"{type(model).__name__} has no image_tower/text_tower; pass a UniMlipModel")
    backbone = getattr(image, "backbone", image)
    return {"image": _set("image", backbone, enabled), "text": _set("text", text, enabled)}
