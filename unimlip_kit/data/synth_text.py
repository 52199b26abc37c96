"""Captions and VQA question–answer pairs for the synthetic benchmark, from the scene's attributes.

Every caption states the modality, the body region and the finding — side,
level, size and density in the modality's own vocabulary (opacity/lucency on
radiographs, hyper-/hypodense on CT, hyper-/hypointense on MRI,
hyper-/hypoechoic on ultrasound) — or a negation ("no focal lesion"). Wording
varies (several templates and synonyms per slot) but nothing in a caption is
random with respect to the image: two captions of the same attributes are
paraphrases. ``left``/``right`` always mean the *patient's* side and are the
only laterality words used (no "right upper quadrant"-style fixed names), so a
caption-aware flip that swaps the two words keeps captions true.
"""

from __future__ import annotations

import numpy as np

from unimlip_kit.data.synth_render import SceneSpec

__all__ = ["DENSITY_WORDS", "LEVEL_WORDS", "MODALITY_ANSWERS", "make_caption", "make_qa"]

_MODALITY_NAMES = {
    "xray": ["radiograph", "X-ray", "frontal radiograph", "plain film", "PA radiograph"],
    "ct": ["axial CT", "CT scan", "computed tomography image", "axial CT slice", "non-contrast CT"],
    "mri": ["axial MRI", "MR image", "T2-weighted MRI", "magnetic resonance image", "axial MR slice"],
    "ultrasound": ["ultrasound", "sonogram", "ultrasound image", "sonographic view", "B-mode ultrasound"],
}
_REGION_NAMES = {
    "chest": ["of the chest", "of the thorax"],
    "abdomen": ["of the abdomen", "of the upper abdomen"],
    "head": ["of the head", "of the brain"],
    "brain": ["of the brain", "of the head"],
    "liver": ["of the liver", "of the hepatic parenchyma"],
}
#: Image-level words for ``level`` per (modality, region): (upper, lower).
LEVEL_WORDS = {
    ("xray", "chest"): ("upper zone", "lower zone"),
    ("ct", "chest"): ("anterior lung", "posterior lung"),
    ("ct", "abdomen"): ("anterior abdomen", "posterior abdomen"),
    ("ct", "head"): ("frontal lobe", "occipital lobe"),
    ("mri", "brain"): ("frontal lobe", "occipital lobe"),
    ("ultrasound", "liver"): ("superficial liver", "deep liver"),
}
#: (hyper, hypo) adjective per modality.
DENSITY_WORDS = {
    "xray": ("radiopaque", "radiolucent"),
    "ct": ("hyperdense", "hypodense"),
    "mri": ("hyperintense", "hypointense"),
    "ultrasound": ("hyperechoic", "hypoechoic"),
}
_NOUNS = {
    "xray": {"hyper": ["opacity", "nodular opacity", "dense mass"], "hypo": ["lucency", "lucent lesion", "cavity"]},
    "default": {"hyper": ["lesion", "mass", "nodule", "focus"], "hypo": ["lesion", "mass", "nodule", "focus"]},
}
_SIZES = {"small": ["small", "tiny", "little"], "large": ["large", "big", "sizeable", "bulky"]}
#: Short answers for "What imaging modality is this?"
MODALITY_ANSWERS = {"xray": "x-ray", "ct": "ct", "mri": "mri", "ultrasound": "ultrasound"}

