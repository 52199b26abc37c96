"""Negation-safe EDA-style caption augmentation (Wei & Zou 2019, arXiv 1901.11196).

Each caption is augmented with probability ``p`` by one operation drawn from
``ops``, applied ``n = max(1, round(alpha * words))`` times:

* ``delete``: remove a word;
* ``swap``: exchange two words (their letters; punctuation stays in place);
* ``insert``: insert a copy of a word of the caption (EDA inserts synonyms; a
  user ``synonyms`` mapping is used when given);
* ``mask``: replace a span of up to ``max_span`` consecutive words with
  ``mask_token`` (one per word).

Negation safety. A caption is split into clauses at ``, ; : . ! ?`` and at
conjunctions that end a negation's scope (NegEx termination terms: "but",
"however", "although", "except", ...). *Protected* words are never deleted,
moved, masked or inserted: negation cues ("no", "not", "without", "negative
for", "free of", "rule out", "non-", "...n't", ...), laterality words
(left/right and the pairs in :mod:`unimlip_kit.augment.laterality`, bilateral,
ipsilateral, ...) and clause boundaries (a word carrying the punctuation or the
conjunction itself, so deleting it cannot merge a negated clause with the next).
As a safety net every edit is re-checked and dropped if the caption's sequence of
negation cues or laterality words would change (deleting "X" in "free X of"
would create the cue "free of").
Swaps and insertions only happen inside clauses with no negation cue, so no
finding moves into or out of a negation's scope: "no effusion, small nodule"
never becomes "no nodule, small effusion".

Seeding follows :mod:`unimlip_kit.augment.seeded`: ``generator`` is an ``int``
seed or a ``torch.Generator`` (a per-instance stream, call ``k`` seeded with
``derive_seed(base, "call", k, worker/rank keys)``), or ``None`` (one draw from
torch's global RNG per call); caption ``i`` of a call uses
``random.Random(derive_seed(call_seed, i))``.
"""

from __future__ import annotations

import copy
import functools
import random
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import torch

from unimlip_kit.augment.laterality import _PATTERN as _LATERALITY
from unimlip_kit.augment.laterality import LATERALITY_PAIRS, find_laterality_words
from unimlip_kit.augment.seeded import _stream_keys, base_seed
from unimlip_kit.utils.seeding import derive_seed

__all__ = ["CaptionAugment", "find_negation_cues", "find_protected_words"]

NEGATION_WORDS = frozenset(
    "no not without negative absent absence deny denies denied neither nor never none nothing cannot "
    "non unlikely exclude excluded excludes excluding".split()
)
#: Multi-word cues: every word is protected.
NEGATION_PHRASES: Tuple[Tuple[str, ...], ...] = (
    ("negative", "for"), ("free", "of"), ("rule", "out"), ("rules", "out"), ("ruled", "out"), ("ruling", "out"),
    ("absence", "of"), ("no", "evidence", "of"), ("no", "signs", "of"), ("no", "sign", "of"), ("resolution", "of"),
    ("resolved",), ("clear", "of"),
)
LATERALITY_WORDS = frozenset(LATERALITY_PAIRS) | {
    "bilateral", "bilaterally", "unilateral", "unilaterally", "ipsilateral", "contralateral", "midline",
}
TERMINATORS = frozenset(
    "but however although though except whereas while which yet apart aside nevertheless still".split()
)
_ENDS_CLAUSE = re.compile(r"[,;:.!?]+[\"')\]]*$")
_TOKEN = re.compile(r"(\S+)(\s*)")
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


@dataclass
class _Token:
    prefix: str
    core: str
    suffix: str
    space: str
    protected: bool = False
    boundary: bool = False
    negation: bool = False
    laterality: bool = False
    clause: int = 0

    def text(self) -> str:
        return f"{self.prefix}{self.core}{self.suffix}{self.space}"


_PHRASES_BY_FIRST: dict = {}
for _ph in NEGATION_PHRASES:
    _PHRASES_BY_FIRST.setdefault(_ph[0], []).append(_ph)


@functools.lru_cache(maxsize=1 << 16)
def _word_flags(core: str) -> Tuple[bool, bool, bool]:
    """(negation cue, laterality word, terminator) for one word core (cached)."""
    low = core.lower()
    parts = [p for p in re.split(r"[-/]", low) if p]
    negation = low in NEGATION_WORDS or low.endswith("n't") or any(p in NEGATION_WORDS for p in parts)
    laterality = any(p in LATERALITY_WORDS for p in parts) or bool(_LATERALITY.search(core))
    return negation, laterality, low in TERMINATORS


