"""Lexical left <-> right swapping for captions of horizontally flipped images.

A horizontal flip mirrors the patient: a finding in the left lower lobe now
appears where the right lower lobe would be, so the caption must say "right".
:func:`swap_laterality` swaps whole words only (``\\b`` boundaries, so
``bright``, ``upright``, ``copyright`` and ``leftover`` are untouched, while
hyphenated forms such as ``left-sided`` and ``right-to-left`` swap per word), and
keeps the case pattern (``left``/``Left``/``LEFT``). Words in any other mixed case
(``lEFt``) are left alone so the swap stays an involution:
``swap_laterality(swap_laterality(s)) == s`` for every string. Besides
left/right the table covers leftward(s)/rightward(s), leftmost/rightmost and the
levo-/dextro- pairs used in radiology (levoscoliosis, dextrocardia, ...).

The swap is lexical: "right-to-left shunt" becomes "left-to-right shunt", which
describes the mirrored anatomy, not the physiology; captions where that matters
should use ``mode="forbid"``.
"""

from __future__ import annotations

import re
from typing import Dict, List

__all__ = ["LATERALITY_PAIRS", "find_laterality_words", "swap_laterality"]

#: Symmetric word pairs swapped by a horizontal flip (lower case).
LATERALITY_PAIRS: Dict[str, str] = {}
for _a, _b in [
    ("left", "right"),
    ("leftward", "rightward"),
    ("leftwards", "rightwards"),
    ("leftmost", "rightmost"),
    ("levoscoliosis", "dextroscoliosis"),
    ("levoscoliotic", "dextroscoliotic"),
    ("levocardia", "dextrocardia"),
    ("levoconvex", "dextroconvex"),
    ("levorotation", "dextrorotation"),
    ("levoposition", "dextroposition"),
]:
    LATERALITY_PAIRS[_a] = _b
    LATERALITY_PAIRS[_b] = _a

_PATTERN = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, LATERALITY_PAIRS), key=len, reverse=True)) + r")\b", re.IGNORECASE
)


def _swap_word(word: str) -> str:
    target = LATERALITY_PAIRS[word.lower()]
    if word.islower():
        return target
    if word.isupper():
        return target.upper()
    if word[0].isupper() and word[1:].islower():
        return target.capitalize()
    return word  # unusual mixed case: leave it, keeping the swap an involution


def swap_laterality(text: str) -> str:
    """Swap left <-> right (and related pairs) as whole words, keeping case.

    Example:
        >>> swap_laterality("Left-sided effusion; RIGHT lung clear, bright upright leftover copyright.")
        'Right-sided effusion; LEFT lung clear, bright upright leftover copyright.'
        >>> swap_laterality("mild levoscoliosis, right-to-left shunt")
        'mild dextroscoliosis, left-to-right shunt'
    """
    return _PATTERN.sub(lambda m: _swap_word(m.group(0)), text)


def find_laterality_words(text: str) -> List[str]:
    """Every laterality word in ``text`` in order, lower-cased (what a flip would change).

    Example:
        >>> find_laterality_words("Right upper lobe and left-sided effusion, bright")
        ['right', 'left']
    """
    return [m.group(0).lower() for m in _PATTERN.finditer(text)]
