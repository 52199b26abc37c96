"""Text utilities: the bundled offline BERT tokenizer and a WordPiece trainer for small vocabularies."""

from unimlip_kit.text.tokenizer import (
    BUNDLED_PACKAGE,
    bundled_model_dir,
    has_bundled_model,
    load_bundled_tokenizer,
)
from unimlip_kit.text.wordpiece import SPECIAL_TOKENS, train_wordpiece_tokenizer

__all__ = [
    "BUNDLED_PACKAGE",
    "SPECIAL_TOKENS",
    "bundled_model_dir",
    "has_bundled_model",
    "load_bundled_tokenizer",
    "train_wordpiece_tokenizer",
]
