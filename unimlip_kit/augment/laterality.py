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

Asymmetric structures. "Left ventricle", "right atrium", "right coronary artery",
"left anterior descending", "left bundle branch", "right heart" name the heart's
parts by their form, not by the side they lie on: a mirrored heart does not turn
the left ventricle into the right one, so swapping the word would make the caption
false. :func:`find_asymmetric_structures` finds these phrases and
:class:`~unimlip_kit.augment.LateralityAwareFlip` (``mode="swap"``) **does not flip
a sample whose caption names one** (policy: forbid the flip for that sample, rather
than swap the other words and keep these; a brain "left ventricle" or an unusual
phrasing then costs one un-flipped sample, never a false caption).
:func:`swap_laterality` itself stays purely lexical. Sides of the body, paired
organs and vessels ("left lung", "right kidney", "left pulmonary artery", "left
lateral ventricle"), "leftward" and the levo-/dextro- words keep swapping.
"""

from __future__ import annotations

import re
from typing import Dict, List

__all__ = ["ASYMMETRIC_STRUCTURES", "LATERALITY_PAIRS", "find_asymmetric_structures", "find_laterality_words", "swap_laterality"]

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


#: Structures named by form, not side (lower case, after "left"/"right" and an optional "-sided"): the heart's
#: chambers, vessels and conduction system, and the liver's lobes and vessels (one unpaired organ each).
ASYMMETRIC_STRUCTURES = (
    "ventricle", "ventricles", "ventricular", "ventriculography", "ventriculogram", "atrium", "atria", "atrial",
    "auricle", "auricular",
    "heart", "coronary", "main coronary", "anterior descending", "circumflex", "bundle branch",
    "sinus of valsalva", "hepatic", "portal", "liver", "liver lobe", "lobe liver", "lobe of liver", "lobe of the liver",
)
# "left main" alone is the left main coronary artery; "left main bronchus"/"main pulmonary artery" are not.
_ASYM = re.compile(
    r"\b(?:(?:left|right)(?:[\s-]+sided)?[\s-]+(?:"
    + "|".join(sorted((re.escape(w).replace(r"\ ", r"[\s-]+") for w in ASYMMETRIC_STRUCTURES), key=len, reverse=True))
    + r")|left[\s-]+main(?![\s-]+(?:stem[\s-]+)?(?:bronch\w*|pulmonary)))\b",
    re.IGNORECASE,
)


def find_asymmetric_structures(text: str) -> List[str]:
    """Phrases naming a heart or liver structure by its form ("left ventricle", "right coronary"), lower-cased.

    A horizontal flip must not swap these (see the module docstring); "left lateral
    ventricle" (the brain's paired ventricles), "left main bronchus" and "left lung" are not listed.

    Example:
        >>> find_asymmetric_structures("Dilated Left Ventricle, right-sided heart failure; left lateral ventricle normal")
        ['left ventricle', 'right-sided heart']
        >>> find_asymmetric_structures("left main disease; left main bronchus; right lobe of the liver")
        ['left main', 'right lobe of the liver']
        >>> find_asymmetric_structures("drain in the right liver; left lung")
        ['right liver']
    """
    return [" ".join(m.group(0).lower().split()) for m in _ASYM.finditer(text)]


def _swap_word(word: str) -> str:
    target = LATERALITY_PAIRS.get(word.lower())
    if target is None:  # a case-fold look-alike matched by IGNORECASE ("rıght", "RİGHT"): not a laterality word
        return word
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
    return [w for w in (m.group(0).lower() for m in _PATTERN.finditer(text)) if w in LATERALITY_PAIRS]
