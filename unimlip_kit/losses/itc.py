"""Image-text contrastive loss (CLIP, Radford et al. 2021, arXiv 2103.00020), Uni-Mlip's cross-modal term."""

from __future__ import annotations

import torch
from torch import nn

from unimlip_kit.distributed import all_gather_with_grad, get_world_size, is_distributed
from unimlip_kit.losses.infonce import ContrastiveOutput, _info_nce
from unimlip_kit.utils.checks import as_scale_tensor, check_paired

__all__ = ["ImageTextContrastiveLoss", "image_text_contrastive_loss"]


def image_text_contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    local_loss: bool = False,
    gather_distributed: bool = True,
    return_terms: bool = False,
    backend: str | None = None,
) -> torch.Tensor | ContrastiveOutput:
    r"""CLIP's symmetric InfoNCE over logits :math:`L = s\, X Y^\top`.

    .. math::
        \mathcal L = \tfrac12\Big[\tfrac1N\sum_i\big(\operatorname{lse}_j L_{ij} - L_{ii}\big)
        + \tfrac1N\sum_j\big(\operatorname{lse}_i L_{ij} - L_{jj}\big)\Big]

    Embeddings are used as given (normalise them first for cosine logits);
    ``logit_scale`` is the multiplier (a float, or a 0-dim tensor that
    receives its gradient). Under ``torch.distributed`` (and
    ``gather_distributed``) the embeddings of all ranks are gathered with
    gradient: the default computes the global N×N loss on every rank; with
    ``local_loss=True`` each rank keeps only its own rows and columns against
    the gathered batch, weighted so DDP's averaged gradient equals the global
    one (see :mod:`unimlip_kit.distributed`). ``return_terms=True`` returns a
    :class:`ContrastiveOutput` ``(loss, image_to_text, text_to_image)``.

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> txt = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> loss = image_text_contrastive_loss(img, txt, 10.0)
        >>> ce = torch.nn.functional.cross_entropy
        >>> ref = (ce(10 * img @ txt.T, torch.arange(8)) + ce(10 * txt @ img.T, torch.arange(8))) / 2
        >>> torch.allclose(loss, ref, atol=1e-5)
        True
    """
    check_paired(image_emb, text_emb, ("image_emb", "text_emb"))
    scale = as_scale_tensor(logit_scale, image_emb)
    if not (gather_distributed and is_distributed()):
        out = _info_nce(image_emb, text_emb, scale, 0, False, True, label_smoothing, backend)
        return out if return_terms else out.loss
    images = all_gather_with_grad(image_emb)
    texts = all_gather_with_grad(text_emb)
    if not local_loss:
        out = _info_nce(images.tensor, texts.tensor, scale, 0, False, True, label_smoothing, backend)
        return out if return_terms else out.loss
    # Local rows against all columns, weighted n_r * W / N so that the mean over ranks (DDP) is the global mean.
    weight = image_emb.shape[0] * get_world_size() / images.tensor.shape[0]
    i2t = _info_nce(image_emb, texts.tensor, scale, images.offset, False, False, label_smoothing, backend).loss
    t2i = _info_nce(text_emb, images.tensor, scale, images.offset, False, False, label_smoothing, backend).loss
    out = ContrastiveOutput((i2t + t2i) * weight / 2, i2t * weight, t2i * weight)
    return out if return_terms else out.loss


class ImageTextContrastiveLoss(nn.Module):
    """Module form of :func:`image_text_contrastive_loss`; called ``loss(image_emb, text_emb, logit_scale)``.

    Example:
        >>> loss_fn = ImageTextContrastiveLoss(label_smoothing=0.1)
        >>> img, txt = torch.randn(4, 8), torch.randn(4, 8)
        >>> bool(loss_fn(img, txt, 5.0) > 0)
        True
    """

    def __init__(
        self,
        *,
        label_smoothing: float = 0.0,
        local_loss: bool = False,
        gather_distributed: bool = True,
        return_terms: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.local_loss = local_loss
        self.gather_distributed = gather_distributed
        self.return_terms = return_terms
        self.backend = backend

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float | torch.Tensor
    ) -> torch.Tensor | ContrastiveOutput:
        return image_text_contrastive_loss(
            image_emb,
            text_emb,
            logit_scale,
            label_smoothing=self.label_smoothing,
            local_loss=self.local_loss,
            gather_distributed=self.gather_distributed,
            return_terms=self.return_terms,
            backend=self.backend,
        )
