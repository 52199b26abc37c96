r"""The sigmoid image-text loss (SigLIP, Zhai et al. 2023, arXiv 2303.15343) with a learnable bias.

Every image-text pair is its own binary classification: positive on the
diagonal, negative elsewhere, with logits :math:`s\,x_i\cdot y_j + b`. No
softmax couples a row, so the loss is a plain sum that the tiled op
(:func:`unimlip_kit.ops.siglip.sigmoid_pair_loss`) walks in tiles, forward and
backward, in O(N·D) memory.
"""

from __future__ import annotations

import torch
from torch import nn

from unimlip_kit.distributed import all_gather_with_grad, get_world_size, is_distributed
from unimlip_kit.ops.siglip import as_bias_tensor, dispatch_sigmoid_pair_loss
from unimlip_kit.utils.checks import as_scale_tensor, check_paired

__all__ = ["SigLIPLoss", "siglip_loss"]


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor,
    *,
    gather_distributed: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    r"""SigLIP's pairwise sigmoid loss, averaged over the images.

    .. math::
        \mathcal L = -\frac1N \sum_{i=1}^{N}\sum_{j=1}^{N} \log\sigma\big(z_{ij}\,(s\,x_i\cdot y_j + b)\big),
        \qquad z_{ij} = 2\,[i = j] - 1

    ``logit_scale`` :math:`s` (a multiplier, SigLIP starts at 10) and
    ``logit_bias`` :math:`b` (SigLIP starts at −10, so the many negatives do not
    dominate the first steps) are numbers or 0-dim tensors that receive their
    gradients. Embeddings are used as given (normalise them first).

    Distributed (``torch.distributed`` initialised and ``gather_distributed``):
    the texts of all ranks are gathered with gradient and each rank scores its
    own images against all of them (its positives at its offset in the gathered
    batch), weighted :math:`W/N` so that DDP's average over ranks is the global
    loss :math:`-\frac1N\sum_{ij}` and its gradient the single-process one, for
    any per-rank sizes. With equal sizes each rank's value is the mean over
    its own images, as open_clip's ``SigLipLoss`` reports it.

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> txt = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> labels = 2 * torch.eye(8) - 1
        >>> ref = -torch.nn.functional.logsigmoid(labels * (10 * img @ txt.T - 10)).sum() / 8
        >>> torch.allclose(siglip_loss(img, txt, 10.0, -10.0), ref, rtol=1e-5)
        True
    """
    check_paired(image_emb, text_emb, ("image_emb", "text_emb"))
    scale = as_scale_tensor(logit_scale, image_emb)
    bias = as_bias_tensor(logit_bias, image_emb)
    if not (gather_distributed and is_distributed()):
        return dispatch_sigmoid_pair_loss(image_emb, text_emb, scale, bias, 0, backend) / image_emb.shape[0]
    texts = all_gather_with_grad(text_emb)
    weight = get_world_size() / texts.tensor.shape[0]
    return dispatch_sigmoid_pair_loss(image_emb, texts.tensor, scale, bias, texts.offset, backend) * weight


class SigLIPLoss(nn.Module):
    """Module form of :func:`siglip_loss`; called ``loss(image_emb, text_emb, logit_scale, logit_bias)``.

    The scale and bias are the model's parameters (see :class:`unimlip_kit.losses.LogitScale`,
    :class:`unimlip_kit.losses.LogitBias`); this module holds none.

    Example:
        >>> loss_fn = SigLIPLoss()
        >>> img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> bool(loss_fn(img, img, 10.0, -10.0) < loss_fn(img, img.flip(0), 10.0, -10.0))
        True
    """

    def __init__(self, *, gather_distributed: bool = True, backend: str | None = None) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: float | torch.Tensor,
        logit_bias: float | torch.Tensor,
    ) -> torch.Tensor:
        return siglip_loss(image_emb, text_emb, logit_scale, logit_bias,
                           gather_distributed=self.gather_distributed, backend=self.backend)
