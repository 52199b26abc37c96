"""Scaled dot-product attention with one dispatch: xformers on CUDA when installed, torch SDPA otherwise.

The fusion encoder calls :func:`attention` only; which kernel runs is decided
by :func:`unimlip_kit.backends.resolve_backend` for the op ``"attention"``
(backends ``"xformers"`` — memory-efficient attention, Lefaudeux et al.,
automatic on CUDA when the package is installed — and ``"sdpa"``,
``torch.nn.functional.scaled_dot_product_attention``, which always runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unimlip_kit.backends import resolve_backend

__all__ = ["attention", "attention_sdpa", "attention_xformers"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, L, Dh), got q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v shapes do not agree: q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (k.shape[0], k.shape[2]):
        raise ValueError(
            f"key_padding_mask must be (B, Lk) = {(k.shape[0], k.shape[2])}, got {tuple(key_padding_mask.shape)}"
        )


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """torch SDPA; ``key_padding_mask`` (B, Lk) is True where a key may be attended.

    Example:
        >>> q = torch.randn(2, 2, 3, 4); k = v = torch.randn(2, 2, 5, 4)
        >>> attention_sdpa(q, k, v).shape
        torch.Size([2, 2, 3, 4])
    """
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].to(torch.bool)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def attention_xformers(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """xformers' ``memory_efficient_attention`` (CUDA); same contract as :func:`attention_sdpa`.

    xformers wants (B, L, H, Dh) and an additive bias whose last dimension is
    allocated in multiples of 8, so the padding mask becomes a −inf bias sliced
    from an aligned buffer.
    """
    import xformers.ops as xops

    bias = None
    if key_padding_mask is not None:
        b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        lk_pad = (lk + 7) // 8 * 8
        buf = q.new_zeros(b, h, lq, lk_pad)
        buf[..., :lk] = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(
            ~key_padding_mask[:, None, None, :].to(torch.bool), float("-inf")
        ).expand(b, h, lq, lk)
        bias = buf[..., :lk]
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p
    )
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    r""":math:`\operatorname{softmax}(QK^\top/\sqrt{d_h} + M)\,V` for (B, H, L, Dh) inputs (Vaswani et al. 2017).

    ``key_padding_mask`` (B, Lk) is True for keys that may be attended (a text
    attention mask); :math:`M` is −∞ elsewhere. ``backend=None`` picks xformers
    on CUDA when installed, else SDPA; forcing one that cannot run raises
    :class:`unimlip_kit.backends.BackendUnavailableError` with the reasons.

    Example:
        >>> q = torch.randn(1, 2, 3, 8, dtype=torch.float64); k = v = torch.randn(1, 2, 4, 8, dtype=torch.float64)
        >>> ref = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
        >>> torch.allclose(attention(q, k, v), ref)
        True
    """
    _check(q, k, v, key_padding_mask)
    _, impl = resolve_backend("attention", backend, q.device, q.dtype)
    return impl(q, k, v, key_padding_mask, dropout_p)
