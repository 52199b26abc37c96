"""Input validation shared by every public op.

Each check raises :class:`ValueError` (or :class:`TypeError` for a non-tensor)
whose message names the argument, the problem and the shapes involved, so a
user sees *what* is wrong before any kernel runs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = [
    "NonFiniteError",
    "check_embeddings",
    "check_finite",
    "check_paired",
    "check_positive",
    "as_scale_tensor",
]


class NonFiniteError(ValueError):
    """A tensor held NaN or infinity; ``name`` says which (``term`` is set by ``UniMlipLoss`` to the term).

    A ``ValueError``, so code that caught those still does; the training step turns it into an error that
    names the step, the term and the learning rate (``unimlip_kit.train.NonFiniteLossError``).

    Example:
        >>> err = NonFiniteError("logits contains NaN", name="logits"); isinstance(err, ValueError), err.name
        (True, 'logits')
    """

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name
        self.term: str | None = None


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise :class:`NonFiniteError` (a ``ValueError``) if ``x`` holds NaN or infinity.

    Example:
        >>> check_finite(torch.ones(2, 3), "image_emb")
        >>> check_finite(torch.tensor([1.0, float("nan")]), "image_emb")
        Traceback (most recent call last):
        ...
        unimlip_kit.utils.checks.NonFiniteError: image_emb contains NaN or infinite values (shape (2,))
    """
    if x.device.type == "meta":  # no values to check; the backend registry reports what runs on "meta"
        return
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or infinite values (shape {tuple(x.shape)})", name=name)


def check_embeddings(x: torch.Tensor, name: str, *, finite: bool = True) -> None:
    """Check that ``x`` is a non-empty floating (N, D) tensor.

    Example:
        >>> check_embeddings(torch.zeros(4, 8), "z1")
        >>> check_embeddings(torch.zeros(4), "z1")
        Traceback (most recent call last):
        ...
        ValueError: z1 must be a 2-D (N, D) tensor, got ndim=1 with shape (4,)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) tensor, got ndim={x.ndim} with shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has embedding dimension 0: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if finite:
        check_finite(x, name)


def check_paired(
    a: torch.Tensor,
    b: torch.Tensor,
    names: Sequence[str] = ("a", "b"),
    *,
    same_batch: bool = True,
) -> None:
    """Check two embedding batches: each valid, same D, same device and dtype, same N if paired.

    Example:
        >>> check_paired(torch.zeros(3, 4), torch.zeros(2, 4), ("image_emb", "text_emb"))
        Traceback (most recent call last):
        ...
        ValueError: image_emb and text_emb must have the same batch size N, got shapes (3, 4) and (2, 4)
    """
    na, nb = names
    check_embeddings(a, na)
    check_embeddings(b, nb)
    if same_batch and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{na} and {nb} must have the same batch size N, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{na} and {nb} must have the same embedding dimension D, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{na} and {nb} must be on the same device, got {a.device} and {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{na} and {nb} must have the same dtype, got {a.dtype} and {b.dtype}")


def check_positive(value: float, name: str) -> float:
    """Return ``value`` as float if it is finite and > 0, else raise ``ValueError``.

    Example:
        >>> check_positive(0.07, "temperature")
        0.07
        >>> check_positive(0.0, "temperature")
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a finite number > 0, got 0.0
    """
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return v


def as_scale_tensor(scale: float | torch.Tensor, like: torch.Tensor, name: str = "logit_scale") -> torch.Tensor:
    """Return a 0-dim tensor on ``like``'s device for a float or 0-dim tensor multiplier.

    A tensor keeps its autograd graph (so a learnable scale receives its
    gradient); a Python number becomes a constant.

    Example:
        >>> as_scale_tensor(10.0, torch.zeros(2, 2))
        tensor(10.)
        >>> as_scale_tensor(torch.ones(2), torch.zeros(2, 2))
        Traceback (most recent call last):
        ...
        ValueError: logit_scale must be a number or a 0-dim tensor, got shape (2,)
    """
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.ndim > 1:
            raise ValueError(f"{name} must be a number or a 0-dim tensor, got shape {tuple(scale.shape)}")
        s = scale.reshape(())
        if s.device.type == "meta":
            return s.to(like.device) if like.device.type == "meta" else s
        v = float(s.detach())
        if not bool(torch.isfinite(s.detach())) or v == 0:  # 0: exp of a diverged log-scale underflowed
            raise NonFiniteError(f"{name} must be finite and > 0, got {v}" + (" (an exp underflow?)" if v == 0 else ""),
                                 name=name)
        if v < 0:
            raise ValueError(f"{name} must be finite and > 0, got {v}")
        return s.to(like.device)
    check_positive(scale, name)
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(float(scale), dtype=dtype, device=like.device)
