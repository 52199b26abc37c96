"""Medical VQA readers: VQA-RAD, SLAKE and the generic JSON list the synthetic benchmark writes.

Every reader returns a list of :class:`VQASample` with a normalised answer and an
``answer_type`` of ``"closed"`` or ``"open"``. Published formats:

* **VQA-RAD** (Lau et al. 2018, *Sci. Data* 5:180251), ``VQA_RAD Dataset Public.json``:
  a JSON list of objects with ``qid``, ``image_name``, ``image_organ``, ``question``,
  ``answer`` (string or number), ``answer_type`` (``"CLOSED"``/``"OPEN"``),
  ``question_type`` and ``phrase_type`` (``freeform``/``para`` for training,
  ``test_freeform``/``test_para`` for the test split). Images live in
  ``VQA_RAD Image Folder/`` next to the JSON. The ``trainset.json``/``testset.json``
  split files used by MEVF and later papers have the same fields.
* **SLAKE** (Liu et al. 2021, ISBI, arXiv 2102.09542), ``train.json`` /
  ``validation.json`` / ``test.json``: JSON lists with ``qid``, ``img_id``,
  ``img_name`` (``xmlab102/source.jpg``, relative to ``imgs/``), ``question``,
  ``answer``, ``answer_type`` (``OPEN``/``CLOSED``), ``q_lang`` (``en``/``zh``),
  ``modality``, ``location``, ``content_type``, ``base_type``, ``triple``. English
  questions are kept by default.
* **Generic / synthetic**: a JSON list (or ``{"questions": [...]}``) of objects with
  an image key (``image_path``, ``image``, ``image_name`` or ``img_name``),
  ``question``, ``answer`` and optionally ``answer_type``, ``qid``/``id``,
  ``split``, ``question_type``.

Rows without a question, an answer or an image name are skipped and counted
(``skips.add(id, reason)``, e.g. :class:`unimlip_kit.data.SkipCounter`), never
raised; a missing image file is the dataset's business (it is skipped at load time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

__all__ = [
    "VQASample",
    "answer_type_of",
    "normalize_answer",
    "read_slake",
    "read_vqa_json",
    "read_synthetic_vqa",
    "read_vqa_rad",
    "read_vqa_source",
]

_CLOSED_ANSWERS = {"yes", "no"}


class _Skips(Protocol):
    def add(self, item_id: str, reason: str, detail: str = "") -> None: ...


@dataclasses.dataclass(frozen=True)
class VQASample:
    """One question about one image.

    Attributes:
        qid: question id (unique within a file).
        image_path: the image file.
        question: the question text.
        answer: the normalised answer (:func:`normalize_answer`).
        answer_type: ``"closed"`` (yes/no style) or ``"open"``.
        split: ``"train"``/``"test"``/... when the file says, else ``""``.
        meta: the row's other fields (organ, modality, question type, ...).

    Example:
        >>> VQASample("1", Path("a.jpg"), "Is there a mass?", "yes", "closed").answer_type
        'closed'
    """

    qid: str
    image_path: Path
    question: str
    answer: str
    answer_type: str
    split: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


def normalize_answer(answer: Any) -> str:
    """Lower-case, collapse white space, drop a trailing full stop; numbers become their text.

    Example:
        >>> normalize_answer("  Right  Lung. "), normalize_answer(3), normalize_answer("Yes")
        ('right lung', '3', 'yes')
    """
    text = re.sub(r"\s+", " ", str(answer)).strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def answer_type_of(raw_type: Any, answer: str) -> str:
    """``"closed"``/``"open"`` from a CLOSED/OPEN field, else closed iff the answer is yes or no.

    Example:
        >>> answer_type_of("CLOSED", "left"), answer_type_of(None, "no"), answer_type_of("", "liver")
        ('closed', 'closed', 'open')
    """
    t = str(raw_type or "").strip().lower()
    if t in ("closed", "open"):
        return t
    return "closed" if normalize_answer(answer) in _CLOSED_ANSWERS else "open"


def _load_list(path: Path, key: str = "questions") -> list[Any]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, Mapping) and isinstance(data.get(key), list):
        data = data[key]
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of question objects (or {{{key!r}: [...]}}), got {type(data).__name__}")
    return data


def _rows_to_samples(
    rows: Iterable[Any],
    image_dir: Path,
    *,
    image_keys: tuple[str, ...],
    split_of: Any,
    keep: Any,
    skips: _Skips | None,
    source: str,
) -> list[VQASample]:
    out: list[VQASample] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            if skips is not None:
                skips.add(f"{source}:{n}", "bad_row", f"not an object: {type(row).__name__}")
            continue
        qid = str(row.get("qid", row.get("id", n)))
        if not keep(row):
            continue
        image = next((row[k] for k in image_keys if row.get(k) not in (None, "")), None)
        question = str(row.get("question") or "").strip()
        raw_answer = row.get("answer")
        answer = normalize_answer(raw_answer) if raw_answer is not None else ""
        reason = "bad_row" if image is None else "empty_question" if not question else "empty_answer" if not answer else ""
        if not reason and qid in seen:
            reason = "duplicate_id"
        if reason:
            if skips is not None:
                skips.add(qid, reason, source)
            continue
        seen.add(qid)
        path = Path(str(image))
        meta = {k: v for k, v in row.items() if k not in ("question", "answer", "answer_type", *image_keys)}
        out.append(
            VQASample(
                qid=qid,
                image_path=path if path.is_absolute() else image_dir / path,
                question=question,
                answer=answer,
                answer_type=answer_type_of(row.get("answer_type"), answer),
                split=split_of(row),
                meta=meta,
            )
        )
    return out


def read_vqa_rad(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    skips: _Skips | None = None,
) -> list[VQASample]:
    """Read VQA-RAD's JSON; ``split="train"``/``"test"`` keeps one split by ``phrase_type``.

    ``image_dir`` defaults to ``VQA_RAD Image Folder`` beside the JSON when it
    exists, else the JSON's folder.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> rows = [{"qid": 1, "image_name": "synpic1.jpg", "question": "Is this normal?", "answer": "No",
        ...          "answer_type": "CLOSED", "phrase_type": "freeform", "image_organ": "CHEST"},
        ...         {"qid": 2, "image_name": "synpic1.jpg", "question": "Where is the mass?", "answer": "Left lung",
        ...          "answer_type": "OPEN", "phrase_type": "test_para", "image_organ": "CHEST"}]
        >>> _ = (d / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
        >>> [(s.answer, s.answer_type, s.split) for s in read_vqa_rad(d / "VQA_RAD Dataset Public.json")]
        [('no', 'closed', 'train'), ('left lung', 'open', 'test')]
    """
    path = Path(json_path)
    if image_dir is None:
        cand = path.parent / "VQA_RAD Image Folder"
        image_dir = cand if cand.is_dir() else path.parent
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test' for VQA-RAD, got {split!r}")

    def split_of(row: Mapping[str, Any]) -> str:
        phrase = str(row.get("phrase_type") or "").lower()
        return "test" if phrase.startswith("test") else "train" if phrase else ""

    return _rows_to_samples(
        _load_list(path),
        Path(image_dir),
        image_keys=("image_name",),
        split_of=split_of,
        keep=lambda row: split is None or split_of(row) == split,
        skips=skips,
        source=path.name,
    )


def read_slake(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    language: str | None = "en",
    skips: _Skips | None = None,
) -> list[VQASample]:
    """Read one SLAKE split file, keeping questions with ``q_lang == language`` (``None``: all).

    ``image_dir`` defaults to ``imgs/`` beside the JSON; the split is the file's stem.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> rows = [{"qid": 7, "img_id": 102, "img_name": "xmlab102/source.jpg", "question": "Which organ is abnormal?",
        ...          "answer": "Liver", "answer_type": "OPEN", "q_lang": "en", "modality": "CT"},
        ...         {"qid": 8, "img_id": 102, "img_name": "xmlab102/source.jpg", "question": "哪个器官不正常?",
        ...          "answer": "肝脏", "answer_type": "OPEN", "q_lang": "zh", "modality": "CT"}]
        >>> _ = (d / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        >>> [(s.qid, s.answer, s.split, s.image_path.parts[-3:]) for s in read_slake(d / "test.json")]
        [('7', 'liver', 'test', ('imgs', 'xmlab102', 'source.jpg'))]
    """
    path = Path(json_path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent / "imgs"
    return _rows_to_samples(
        _load_list(path),
        image_dir,
        image_keys=("img_name",),
        split_of=lambda row: path.stem,
        keep=lambda row: language is None or str(row.get("q_lang", "")).lower() == language,
        skips=skips,
        source=path.name,
    )


def read_vqa_json(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    skips: _Skips | None = None,
) -> list[VQASample]:
    """Read a generic VQA JSON list (the synthetic benchmark's format); relative images resolve against ``image_dir``.

    ``image_dir`` defaults to the JSON's folder; ``split`` keeps rows whose ``split`` field matches.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> rows = [{"id": "q1", "image_path": "images/s1.png", "question": "Which body region is shown?",
        ...          "answer": "chest", "answer_type": "open", "question_type": "region", "split": "test"}]
        >>> _ = (d / "vqa.json").write_text(json.dumps(rows))
        >>> s = read_vqa_json(d / "vqa.json", split="test")[0]
        >>> s.qid, s.answer, s.meta["question_type"], s.image_path.name
        ('q1', 'chest', 'region', 's1.png')
    """
    path = Path(json_path)
    return _rows_to_samples(
        _load_list(path),
        Path(image_dir) if image_dir is not None else path.parent,
        image_keys=("image_path", "image", "image_name", "img_name"),
        split_of=lambda row: str(row.get("split") or ""),
        keep=lambda row: split is None or str(row.get("split") or "") == split,
        skips=skips,
        source=path.name,
    )


def read_vqa_source(path: str | os.PathLike, *, skips: _Skips | None = None) -> tuple[list[VQASample], list[VQASample]]:
    """``(train, test)`` questions of a VQA source, its kind told by looking: SLAKE, VQA-RAD or a generic JSON list.

    * a folder with ``train.json`` and ``test.json`` is SLAKE (:func:`read_slake`, English);
    * a JSON list whose rows have ``phrase_type`` is VQA-RAD (:func:`read_vqa_rad`: ``test_*`` rows test);
    * any other JSON list is the generic format of :func:`read_vqa_json`: rows with ``image`` (or
      ``image_path``), ``question``, ``answer`` and ``split`` (``train`` / ``test``), images relative to the file.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> rows = [{"image": "a.png", "question": "Is there an effusion?", "answer": "yes", "split": s} for s in ("train", "test")]
        >>> _ = (d / "qa.json").write_text(json.dumps(rows))
        >>> [len(x) for x in read_vqa_source(d / "qa.json")]
        [1, 1]
    """
    p = Path(path)
    if p.is_dir():
        if not ((p / "train.json").is_file() and (p / "test.json").is_file()):
            raise FileNotFoundError(f"VQA folder {p} has no train.json and test.json (the SLAKE layout)")
        return read_slake(p / "train.json", skips=skips), read_slake(p / "test.json", skips=skips)
    if not p.is_file():
        raise FileNotFoundError(f"no VQA file {p} (a VQA-RAD JSON, a SLAKE folder or a JSON list of questions)")
    rows = _load_list(p)
    if any(isinstance(r, Mapping) and "phrase_type" in r for r in rows):
        return read_vqa_rad(p, split="train", skips=skips), read_vqa_rad(p, split="test", skips=skips)
    return read_vqa_json(p, split="train", skips=skips), read_vqa_json(p, split="test", skips=skips)


def read_synthetic_vqa(root: str | os.PathLike, split: str = "test", *, skips: _Skips | None = None) -> list[VQASample]:
    """The synthetic benchmark's ``<root>/vqa/<split>.json`` (images relative to ``root``), ids ``<image_id>#<n>``.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()); (root / "vqa").mkdir()
        >>> rows = [{"image_id": "SYN-test-000000", "image": "data/test/radiology/images/SYN-test-000000.jpg",
        ...          "question": "Which body region is shown?", "answer": "chest", "answer_type": "open",
        ...          "question_type": "region"}]
        >>> _ = (root / "vqa" / "test.json").write_text(json.dumps(rows))
        >>> s = read_synthetic_vqa(root, "test")[0]
        >>> s.qid, s.split, s.image_path.relative_to(root).parts[:2]
        ('SYN-test-000000#0', 'test', ('data', 'test'))
    """
    root = Path(root)
    path = root / "vqa" / f"{split}.json"
    rows = _load_list(path)
    for n, row in enumerate(rows):
        if isinstance(row, dict) and "qid" not in row and "id" not in row:
            row["qid"] = f"{row.get('image_id', '')}#{n}"
    return _rows_to_samples(
        rows,
        root,
        image_keys=("image", "image_path"),
        split_of=lambda row: split,
        keep=lambda row: True,
        skips=skips,
        source=path.name,
    )
