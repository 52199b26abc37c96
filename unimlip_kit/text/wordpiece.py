"""A small BERT-style WordPiece tokenizer learnt from captions, offline and deterministic.

For the tiny default run a vocabulary learnt from the training captions
(hundreds to a few thousand tokens) keeps the text tower's embedding table
small and needs no download. The result is a ``transformers``
``PreTrainedTokenizerFast`` built on a ``tokenizers`` WordPiece model, with
the BERT conventions the MLM and ITM code expects: the BERT normaliser
(lower-casing), BERT pre-tokenisation, ``[CLS] text [SEP]`` (and
``[CLS] a [SEP] b [SEP]`` for pairs), special ids
``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``.

How the vocabulary is chosen (``algorithm="frequency"``, the default): every
character seen (as ``c`` and ``##c``, so no word is ever ``[UNK]``), then the
most frequent whole words, then — when words do not all fit — the most
frequent prefixes and ``##suffixes`` of the words left out, so rare words
split into a few pieces instead of characters. Ties break alphabetically and
ids are assigned in that order, so the same captions always give the same
tokenizer: a resumed run that rebuilds it gets identical ids. The
``tokenizers`` library's own ``WordPieceTrainer`` (``algorithm="trainer"``)
learns likelihood-based merges but breaks ties in hash order, so two calls on
the same captions can return different vocabularies;
use it only when you save the tokenizer with the run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Literal

from unimlip_kit.utils.optional import require

__all__ = ["SPECIAL_TOKENS", "train_wordpiece_tokenizer"]

#: Special tokens in id order (ids 0..4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _frequency_vocab(words: Counter[str], vocab_size: int, min_frequency: int) -> list[str]:
    chars = sorted({ch for w in words for ch in w})
    vocab = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    budget = vocab_size - len(vocab)
    if budget <= 0:
        return vocab[:vocab_size]
    ranked = [w for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_frequency and len(w) > 1]
    if len(ranked) <= budget:
        return vocab + ranked
    n_words = int(budget * 0.8)
    vocab += ranked[:n_words]
    kept = set(ranked[:n_words])
    pieces: Counter[str] = Counter()
    for w, n in words.items():
        if w in kept or len(w) < 4:
            continue
        for k in range(2, min(len(w), 7)):
            pieces[w[:k]] += n * k  # weight by characters saved
            pieces["##" + w[-k:]] += n * k
    taken = set(vocab)
    extra = [p for p, _ in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])) if p not in taken]
    return vocab + extra[: vocab_size - len(vocab)]


def train_wordpiece_tokenizer(
    captions: Iterable[str],
    vocab_size: int = 2000,
    *,
    min_frequency: int = 1,
    lowercase: bool = True,
    model_max_length: int = 128,
    algorithm: Literal["frequency", "trainer"] = "frequency",
) -> Any:
    """Learn a WordPiece vocabulary of at most ``vocab_size`` tokens from ``captions``.

    Returns a ``transformers.PreTrainedTokenizerFast`` (``save_pretrained``/
    ``from_pretrained`` work as for any Hugging Face tokenizer). See the module
    docstring for the two algorithms; the default is deterministic.

    Example:
        >>> tok = train_wordpiece_tokenizer(["No focal lesion.", "Small lesion in the left lung."] * 5, 100)
        >>> tok.convert_ids_to_tokens(tok("left lesion. lungs")["input_ids"])
        ['[CLS]', 'left', 'lesion', '.', 'lung', '##s', '[SEP]']
        >>> tok.pad_token_id, tok.mask_token_id, len(tok) <= 100
        (0, 4, True)
    """
    tokenizers = require("tokenizers", None, "building a WordPiece tokenizer")
    transformers = require("transformers", None, "wrapping the tokenizer")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = [" ".join(str(c).split()) for c in captions]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("captions is empty: nothing to learn a vocabulary from")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if algorithm not in ("frequency", "trainer"):
        raise ValueError(f"algorithm must be 'frequency' or 'trainer', got {algorithm!r}")
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    if algorithm == "frequency":
        words: Counter[str] = Counter()
        for t in texts:
            words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
        vocab = _frequency_vocab(words, vocab_size, min_frequency)
        tok = tokenizers.Tokenizer(
            models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100)
        )
    else:
        tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    if algorithm == "trainer":
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
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
