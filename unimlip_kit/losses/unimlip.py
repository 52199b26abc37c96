r"""Uni-Mlip's composed objective (Bawazir, Wu, Li, BMVC 2024, arXiv 2411.15207).

.. math::
    \mathcal L = w_{itc}\mathcal L_{itc} + w_{itc\_f}\mathcal L_{itc}^{feat}
    + w_{img}\mathcal L_{image\_ssl} + w_{txt}\mathcal L_{text\_ssl}
    + w_{itm}\mathcal L_{itm} + w_{mlm}\mathcal L_{mlm}

Cross-modal (ITC on data-level and on feature-level views), uni-modal (image
NT-Xent or SimSiam, text SimCSE) and fused-modal (ITM with hard negatives,
image-conditioned MLM) terms, each switched on by a weight > 0. The model
produces a flat mapping of named outputs; :data:`TERM_KEYS` is the contract.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

from unimlip_kit.losses.itc import image_text_contrastive_loss
from unimlip_kit.losses.itm import image_text_matching_loss
from unimlip_kit.losses.mlm import masked_language_modeling_loss
from unimlip_kit.losses.ntxent import nt_xent_loss
from unimlip_kit.losses.siglip import siglip_loss
from unimlip_kit.losses.simcse import simcse_loss
from unimlip_kit.losses.simsiam import simsiam_loss
from unimlip_kit.utils.checks import NonFiniteError, check_positive

__all__ = ["DEFAULT_WEIGHTS", "MissingLossInputsError", "TERM_KEYS", "UniMlipLoss", "UniMlipOutput"]

#: The terms in the order they are computed and logged, with Uni-Mlip's equal default weights.
DEFAULT_WEIGHTS: dict[str, float] = {
    "itc": 1.0,
    "itc_feature": 1.0,
    "image_ssl": 1.0,
    "text_ssl": 1.0,
    "itm": 1.0,
    "mlm": 1.0,
}

#: The model-output keys each term reads (``image_ssl`` depends on ``image_ssl=``, the ITC terms on
#: ``itc_loss=``: the sigmoid loss also reads the learnable ``logit_bias``).
TERM_KEYS: dict[str, tuple[str, ...]] = {
    "itc": ("image_emb", "text_emb", "logit_scale"),
    "itc_feature": ("image_emb_feat", "text_emb_feat", "logit_scale"),
    "itc/siglip": ("image_emb", "text_emb", "logit_scale", "logit_bias"),
    "itc_feature/siglip": ("image_emb_feat", "text_emb_feat", "logit_scale", "logit_bias"),
    "image_ssl/ntxent": ("image_z1", "image_z2"),
    "image_ssl/simsiam": ("image_p1", "image_p2", "image_z1", "image_z2"),
    "text_ssl": ("text_h1", "text_h2"),
    "itm": ("itm_logits", "itm_labels"),
    "mlm": ("mlm_logits", "mlm_labels"),
}


class MissingLossInputsError(KeyError, ValueError):
    """An enabled :class:`UniMlipLoss` term lacks model outputs; the message names term and keys.

    A ``KeyError`` (a key is missing) and a ``ValueError`` (the project's bad-input error), so
    either ``except`` clause catches it.

    Example:
        >>> itc_only = UniMlipLoss(weights={"itc_feature": 0, "image_ssl": 0, "text_ssl": 0, "itm": 0, "mlm": 0})
        >>> try:
        ...     itc_only({"image_emb": torch.zeros(2, 4)})
        ... except ValueError as err:
        ...     print(isinstance(err, KeyError)); print(err)
        True
        UniMlipLoss: term 'itc' (weight 1) needs ['text_emb', 'logit_scale'] — missing from the model outputs (present: ['image_emb']); produce them or set those weights to 0
    """

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class UniMlipOutput(NamedTuple):
    """``total`` (differentiable) and ``terms``: each enabled term's *unweighted* value, detached.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1).requires_grad_()
        >>> txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
        >>> loss_fn = UniMlipLoss(weights={"itc": 2.0, "itc_feature": 0, "image_ssl": 0, "text_ssl": 0, "itm": 0, "mlm": 0})
        >>> out = loss_fn({"image_emb": img, "text_emb": txt, "logit_scale": 10.0})
        >>> isinstance(out, UniMlipOutput), list(out.terms), out.total.requires_grad, out.terms["itc"].requires_grad
        (True, ['itc'], True, False)
        >>> total, terms = out
        >>> torch.allclose(total.detach(), 2.0 * terms["itc"])
        True
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class UniMlipLoss(nn.Module):
    r"""Weighted sum of Uni-Mlip's self-supervision terms over a mapping of model outputs.

    ``forward(outputs)`` returns :class:`UniMlipOutput` ``(total, terms)`` with
    :math:`\text{total} = \sum_t w_t\,\mathcal L_t` over the terms with
    :math:`w_t > 0`; a term with weight 0 reads nothing and computes nothing.
    Input keys (all tensors unless noted; N = batch, D = embedding dim):

    ==============  ==============================================================  =========================
    term            keys                                                            loss
    ==============  ==============================================================  =========================
    ``itc``         ``image_emb`` (N, D), ``text_emb`` (N, D), ``logit_scale``       CLIP symmetric InfoNCE
                    (float or 0-dim tensor; a multiplier, not a temperature);        (``itc_loss="infonce"``) or
                    with ``itc_loss="siglip"`` also ``logit_bias`` (0-dim)           SigLIP sigmoid loss
    ``itc_feature`` ``image_emb_feat`` (N, D), ``text_emb_feat`` (N, D),             same, on feature-level views
                    ``logit_scale``                                                 (token keep/dropout)
    ``image_ssl``   ntxent: ``image_z1``, ``image_z2`` (N, D)                        NT-Xent, ``image_temperature``
                    simsiam: ``image_p1``, ``image_p2``, ``image_z1``, ``image_z2``  SimSiam (z stop-gradient)
    ``text_ssl``    ``text_h1``, ``text_h2`` (N, D) — two dropout views              SimCSE, ``text_temperature``
    ``itm``         ``itm_logits`` (M, 2), ``itm_labels`` (M,) in {0, 1}             ITM cross-entropy
    ``mlm``         ``mlm_logits`` (..., V), ``mlm_labels`` (...) with −100 ignored  MLM cross-entropy
    ==============  ==============================================================  =========================

    Embeddings are used as given by ITC (L2-normalise them in the model);
    NT-Xent, SimCSE and SimSiam normalise internally. All enabled terms'
    keys are checked before anything is computed; missing ones raise
    :class:`MissingLossInputsError` naming each term and its missing keys
    (a key whose value is ``None`` counts as missing). Extra keys are ignored.
    ``backend`` goes to the contrastive core (:func:`unimlip_kit.ops.contrastive_lse`)
    for ``itc``, ``itc_feature``, NT-Xent and SimCSE; ``gather_distributed``
    gathers their embeddings across ranks.

    Args:
        weights: per-term weights merged over :data:`DEFAULT_WEIGHTS` (all 1.0);
            unknown names raise ``ValueError``.
        image_ssl: ``"ntxent"`` or ``"simsiam"``.
        image_temperature: NT-Xent temperature (SimCLR: 0.1).
        text_temperature: SimCSE temperature (SimCSE: 0.05).
        label_smoothing: for both ITC terms (InfoNCE only).
        itc_loss: ``"infonce"`` (CLIP) or ``"siglip"`` (sigmoid loss with the model's
            ``logit_bias``, :func:`unimlip_kit.losses.siglip_loss`) for ``itc`` and ``itc_feature``.

    Example:
        >>> _ = torch.manual_seed(0); n, d = 4, 8
        >>> f = lambda: torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
        >>> loss_fn = UniMlipLoss(weights={"itc_feature": 0, "mlm": 0, "itm": 0.5})
        >>> out = {"image_emb": f(), "text_emb": f(), "logit_scale": 10.0, "image_z1": f(), "image_z2": f(),
        ...        "text_h1": f(), "text_h2": f(), "itm_logits": torch.randn(3 * n, 2),
        ...        "itm_labels": torch.tensor([1] * n + [0] * 2 * n)}
        >>> total, terms = loss_fn(out)
        >>> sorted(terms)
        ['image_ssl', 'itc', 'itm', 'text_ssl']
        >>> w = loss_fn.weights
        >>> torch.allclose(total, sum(w[k] * v for k, v in terms.items()))
        True
        >>> loss_fn(dict(out, itm_labels=None))
        Traceback (most recent call last):
        ...
        unimlip_kit.losses.unimlip.MissingLossInputsError: UniMlipLoss: term 'itm' (weight 0.5) needs ['itm_labels'] ...
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        image_ssl: str = "ntxent",
        image_temperature: float = 0.1,
        text_temperature: float = 0.05,
        label_smoothing: float = 0.0,
        gather_distributed: bool = True,
        backend: str | None = None,
        itc_loss: str = "infonce",
    ) -> None:
        super().__init__()
        if weights is not None and not isinstance(weights, Mapping):
            raise TypeError(
                f"weights must be a mapping term -> weight such as {{'itm': 0.5}} (terms: {list(DEFAULT_WEIGHTS)}), "
                f"got {type(weights).__name__}"
            )
        merged = dict(DEFAULT_WEIGHTS)
        for name, w in (weights or {}).items():
            if name not in DEFAULT_WEIGHTS:
                raise ValueError(f"unknown UniMlipLoss term {name!r}; terms are {list(DEFAULT_WEIGHTS)}")
            if isinstance(w, bool) or not (isinstance(w, numbers.Real) or (isinstance(w, torch.Tensor) and w.numel() == 1)):
                raise ValueError(f"weight of term {name!r} must be a finite number >= 0, got {w!r}")
            w = float(w)
            if not (w >= 0 and w != float("inf")):
                raise ValueError(f"weight of term {name!r} must be a finite number >= 0, got {w}")
            merged[name] = w
        if image_ssl not in ("ntxent", "simsiam"):
            raise ValueError(f"image_ssl must be 'ntxent' or 'simsiam', got {image_ssl!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if itc_loss not in ("infonce", "siglip"):
            raise ValueError(f"itc_loss must be 'infonce' or 'siglip', got {itc_loss!r}")
        if itc_loss == "siglip" and label_smoothing:
            raise ValueError("label_smoothing applies to the InfoNCE ITC only, not to itc_loss='siglip'")
        self.itc_loss = itc_loss
        self.weights = merged
        self.image_ssl = image_ssl
        self.image_temperature = check_positive(image_temperature, "image_temperature")
        self.text_temperature = check_positive(text_temperature, "text_temperature")
        self.label_smoothing = float(label_smoothing)
        self.gather_distributed = gather_distributed
        self.backend = backend

    # -- contract -----------------------------------------------------------------------------
    def term_keys(self, term: str) -> tuple[str, ...]:
        """The output keys ``term`` reads under this configuration.

        Example:
            >>> UniMlipLoss(image_ssl="simsiam").term_keys("image_ssl")
            ('image_p1', 'image_p2', 'image_z1', 'image_z2')
            >>> UniMlipLoss(itc_loss="siglip").term_keys("itc")
            ('image_emb', 'text_emb', 'logit_scale', 'logit_bias')
        """
        if term == "image_ssl":
            return TERM_KEYS[f"image_ssl/{self.image_ssl}"]
        if term in ("itc", "itc_feature") and self.itc_loss == "siglip":
            return TERM_KEYS[f"{term}/siglip"]
        if term not in DEFAULT_WEIGHTS:
            raise ValueError(f"unknown UniMlipLoss term {term!r}; terms are {list(DEFAULT_WEIGHTS)}")
        return TERM_KEYS[term]

    @property
    def enabled_terms(self) -> list[str]:
        """Terms with weight > 0, in computation order."""
        return [t for t, w in self.weights.items() if w > 0]

    def required_keys(self) -> dict[str, tuple[str, ...]]:
        """``{term: keys}`` for every enabled term — what the model must put in its outputs.

        Example:
            >>> UniMlipLoss(weights={"itc_feature": 0, "image_ssl": 0, "text_ssl": 0, "itm": 0}).required_keys()
            {'itc': ('image_emb', 'text_emb', 'logit_scale'), 'mlm': ('mlm_logits', 'mlm_labels')}
        """
        return {t: self.term_keys(t) for t in self.enabled_terms}

    def check_inputs(self, outputs: Mapping[str, Any]) -> None:
        """Raise :class:`MissingLossInputsError` listing every enabled term with missing keys.

        A ``TypeError`` when ``outputs`` is not a mapping (the dict that ``UniMlipModel`` returns).
        """
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"UniMlipLoss expects a mapping of model outputs (the dict UniMlipModel(batch) returns, keys such "
                f"as {sorted({k for ks in self.required_keys().values() for k in ks})[:4]}), got {type(outputs).__name__}"
            )
        problems = []
        for term, keys in self.required_keys().items():
            missing = [k for k in keys if outputs.get(k) is None]
            if missing:
                problems.append(f"term {term!r} (weight {self.weights[term]:g}) needs {missing}")
        if problems:
            raise MissingLossInputsError(
                "UniMlipLoss: " + "; ".join(problems) + " — missing from the model outputs "
                f"(present: {sorted(k for k, v in outputs.items() if v is not None)}); "
                "produce them or set those weights to 0"
            )

    # -- terms (small overridable steps) ------------------------------------------------------
    def _itc(
        self, img: torch.Tensor, txt: torch.Tensor, scale: float | torch.Tensor, bias: Any = None
    ) -> torch.Tensor:
        if self.itc_loss == "siglip":
            return siglip_loss(img, txt, scale, bias, gather_distributed=self.gather_distributed, backend=self.backend)
        return image_text_contrastive_loss(
            img, txt, scale, label_smoothing=self.label_smoothing,
            gather_distributed=self.gather_distributed, backend=self.backend,
        )

    def loss_itc(self, o: Mapping[str, Any]) -> torch.Tensor:
        return self._itc(o["image_emb"], o["text_emb"], o["logit_scale"], o.get("logit_bias"))

    def loss_itc_feature(self, o: Mapping[str, Any]) -> torch.Tensor:
        return self._itc(o["image_emb_feat"], o["text_emb_feat"], o["logit_scale"], o.get("logit_bias"))

    def loss_image_ssl(self, o: Mapping[str, Any]) -> torch.Tensor:
        if self.image_ssl == "simsiam":
            return simsiam_loss(o["image_p1"], o["image_p2"], o["image_z1"], o["image_z2"])
        return nt_xent_loss(
            o["image_z1"], o["image_z2"], self.image_temperature,
            gather_distributed=self.gather_distributed, backend=self.backend,
        )

    def loss_text_ssl(self, o: Mapping[str, Any]) -> torch.Tensor:
        return simcse_loss(
            o["text_h1"], o["text_h2"], self.text_temperature,
            gather_distributed=self.gather_distributed, backend=self.backend,
        )

    def loss_itm(self, o: Mapping[str, Any]) -> torch.Tensor:
        return image_text_matching_loss(o["itm_logits"], o["itm_labels"])

    def loss_mlm(self, o: Mapping[str, Any]) -> torch.Tensor:
        return masked_language_modeling_loss(o["mlm_logits"], o["mlm_labels"])

    def forward(self, outputs: Mapping[str, Any]) -> UniMlipOutput:
        self.check_inputs(outputs)
        enabled = self.enabled_terms
        if not enabled:
            raise ValueError("UniMlipLoss has every weight at 0: nothing to optimise")
        total: torch.Tensor | None = None
        terms: dict[str, torch.Tensor] = {}
        for term in enabled:
            fn: Callable[[Mapping[str, Any]], torch.Tensor] = getattr(self, f"loss_{term}")
            try:
                value = fn(outputs)
            except NonFiniteError as err:  # say which term met the NaN (the training step reports it)
                err.term = term
                raise
            terms[term] = value.detach()
            weighted = self.weights[term] * value
            total = weighted if total is None else total + weighted
        assert total is not None
        return UniMlipOutput(total, terms)

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return f"weights=({w}), image_ssl={self.image_ssl!r}, itc_loss={self.itc_loss!r}, backend={self.backend!r}"
