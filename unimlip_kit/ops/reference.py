"""The oracle for the contrastive log-sum-exp op: materialises the full logit matrix.

Used by tests (in float64) and for explicit ``backend="reference"``; never
picked automatically.
"""

from __future__ import annotations

import torch

__all__ = ["accumulate_dtype", "contrastive_lse_reference"]


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float type accumulates in float32.

    Example:
        >>> accumulate_dtype(torch.bfloat16), accumulate_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def contrastive_lse_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    exclude_diagonal: bool = False,
    need_cols: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Row and column log-sum-exp of :math:`L = s\,A B^\top`, by materialising :math:`L`.

    :math:`\mathrm{row}_i = \log\sum_j e^{L_{ij}}`, :math:`\mathrm{col}_j = \log\sum_i e^{L_{ij}}`;
    with ``exclude_diagonal`` the terms :math:`i = j` are left out (NT-Xent's self-similarity).
    Autograd gives the gradients. Memory is O(M·N).

    Example:
        >>> a = torch.eye(2, dtype=torch.float64)
        >>> r, c = contrastive_lse_reference(a, a, torch.tensor(1.0, dtype=torch.float64))
        >>> torch.allclose(r, torch.log(torch.e + torch.tensor(1.0, dtype=torch.float64)))
        True
    """
    acc = accumulate_dtype(a.dtype)
    logits = scale.to(acc) * (a.to(acc) @ b.to(acc).T)
    if exclude_diagonal:
        eye = torch.eye(logits.shape[0], logits.shape[1], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
    rows = torch.logsumexp(logits, dim=1)
    cols = torch.logsumexp(logits, dim=0) if need_cols else None
    return rows, cols