@functools.lru_cache(maxsize=1 << 12)
def _split_token(token: str) -> Tuple[str, str, str]:
    return _CORE.match(token).groups()  # type: ignore[union-attr,return-value]


def _analyse(text: str) -> Tuple[List[_Token], str]:
    lead = text[: len(text) - len(text.lstrip())]
    toks: List[_Token] = []
    clause = 0
    for m in _TOKEN.finditer(text.lstrip()):
        pre, core, suf = _split_token(m.group(1))
        negation, laterality, terminator = _word_flags(core)
        ends = bool(suf) and _ENDS_CLAUSE.search(suf) is not None
        if terminator:
            clause += 1
        boundary = terminator or ends or not core
        toks.append(_Token(pre, core, suf, m.group(2), negation or laterality or boundary, boundary, negation, laterality, clause))
        if ends:
            clause += 1
    lows = None
    for i, t in enumerate(toks):
        first = t.core.lower()
        if first in _PHRASES_BY_FIRST:
            lows = lows or [u.core.lower() for u in toks]
            for phrase in _PHRASES_BY_FIRST[first]:
                if tuple(lows[i : i + len(phrase)]) == phrase:
                    for u in toks[i : i + len(phrase)]:
                        u.negation = u.protected = True
    return toks, lead


def _render(toks: List[_Token], lead: str, original: str) -> str:
    return lead + "".join(t.text() for t in toks).rstrip() + original[len(original.rstrip()) :]


