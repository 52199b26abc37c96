r"""Linear probe: multinomial logistic regression with L2 on frozen image features.

Fits :math:`W, b` minimising

.. math:: J(W, b) = \frac1N \sum_i -\log \mathrm{softmax}(W x_i + b)_{y_i} + \frac{\lambda}{2} \lVert W \rVert_F^2

(bias not penalised) with full-batch L-BFGS and a strong-Wolfe line search on
standardised features — the protocol of CLIP's linear-probe evaluation (Radford
et al. 2021, arXiv 2103.00020, App. A.3), which used scikit-learn's L-BFGS
logistic regression and swept :math:`C = 1/(\lambda N)` on a validation split.
We use torch instead of scikit-learn so the probe runs on the features' device
(GPU included) without a new dependency, and is deterministic. ``l2=None``
sweeps :data:`DEFAULT_L2_GRID` on a held-out fraction of the training set and
refits on all of it with the best value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from unimlip_kit.eval.classification import classification_metrics
from unimlip_kit.utils.checks import check_embeddings

__all__ = ["DEFAULT_L2_GRID", "LinearProbe", "linear_probe_evaluate"]

#: λ values tried by the validation sweep (standardised features).
DEFAULT_L2_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _check_xy(x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    check_embeddings(x, name)
    y = torch.as_tensor(y, device=x.device).reshape(-1)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.numel() != x.shape[0]:
        raise ValueError(f"labels for {name} must be {x.shape[0]} integers, got shape {tuple(y.shape)} dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError(f"labels for {name} must be >= 0 (drop unknown -1 labels first), got min {int(y.min())}")
    return y.long()


@dataclass
class LinearProbe:
    """Multinomial logistic regression with L2 (see the module docstring for the objective).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.randint(0, 3, (90,), generator=g)
        >>> x = torch.randn(90, 5, generator=g) + 3 * F.one_hot(y, 5).float()
        >>> probe = LinearProbe(l2=1e-3).fit(x, y)
        >>> float((probe.predict(x) == y).float().mean()) > 0.9
        True
    """

    l2: float | None = None
    max_iter: int = 200
    l2_grid: Sequence[float] = DEFAULT_L2_GRID
    val_fraction: float = 0.2
    num_classes: int | None = None
    weight: torch.Tensor | None = field(default=None, repr=False)
    bias: torch.Tensor | None = field(default=None, repr=False)
    mean: torch.Tensor | None = field(default=None, repr=False)
    std: torch.Tensor | None = field(default=None, repr=False)
    sweep: dict[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_settings()

    def _check_settings(self) -> None:
        """Raise ``ValueError`` naming the setting that L-BFGS could not use (negative/NaN λ, ...)."""
        def lam_ok(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

        if self.l2 is not None and not lam_ok(self.l2):
            raise ValueError(f"l2 must be None (sweep l2_grid) or a finite number >= 0, got {self.l2!r}")
        grid = list(self.l2_grid)
        if not grid or not all(lam_ok(v) for v in grid):
            raise ValueError(f"l2_grid must be a non-empty list of finite numbers >= 0, got {self.l2_grid!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 < self.val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 1):
            raise ValueError(f"num_classes must be None or an integer >= 1, got {self.num_classes!r}")

    def _fit_fixed(self, x: torch.Tensor, y: torch.Tensor, l2: float, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.zeros(c, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
        b = torch.zeros(c, dtype=x.dtype, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.max_iter, history_size=20,
                                tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return w.detach(), b.detach()

    def fit(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator | None = None) -> "LinearProbe":
        """Standardise, pick λ (sweep when ``l2`` is None) and fit; returns ``self``."""
        self._check_settings()
        y = _check_xy(features, labels, "features")
        x = features.detach()
        x = x if x.dtype == torch.float64 else x.float()
        c = self.num_classes or int(y.max()) + 1
        if int(y.max()) >= c:
            raise ValueError(f"labels go up to {int(y.max())} but num_classes={c}")
        self.num_classes = c
        self.mean = x.mean(0)
        self.std = x.std(0, unbiased=False).clamp_min(1e-6)
        xs = (x - self.mean) / self.std
        l2 = self.l2
        if l2 is None:
            n_val = int(round(self.val_fraction * x.shape[0]))
            if n_val < 1 or n_val >= x.shape[0]:
                raise ValueError(f"too few samples ({x.shape[0]}) to sweep l2 with val_fraction={self.val_fraction}; pass l2")
            perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
            va, tr = perm[:n_val], perm[n_val:]
            self.sweep = {}
            for lam in self.l2_grid:
                w, b = self._fit_fixed(xs[tr], y[tr], float(lam), c)
                self.sweep[float(lam)] = float(((xs[va] @ w.T + b).argmax(1) == y[va]).double().mean())
            best = max(self.sweep.values())
            l2 = max(lam for lam, acc in self.sweep.items() if acc == best)  # ties: the strongest regulariser
        self.l2 = float(l2)
        self.weight, self.bias = self._fit_fixed(xs, y, self.l2, c)
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) class scores of the fitted probe."""
        if self.weight is None:
            raise RuntimeError("LinearProbe.fit must be called before predicting")
        check_embeddings(features, "features")
        if features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features have D={features.shape[1]} but the probe was fitted on D={self.weight.shape[1]}")
        x = (features.detach().to(self.weight.dtype) - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) predicted class indices."""
        return self.logits(features).argmax(1)


def linear_probe_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    l2: float | None = None,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Fit :class:`LinearProbe` on the train split and report test accuracy, balanced accuracy and λ.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.randint(0, 2, (100,), generator=g)
        >>> x = torch.randn(100, 4, generator=g) + 2 * y[:, None]
        >>> m = linear_probe_evaluate(x[:60], y[:60], x[60:], y[60:], generator=g)
        >>> m["accuracy"] > 0.8, sorted(m)
        (True, ['accuracy', 'balanced_accuracy', 'l2', 'n'])
    """
    test_y = _check_xy(test_features, test_labels, "test_features")
    train_y = _check_xy(train_features, train_labels, "train_features")
    c = num_classes or int(max(int(train_y.max()), int(test_y.max()))) + 1
    probe = LinearProbe(l2=l2, num_classes=c).fit(train_features, train_labels, generator=generator)
    out = classification_metrics(probe.predict(test_features).cpu(), test_y.cpu(), c)
    out["l2"] = probe.l2
    return dict(sorted(out.items()))
