"""Count what a run skipped, by reason, without ever crashing it.

Bad data (a missing or corrupt image, an empty caption) is skipped and
counted, never silently dropped. Readers find missing files and empty
captions while indexing; decode failures surface in ``__getitem__`` in
whichever DataLoader worker process touches the sample. A worker's own
counter is a copy the main process never sees, so the collate carries the
skipped ``(id, reason)`` pairs inside the batch (``batch["skipped"]``) and the
training loop merges them with :meth:`SkipCounter.update_from_batch`.

Counts are of *unique ids per reason*: a corrupt image met in every epoch is
one skipped pair, which is what ``metrics.json``'s ``data.skipped`` reports.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

__all__ = ["SKIP_REASONS", "SkipCounter"]

#: Reasons used by the readers, the decoder and the dataset.
SKIP_REASONS = (
    "empty_caption",
    "missing_image",
    "corrupt_image",
    "unsupported_format",
    "image_too_large",
    "duplicate_id",
    "bad_row",
)


class SkipCounter:
    """Thread-safe counter of skipped ids per reason, mergeable across processes.

    Example:
        >>> c = SkipCounter()
        >>> c.add("ROCO_1", "missing_image"); c.add("ROCO_1", "missing_image")
        >>> c.add("ROCO_2", "corrupt_image", "cannot identify image file")
        >>> c.total, c.counts()
        (2, {'corrupt_image': 1, 'missing_image': 1})
        >>> c.update_from_batch({"skipped": [("ROCO_3", "empty_caption")]}); c.total
        3
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, dict[str, str]] = {}

    def add(self, item_id: str, reason: str, detail: str = "") -> None:
        """Record that ``item_id`` was skipped for ``reason`` (repeats count once)."""
        with self._lock:
            self._ids.setdefault(str(reason), {}).setdefault(str(item_id), str(detail))

    def update(self, items: Iterable[tuple[str, str] | tuple[str, str, str]]) -> None:
        """Add many ``(id, reason[, detail])`` tuples."""
        for item in items:
            self.add(*item)

    def update_from_batch(self, batch: Mapping[str, Any]) -> None:
        """Merge the ``"skipped"`` entries a collate put into ``batch`` (no-op when absent)."""
        self.update(batch.get("skipped", ()))

    def merge(self, other: "SkipCounter") -> None:
        """Add every entry of ``other`` (e.g. a reader's counter into the run's)."""
        for reason, ids in other.items().items():
            for item_id, detail in ids.items():
                self.add(item_id, reason, detail)

    def items(self) -> dict[str, dict[str, str]]:
        """A copy of ``{reason: {id: detail}}``."""
        with self._lock:
            return {r: dict(ids) for r, ids in self._ids.items()}

    def counts(self) -> dict[str, int]:
        """``{reason: number of unique ids}``, reasons sorted."""
        with self._lock:
            return {r: len(ids) for r, ids in sorted(self._ids.items())}

    @property
    def total(self) -> int:
        """Number of unique skipped ids over all reasons."""
        with self._lock:
            return len({i for ids in self._ids.values() for i in ids})

    def __len__(self) -> int:
        return self.total

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return any(item_id in ids for ids in self._ids.values())

    def to_dict(self, max_examples: int = 5) -> dict[str, Any]:
        """JSON-ready summary: total, counts per reason and a few example ids with details.

        Example:
            >>> c = SkipCounter(); c.add("x", "corrupt_image", "truncated")
            >>> c.to_dict()
            {'total': 1, 'by_reason': {'corrupt_image': 1}, 'examples': {'corrupt_image': [['x', 'truncated']]}}
        """
        items = self.items()
        return {
            "total": self.total,
            "by_reason": self.counts(),
            "examples": {r: [[i, d] for i, d in sorted(ids.items())[:max_examples]] for r, ids in sorted(items.items())},
        }

    def summary(self) -> str:
        """One line for the end of a run, e.g. ``skipped 2 pairs (corrupt_image: 1, missing_image: 1)``.

        Example:
            >>> SkipCounter().summary()
            'skipped 0 pairs'
        """
        counts = self.counts()
        detail = ", ".join(f"{r}: {n}" for r, n in counts.items())
        return f"skipped {self.total} pairs" + (f" ({detail})" if detail else "")

    def __repr__(self) -> str:
        return f"SkipCounter({self.summary()})"

    # Locks do not pickle; a counter travels to workers as its plain entries.
    def __getstate__(self) -> dict[str, Any]:
        return {"_ids": self.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._ids = state["_ids"]
