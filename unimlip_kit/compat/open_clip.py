r"""open_clip's loss classes with open_clip's names and signatures, computed by unimlip_kit's tiled core.

Switch with one import::

    # from open_clip.loss import ClipLoss, SigLipLoss
    from unimlip_kit.compat.open_clip import ClipLoss, SigLipLoss

Constructor arguments, defaults, the forward ``(image_features, text_features,
logit_scale, logit_bias=None, output_dict=False)`` and the return forms (a
tensor, or ``{"contrastive_loss": loss}``) are open_clip's, so
``loss(**model_out, output_dict=True)`` in open_clip's ``train_one_epoch`` and
:func:`create_loss` work unchanged. The computation is different: logits are
never materialised (:func:`unimlip_kit.losses.info_nce` and
:func:`unimlip_kit.ops.sigmoid_pair_loss`, O(N·D) memory), and in float64 the
values and gradients equal open_clip's to rounding (tests/test_compat_open_clip.py).

Distributed semantics, reproduced as open_clip has them:

* ``ClipLoss(gather_with_grad=False)`` (open_clip's default) gathers the other
  ranks' features *without* gradient and puts this rank's own features back in
  its slice. Each rank's loss then only differentiates through its own rows
  and columns, so after DDP's average the feature gradients are 1/W of the
  gradient of the global loss (the logit-scale gradient is exact). This is
  what open_clip computes; ``gather_with_grad=True`` gives the exact gradient
  (the gather's backward sums the gradient over ranks) and is what
  :func:`unimlip_kit.losses.image_text_contrastive_loss` always does.
* ``local_loss=True`` keeps this rank's rows against the gathered columns, with
  open_clip's labels (this rank's offset) and its unweighted mean; exact with
  ``gather_with_grad=True`` and equal per-rank batches.
* ``SigLipLoss``: every ``dist_impl`` ('bidir', 'shift', 'reduce', 'gather')
  yields the same value and gradient (this rank's images against every rank's
  texts, negatives-only off the own block, divided by the local batch); here
  it is one gather with gradient of the texts.

``cache_labels`` is accepted and has no effect (no label tensors are built).
Horovod is not supported (``use_horovod=True`` with ``world_size > 1`` raises).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from unimlip_kit.distributed import all_gather_with_grad
from unimlip_kit.losses.infonce import _info_nce
from unimlip_kit.ops.siglip import as_bias_tensor, dispatch_sigmoid_pair_loss
from unimlip_kit.utils.checks import as_scale_tensor, check_paired

__all__ = ["ClipLoss", "SigLipLoss", "create_loss"]

SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def _check_world(rank: int, world_size: int, use_horovod: bool = False) -> None:
    if use_horovod:
        raise NotImplementedError("unimlip_kit.compat.open_clip does not support Horovod; use torch.distributed")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} but torch.distributed is not initialised")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(
            f"rank={rank}, world_size={world_size} do not match torch.distributed "
            f"(rank {dist.get_rank()} of {dist.get_world_size()})"
        )


def _gather_without_grad(x: torch.Tensor, keep_own: bool) -> tuple[torch.Tensor, int]:
    """All ranks' rows gathered without gradient (open_clip's ``gather_with_grad=False``), and this rank's offset.

    ``keep_own`` puts this rank's own (differentiable) rows back in its slice, as open_clip does
    when ``local_loss=False``.
    """
    gathered = all_gather_with_grad(x.detach())
    full, off, n = gathered.tensor, gathered.offset, x.shape[0]
    if keep_own:
        full = torch.cat([full[:off], x, full[off + n:]], dim=0)
    return full, off


class ClipLoss(nn.Module):
    """open_clip's ``ClipLoss`` (CLIP's symmetric InfoNCE), same arguments and return forms.

    ``logit_bias``, when given, is added to every logit as open_clip does; a
    shared shift does not change a softmax cross-entropy, so it changes neither
    the value nor (beyond rounding) its own zero gradient. ``backend`` selects
    the contrastive core's backend (unimlip_kit's addition; keyword only).

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> txt = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> losses = ClipLoss()(image_features=img, text_features=txt, logit_scale=torch.tensor(10.0), output_dict=True)
        >>> ce = torch.nn.functional.cross_entropy
        >>> ref = (ce(10 * img @ txt.T, torch.arange(8)) + ce(10 * txt @ img.T, torch.arange(8))) / 2
        >>> list(losses), torch.allclose(sum(losses.values()), ref, atol=1e-5)
        (['contrastive_loss'], True)
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.use_horovod = use_horovod
        self.backend = backend
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: float | torch.Tensor,
        logit_bias: float | torch.Tensor | None = None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        check_paired(image_features, text_features, ("image_features", "text_features"))
        scale = as_scale_tensor(logit_scale, image_features)
        img, txt, be = image_features, text_features, self.backend
        if self.world_size == 1:
            loss = _info_nce(img, txt, scale, 0, False, True, 0.0, be).loss
        else:
            _check_world(self.rank, self.world_size, self.use_horovod)
            if self.gather_with_grad:
                all_img, all_txt = all_gather_with_grad(img), all_gather_with_grad(txt)
                all_img_t, all_txt_t, off = all_img.tensor, all_txt.tensor, all_img.offset
            else:
                all_img_t, off = _gather_without_grad(img, keep_own=not self.local_loss)
                all_txt_t, _ = _gather_without_grad(txt, keep_own=not self.local_loss)
            if self.local_loss:
                i2t = _info_nce(img, all_txt_t, scale, off, False, False, 0.0, be).loss
                t2i = _info_nce(txt, all_img_t, scale, off, False, False, 0.0, be).loss
                loss = (i2t + t2i) / 2
            else:
                loss = _info_nce(all_img_t, all_txt_t, scale, 0, False, True, 0.0, be).loss
        if isinstance(logit_bias, torch.Tensor):
            loss = loss + 0.0 * logit_bias.reshape(()).to(loss.dtype)  # shift-invariant: zero gradient, as in open_clip
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(nn.Module):
    """open_clip's ``SigLipLoss`` (Zhai et al. 2023, arXiv 2303.15343), same arguments and return forms.

    ``-Σ_ij log σ(z_ij (s x_i·y_j + b)) / n`` over this rank's ``n`` images and
    every rank's texts (see the module docstring for ``dist_impl``). Unlike
    open_clip, ``logit_bias`` may be omitted (then 0).

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> txt = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> loss = SigLipLoss()(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
        >>> labels = 2 * torch.eye(8) - 1
        >>> ref = -torch.nn.functional.logsigmoid(labels * (10 * img @ txt.T - 10)).sum() / 8
        >>> torch.allclose(loss, ref, rtol=1e-5)
        True
    """

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.cache_labels = cache_labels
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.dist_impl = dist_impl or "bidir"
        if self.dist_impl not in SIGLIP_DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {SIGLIP_DIST_IMPLS} or None, got {dist_impl!r}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.backend = backend

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: float | torch.Tensor,
        logit_bias: float | torch.Tensor | None = None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        check_paired(image_features, text_features, ("image_features", "text_features"))
        scale = as_scale_tensor(logit_scale, image_features)
        bias = as_bias_tensor(0.0 if logit_bias is None else logit_bias, image_features)
        texts, offset = text_features, 0
        if self.world_size > 1:
            _check_world(self.rank, self.world_size)
            gathered = all_gather_with_grad(text_features)
            texts, offset = gathered.tensor, gathered.offset
        total = dispatch_sigmoid_pair_loss(image_features, texts, scale, bias, offset, self.backend)
        loss = total / image_features.shape[0]
        return {"contrastive_loss": loss} if output_dict else loss


