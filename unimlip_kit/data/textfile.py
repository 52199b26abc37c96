"""Reading caption tables and label fields the way real files are written: BOM, CRLF, lone CR, odd labels.

One place for the line and label rules every reader (``tabular.py``, ``roco.py``) shares:

* :func:`read_text_lines`: the file decoded as UTF-8 (a byte-order mark, as Excel's "CSV UTF-8"
  writes, is dropped), split at ``\\n`` only; a ``\\r`` before it (CRLF) is removed. A lone ``\\r``
  *inside* a line is caption whitespace, not a line break (text mode would split the line there);
  a file with no ``\\n`` at all but ``\\r`` breaks (classic Mac) is split at ``\\r``.
* :func:`parse_label`: a class index from a label field — ints, integral floats (``2.0`` from JSON
  or a spreadsheet) and ASCII digit strings are indices; ``None``/empty/``-1`` is unknown; any
  other string is a class *name*; anything else (``2.5``, ``True``, ``-3``, a list) is a bad label.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["BadLabel", "parse_label", "read_text_lines"]

_ASCII_INT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")


def read_text_lines(path: str | os.PathLike, *, encoding: str = "utf-8", errors: str = "strict") -> list[str]:
    """The lines of a text file without terminators (see the module docstring for BOM and CR rules).

    A file that does not decode raises ``ValueError`` naming the file, the byte offset and the
    ``encoding`` argument to pass.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "t.tsv")
        >>> _ = open(p, "wb").write("\\ufeffid\\tcaption\\r\\nROCO_1\\tLeft\\rlung\\r\\n".encode())
        >>> read_text_lines(p)
        ['id\\tcaption', 'ROCO_1\\tLeft\\rlung']
    """
    raw = Path(path).read_bytes()
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = raw.decode(enc, errors=errors)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not valid {encoding} at byte {err.start} ({err.reason}); pass encoding= with the file's "
            "encoding (e.g. encoding='latin-1' for an old Excel export)"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\n" not in text and "\r" in text:
        lines = text.split("\r")
    else:
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


class BadLabel(ValueError):
    """A label field that is neither an index, unknown, nor a class name (carries the reason).

    Example:
        >>> str(BadLabel("label 2.5 is not an integer class index"))
        'label 2.5 is not an integer class index'
    """


def parse_label(value: Any) -> int | str | None:
    """``int`` class index, ``str`` class name, or ``None`` (unknown) from a raw label field; raises :class:`BadLabel`.

    Example:
        >>> [parse_label(v) for v in (2, 2.0, "3", " 4.0 ", "", None, -1, "-1", "tumour", "²")]
        [2, 2, 3, 4, None, None, None, None, 'tumour', '²']
        >>> parse_label(2.5)
        Traceback (most recent call last):
        ...
        unimlip_kit.data.textfile.BadLabel: label 2.5 is not an integer class index
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadLabel(f"label {value!r} is a boolean, not a class index or name")
    if isinstance(value, int):
        index = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise BadLabel(f"label {value!r} is not an integer class index")
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _ASCII_INT.fullmatch(text):
            return text  # a class name ("tumour"; "²" is not an ASCII number)
        index = int(text.split(".")[0])
    else:
        raise BadLabel(f"label {value!r} ({type(value).__name__}) is not a class index or name")
    if index == -1:
        return None
    if index < 0:
        raise BadLabel(f"label {index} is negative (use -1 or leave it empty for unknown)")
    return index
