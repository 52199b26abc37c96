"""Train a small BERT-style WordPiece tokenizer on captions, offline, with the ``tokenizers`` library.

For the tiny default run a vocabulary learnt from the training captions
(hundreds to a few thousand tokens) keeps the text tower's embedding table
small, and needs no download. The result is a ``transformers``
``PreTrainedTokenizerFast`` with the BERT conventions the MLM and ITM code
expects: lower-casing with accent stripping (BERT normaliser), BERT
pre-tokenisation, ``[CLS] text [SEP]`` (and ``[CLS] a [SEP] b [SEP]`` for
pairs), special ids ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``.
Training is deterministic for a given caption list.
"""

from __future__ import annotations

from typing import Any, Iterable

from unimlip_kit.utils.optional import require

__all__ = ["SPECIAL_TOKENS", "train_wordpiece_tokenizer"]

#: Special tokens in id order (ids 0..4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(
    captions: Iterable[str],
    vocab_size: int = 2000,
    *,
    min_frequency: int = 1,
    lowercase: bool = True,
    model_max_length: int = 128,
) -> Any:
    """Learn a WordPiece vocabulary of at most ``vocab_size`` tokens from ``captions``.

    Returns a ``transformers.PreTrainedTokenizerFast`` (``save_pretrained``/
    ``from_pretrained`` work as for any Hugging Face tokenizer).

    Example:
        >>> tok = train_wordpiece_tokenizer(["No focal lesion.", "Small lesion in the left lung."] * 5, 100)
        >>> tok.convert_ids_to_tokens(tok("left lesion")["input_ids"])
        ['[CLS]', 'left', 'lesion', '[SEP]']
        >>> tok.pad_token_id, tok.mask_token_id, len(tok) <= 100
        (0, 4, True)
    """
    tokenizers = require("tokenizers", "text", "training a WordPiece vocabulary")
    transformers = require("transformers", "text", "wrapping the trained tokenizer")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = [" ".join(str(c).split()) for c in captions]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("captions is empty: nothing to learn a vocabulary from")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        do_lower_case=lowercase,
    )