def create_loss(args: Any) -> nn.Module:
    """open_clip's ``create_loss(args)`` for the CLIP and SigLIP losses (``args`` as open_clip's parser makes it).

    Reads ``siglip``, ``local_loss``, ``gather_with_grad``, ``rank``, ``world_size``,
    ``horovod`` and ``loss_dist_impl``; distillation and CoCa raise
    ``NotImplementedError``.

    Example:
        >>> from types import SimpleNamespace
        >>> args = SimpleNamespace(distill=False, model="ViT-B-32", siglip=False, local_loss=True,
        ...                        gather_with_grad=True, rank=0, world_size=1, horovod=False)
        >>> loss = create_loss(args)
        >>> type(loss).__name__, loss.local_loss, loss.cache_labels
        ('ClipLoss', True, True)
    """
    if getattr(args, "distill", False):
        raise NotImplementedError("distillation (DistillClipLoss) is not part of unimlip_kit.compat.open_clip")
    if "coca" in str(getattr(args, "model", "")).lower():
        raise NotImplementedError("CoCa's captioning loss is not part of unimlip_kit.compat.open_clip")
    if getattr(args, "siglip", False):
        if getattr(args, "horovod", False):
            raise NotImplementedError("Horovod is not supported for SigLIP (nor by open_clip)")
        return SigLipLoss(rank=args.rank, world_size=args.world_size, dist_impl=getattr(args, "loss_dist_impl", None))
    return ClipLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, cache_labels=True,
                    rank=args.rank, world_size=args.world_size, use_horovod=getattr(args, "horovod", False))
