"""Text utilities: the bundled offline BERT tokenizer."""

from unimlip_kit.text.tokenizer import (
    BUNDLED_PACKAGE,
    bundled_model_dir,
    has_bundled_model,
    load_bundled_tokenizer,
)

__all__ = ["BUNDLED_PACKAGE", "bundled_model_dir", "has_bundled_model", "load_bundled_tokenizer"]