def _signature(toks: List[_Token]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The negation cues and laterality words of a token list, recomputed from the words alone."""
    lows = [t.core.lower() for t in toks]
    neg = [_word_flags(t.core)[0] for t in toks]
    for i, low in enumerate(lows):
        for phrase in _PHRASES_BY_FIRST.get(low, ()):
            if tuple(lows[i : i + len(phrase)]) == phrase:
                neg[i : i + len(phrase)] = [True] * len(phrase)
    lat = tuple(w for t in toks if _word_flags(t.core)[1] for w in find_laterality_words(t.core))
    return tuple(w for w, n in zip(lows, neg) if n), lat


def find_negation_cues(text: str) -> List[str]:
    """The negation-cue words of ``text`` in order, lower-cased.

    Example:
        >>> find_negation_cues("No effusion; negative for PE, non-enhancing, isn't seen. Nodule present.")
        ['no', 'negative', 'for', 'non-enhancing', "isn't"]
    """
    return [t.core.lower() for t in _analyse(text)[0] if t.negation]


def find_protected_words(text: str) -> List[str]:
    """Every protected word (negation cue, laterality word) of ``text`` in order, lower-cased.

    Example:
        >>> find_protected_words("No left effusion, bilateral nodules but right-sided mass")
        ['no', 'left', 'bilateral', 'right-sided']
    """
    return [t.core.lower() for t in _analyse(text)[0] if t.negation or t.laterality]


class CaptionAugment:
    """EDA-style caption augmentation that keeps negation cues, their scope and laterality words.

    Args:
        ops: any of ``"delete"``, ``"swap"``, ``"insert"``, ``"mask"``; one is drawn per caption.
        alpha: fraction of words changed (at least one change).
        p: probability that a caption is augmented at all.
        mask_token: replacement for masked words.
        max_span: longest masked span.
        synonyms: optional ``word -> [synonyms]`` used by ``insert``.
        generator: ``int`` seed, ``torch.Generator`` or ``None`` (see module docstring).

    Example:
        >>> aug = CaptionAugment(ops=("swap", "insert"), alpha=0.5, p=1.0, generator=0)
        >>> aug(["No pleural effusion or pneumothorax."])  # negated clause: nothing moves
        ['No pleural effusion or pneumothorax.']
        >>> out = CaptionAugment(ops=("delete",), alpha=0.5, p=1.0, generator=0)(["Left lower lobe consolidation without effusion."])
        >>> [w in out[0].split() for w in ("Left", "without")]
        [True, True]
    """

    OPS = ("delete", "swap", "insert", "mask")

    def __init__(
        self,
        ops: Sequence[str] = OPS,
        alpha: float = 0.1,
        p: float = 0.5,
        *,
        mask_token: str = "[MASK]",
        max_span: int = 3,
        synonyms: Optional[Mapping[str, Sequence[str]]] = None,
        generator: int | torch.Generator | None = None,
    ) -> None:
        bad = [o for o in ops if o not in self.OPS]
        if bad or not ops:
            raise ValueError(f"ops must be a non-empty subset of {self.OPS}, got {tuple(ops)!r}")
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= p <= 1.0 or max_span < 1:
            raise ValueError(f"need 0 <= alpha <= 1, 0 <= p <= 1 and max_span >= 1, got {alpha}, {p}, {max_span}")
        if not isinstance(mask_token, str) or not mask_token.strip() or len(mask_token.split()) != 1:
            raise ValueError(f"mask_token must be one non-empty word such as '[MASK]', got {mask_token!r}")
        if synonyms is not None and not isinstance(synonyms, Mapping):
            raise TypeError(f"synonyms must be a mapping word -> list of synonyms, got {type(synonyms).__name__}")
        for k, v in (synonyms or {}).items():
            if not isinstance(k, str):
                raise TypeError(f"synonyms keys must be words (str), got {k!r}")
            if isinstance(v, str) or not all(isinstance(w, str) and w.strip() for w in v):
                raise ValueError(
                    f"synonyms[{k!r}] must be a list of non-empty strings, got {v!r}"
                    + (f" (a plain str would insert its letters; write [{v!r}])" if isinstance(v, str) else "")
                )
        self.ops = tuple(ops)
        self.alpha, self.p, self.mask_token, self.max_span = float(alpha), float(p), mask_token, int(max_span)
        self.synonyms = {k.lower(): list(v) for k, v in (synonyms or {}).items()}
        self.manual_seed(generator)

    def manual_seed(self, seed: int | torch.Generator | None) -> "CaptionAugment":
        """Restart the stream (``None``: draw from torch's global RNG each call)."""
        self._seed, self._calls = base_seed(seed), 0
        return self

    def _call_seed(self) -> int:
        if self._seed is None:
            return int(torch.randint(0, 2**62, (1,)).item())
        self._calls += 1
        return derive_seed(self._seed, "call", self._calls - 1, *_stream_keys())

    def __call__(self, captions: Sequence[str]) -> List[str]:
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, got a single str")
        seed = self._call_seed()
        return [self.augment_one(c, random.Random(derive_seed(seed, i))) for i, c in enumerate(captions)]

    def augment_one(self, text: str, rng: random.Random) -> str:
        """Augment one caption with the Python RNG ``rng``."""
        if not isinstance(text, str):
            raise TypeError(f"captions must be strings, got {type(text).__name__}")
        if rng.random() >= self.p:
            return text
        toks, lead = _analyse(text)
        words = [t for t in toks if t.core]
        if not words:
            return text
        op = rng.choice(self.ops)
        n = max(1, round(self.alpha * len(words)))
        negated = {t.clause for t in toks if t.negation}
        signature = _signature(toks)
        for _ in range(n):
            trial = list(toks)
            getattr(self, f"_{op}")(trial, negated, rng)
            # safety net: an edit that would create or break a cue (e.g. deleting X in "free X of") is dropped
            if _signature(trial) == signature:
                toks = trial
        return _render(toks, lead, text)

    def _delete(self, toks: List[_Token], negated: set, rng: random.Random) -> None:
        free = [i for i, t in enumerate(toks) if not t.protected]
        if free and len(toks) > 1:
            toks.pop(rng.choice(free))

    def _swap(self, toks: List[_Token], negated: set, rng: random.Random) -> None:
        by_clause: dict = {}
        for i, t in enumerate(toks):
            if not t.protected and t.clause not in negated:
                by_clause.setdefault(t.clause, []).append(i)
        groups = [g for g in by_clause.values() if len(g) >= 2]
        if groups:
            i, j = rng.sample(rng.choice(groups), 2)
            a, b = copy.copy(toks[i]), copy.copy(toks[j])
            a.core, b.core = toks[j].core, toks[i].core
            toks[i], toks[j] = a, b

    def _insert(self, toks: List[_Token], negated: set, rng: random.Random) -> None:
        sources = [t for t in toks if not t.protected and t.clause not in negated]
        slots = [i for i, t in enumerate(toks) if t.clause not in negated]
        if not sources or not slots:
            return
        src = rng.choice(sources)
        word = src.core
        if self.synonyms.get(word.lower()):
            word = rng.choice(self.synonyms[word.lower()])
        at = rng.choice(slots)
        toks.insert(at, _Token("", word, "", " ", clause=toks[at].clause))

    def _mask(self, toks: List[_Token], negated: set, rng: random.Random) -> None:
        free = [i for i, t in enumerate(toks) if not t.protected and t.core != self.mask_token]
        if not free:
            return
        start = rng.choice(free)
        length = rng.randint(1, self.max_span)
        for i in range(start, min(start + length, len(toks))):
            if toks[i].protected:
                break
            toks[i] = copy.copy(toks[i])
            toks[i].core = self.mask_token
