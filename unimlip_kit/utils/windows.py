"""The one table of named CT windows, shared by file decoding (:mod:`unimlip_kit.data.window`) and augmentation.

Each entry is the usual radiology (centre, width) in Hounsfield units.
``unimlip_kit.data.WINDOW_PRESETS`` and ``unimlip_kit.augment.CT_WINDOWS`` are
this very dict, so the two can never disagree.

Example:
    >>> CT_WINDOWS["lung"], CT_WINDOWS["brain"]
    ((-600.0, 1500.0), (40.0, 80.0))
"""

from __future__ import annotations

__all__ = ["CT_WINDOWS"]

#: (centre, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "stroke": (40.0, 40.0),
    "subdural": (75.0, 215.0),
}