_POSITIVE = [
    "{Mod} {reg} showing a {size} {adj} {noun} in the {side} {level}.",
    "{Mod} {reg}: {size} {adj} {noun}, {side} {level}.",
    "There is a {size} {adj} {noun} in the {side} {level} on this {mod}.",
    "{Size} {adj} {noun} in the {side} {level}, seen on {mod} {reg}.",
    "A {size} {adj} {noun} is noted in the {side} {level} ({mod} {reg}).",
    "{Mod} {reg} demonstrates a {size} {adj} {noun} located in the {side} {level}.",
]
_OTHER_SIDE = " The {other} side is unremarkable."
_NEGATIVE = [
    "{Mod} {reg} with no focal lesion.",
    "Normal {mod} {reg}; no mass or nodule is seen.",
    "No focal abnormality on this {mod} {reg}.",
    "Unremarkable {mod} {reg} without any lesion.",
    "{Mod} {reg}: no evidence of a focal lesion.",
]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_caption(spec: SceneSpec, rng: np.random.Generator, p_other_side: float = 0.15) -> str:
    """A natural-language caption stating ``spec``'s modality, region and finding.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> c = make_caption(SceneSpec("ct", "head", "left", "upper", "large", "hypo"), rng, p_other_side=0.0)
        >>> all(w in c for w in ("left", "frontal", "hypodense")), "right" in c
        (True, False)
        >>> "no " in make_caption(SceneSpec("mri", "brain"), rng).lower()
        True
    """
    key = (spec.modality, spec.region)
    mod = str(rng.choice(_MODALITY_NAMES[spec.modality]))
    slots = {"mod": mod, "Mod": _cap(mod), "reg": str(rng.choice(_REGION_NAMES[spec.region]))}
    if not spec.has_lesion:
        return str(rng.choice(_NEGATIVE)).format(**slots)
    nouns = _NOUNS.get(spec.modality, _NOUNS["default"])[spec.density]
    size = str(rng.choice(_SIZES[spec.size]))
    adj = DENSITY_WORDS[spec.modality][0 if spec.density == "hyper" else 1]
    noun = str(rng.choice(nouns))
    if spec.modality == "xray" and rng.random() < 0.5:
        noun = str(rng.choice(_NOUNS["default"][spec.density]))  # "radiopaque nodule"
    elif spec.modality == "xray":
        adj = ""  # "opacity"/"lucency" already carry the density
    level = LEVEL_WORDS[key][0 if spec.level == "upper" else 1]
    text = str(rng.choice(_POSITIVE)).format(
        size=size, Size=_cap(size), adj=adj, noun=noun, side=spec.side, level=level, **slots
    )
    text = " ".join(text.split())
    if rng.random() < p_other_side:
        text += _OTHER_SIDE.format(other="left" if spec.side == "right" else "right")
    return text


def make_qa(spec: SceneSpec, rng: np.random.Generator) -> list[dict[str, str]]:
    """Closed (yes/no) and open question–answer pairs about ``spec`` for VQA.

    Each item: ``question``, ``answer``, ``answer_type`` (``"closed"``/``"open"``)
    and ``question_type`` (``presence``, ``modality``, ``region``, ``side``, ``level``, ``size``, ``density``).
    Only the lesion questions (``side``, ``level``, ``size``, ``density``) need more than the
    image's global appearance: modality and region are visible from intensity statistics alone.

    Example:
        >>> qa = make_qa(SceneSpec("ultrasound", "liver", "right", "lower", "small", "hyper"), np.random.default_rng(0))
        >>> [q["answer"] for q in qa if q["question_type"] == "side" and q["answer_type"] == "open"]
        ['right']
    """
    out: list[dict[str, str]] = []

    def add(q: str, a: str, kind: str, qtype: str) -> None:
        out.append({"question": q, "answer": a, "answer_type": kind, "question_type": qtype})

    add("Is there a focal lesion in this image?", "yes" if spec.has_lesion else "no", "closed", "presence")
    asked = str(rng.choice(list(MODALITY_ANSWERS))) if rng.random() < 0.5 else spec.modality
    add(f"Is this a {MODALITY_ANSWERS[asked]} image?", "yes" if asked == spec.modality else "no", "closed", "modality")
    add("What imaging modality is shown?", MODALITY_ANSWERS[spec.modality], "open", "modality")
    add("Which body region is shown?", spec.region, "open", "region")
    if spec.has_lesion:
        side = str(rng.choice(["left", "right"]))
        add(f"Is the lesion on the patient's {side} side?", "yes" if side == spec.side else "no", "closed", "side")
        add("On which side is the lesion?", spec.side, "open", "side")
        level = str(rng.choice(["upper", "lower"]))
        add(f"Is the lesion in the {level} part of the image?", "yes" if level == spec.level else "no", "closed", "level")
        add("Is the lesion in the upper or lower part?", spec.level, "open", "level")
        add("Is the lesion large?", "yes" if spec.size == "large" else "no", "closed", "size")
        add("What is the size of the lesion?", spec.size, "open", "size")
        hyper, hypo = DENSITY_WORDS[spec.modality]
        add(f"Is the lesion {hyper} or {hypo}?", hyper if spec.density == "hyper" else hypo, "open", "density")
    return out
