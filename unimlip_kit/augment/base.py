"""Base class of our intensity transforms: kornia's contract plus a stated value range and a seed.

``apply_transform(input, params, flags)`` maps the input to unit range with
``flags["value_range"] = (lo, hi)``, calls :meth:`RangeIntensityAugmentation.apply_unit`
(a pure function of the sampled ``params``), clamps to [0, 1] and maps back, so
the output stays in the declared range and parameters replay exactly
(``aug(x, params=aug._params)``). Per-sample scalars are sampled by kornia's
``PlainUniformGenerator``; whole-image noise fields are drawn in
``generate_parameters`` so they are stored and replayed too.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Sequence

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from unimlip_kit.augment._kornia_compat import (
    is_autocast_enabled,
    process_kwargs_to_params_and_flags,
    standardize_input,
    transform_output_shape,
)
from unimlip_kit.augment.ranges import as_value_range
from unimlip_kit.augment.seeded import SeededMixin

__all__ = ["RangeIntensityAugmentation", "per_sample"]


def _per_row(value: object, like: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == like.shape[0]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample params ``(B,)`` or ``(B, K)`` to broadcast over ``like`` (B, C, H, W).

    Example:
        >>> per_sample(torch.ones(2), torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2, 1, 1, 1])
    """
    v = values.to(device=like.device, dtype=like.dtype)
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1))) if v.ndim == 1 else v


class RangeIntensityAugmentation(SeededMixin, IntensityAugmentationBase2D):
    """kornia ``IntensityAugmentationBase2D`` working in a declared ``value_range``.

    Subclasses set ``self._param_generator`` and implement ``apply_unit(unit, params, flags)``
    on images scaled to [0, 1]. ``colour = True`` marks transforms that need RGB.

    Args:
        value_range: ``(lo, hi)`` of the input; required, never assumed.
        p: per-sample probability of applying the transform.
        same_on_batch: share one draw across the batch.
        keepdim: kornia's ``keepdim``.
        generator: ``int`` seed, ``torch.Generator`` or ``None`` (global RNG); see
            :mod:`unimlip_kit.augment.seeded`.
    """

    colour: ClassVar[bool] = False
    #: ``apply_transform`` leaves the rows the ``p`` gate skipped untouched (so kornia's blend is skipped);
    #: subclasses whose skipped rows need another output (``RandomWindow``) set it to ``False``.
    gates_rows: ClassVar[bool] = True

    def __init__(
        self,
        value_range: Sequence[float],
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.flags = {"value_range": as_value_range(value_range)}
        self._init_seed(generator)

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        """The transform on images in [0, 1]; the result is clamped to [0, 1] by the caller."""
        raise NotImplementedError

    def transform_inputs(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """kornia's ``transform_inputs`` without its full-batch ``torch.where`` blend.

        :meth:`apply_transform` below already leaves the samples the ``p`` gate
        skipped untouched, so kornia's blend (a broadcast ``where`` over the whole
        batch, about as slow as a transcendental op on CPU) is redundant.
        Subclasses with ``gates_rows = False`` keep kornia's path.
        """
        if not self.gates_rows:
            return super().transform_inputs(input, params, flags, transform, **kwargs)
        params, flags = process_kwargs_to_params_and_flags(self, params, flags, **kwargs)
        in_tensor = standardize_input(self, input)
        output = self.apply_transform(in_tensor, params, flags, transform=transform)
        if is_autocast_enabled():
            output = output.type(input.dtype)
        return transform_output_shape(output, input.shape) if self.keepdim else output

    def apply_transform(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if input.numel() == 0:  # an empty batch has nothing to transform (kornia's ops reject empty tensors)
            return input.clone()
        rows = self._applied_rows(input, params)
        if rows is None:
            return self._apply_range(input, params, flags)
        n_on = int(rows.sum())
        if n_on * 2 > rows.numel():
            # mostly selected: compute every sample, then put the few skipped ones back
            out = self._apply_range(input, params, flags)
            out[~rows] = input[~rows]
            return out
        # mostly skipped: compute only the selected samples (gathered), scatter them into a copy
        out = input.clone()
        if n_on:
            sub = {
                k: (v[rows.to(v.device)] if k != "forward_input_shape" and _per_row(v, input) else v)
                for k, v in params.items()
            }
            out[rows] = self._apply_range(input[rows], sub, flags)
        return out

    def _applied_rows(self, input: torch.Tensor, params: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """Boolean rows the ``p`` gate selected, or ``None`` when every row is (p = 1, as kornia's gate)."""
        if self.p == 1.0 and self.p_batch == 1.0:
            return None
        prob = params.get("batch_prob")
        if prob is None or prob.ndim != 1 or prob.shape[0] != input.shape[0]:
            return None
        rows = (prob > 0.5).to(input.device)
        return None if bool(rows.all()) else rows

    def _apply_range(self, input: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        lo, hi = flags["value_range"]
        unit = input if (lo, hi) == (0.0, 1.0) else (input - lo) / (hi - lo)
        out = self.apply_unit(unit, params, flags).clamp_(0.0, 1.0)  # apply_unit returns a new tensor
        return out if (lo, hi) == (0.0, 1.0) else out * (hi - lo) + lo

    def _field_seeds(self, batch_size: int) -> torch.Tensor:
        """Per-sample int64 seeds for noise fields (shared if ``same_on_batch``); fields are drawn at apply time."""
        n = 1 if self.same_on_batch else batch_size
        return torch.randint(0, 2**62, (n,), dtype=torch.int64).expand(batch_size)

    @staticmethod
    def noise_fields(seeds: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
        """Standard-normal fields ``(n, channels, H, W)`` on ``like``'s device, one per seed (replayable).

        Only the samples that are transformed draw a field, so a transform with
        ``p = 0.3`` pays for 30% of the random numbers, and ``_params`` stays small.
        """
        h, w = like.shape[-2:]
        out = torch.empty(len(seeds), channels, h, w, device=like.device, dtype=like.dtype)
        gen = torch.Generator(device=like.device)
        first: Dict[int, int] = {}
        for i, s in enumerate(seeds.tolist()):
            if s in first:  # same_on_batch: one field, copied
                out[i] = out[first[s]]
                continue
            first[s] = i
            gen.manual_seed(int(s))
            torch.randn(channels, h, w, generator=gen, device=like.device, dtype=like.dtype, out=out[i])
        return out
