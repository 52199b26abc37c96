"""Embed images and captions with a saved model: unit-norm joint embeddings and zero-shot classification.

Typical use, from a folder written by ``UniMlipModel.save_pretrained`` (or a hub id)::

    from unimlip_kit.models import UniMlipModel
    from unimlip_kit.inference import embed_images, embed_texts, zero_shot_classify

    model = UniMlipModel.from_pretrained("runs/my_run/model")
    img = embed_images(model, ["a.png", "b.dcm", pil_image, tensor])   # (N, D), rows of norm 1
    txt = embed_texts(model, ["chest x-ray, left pleural effusion"])  # (M, D)
    similarity = img @ txt.T                                           # cosine similarities
    result = zero_shot_classify(model, ["a.png"], ["pneumothorax", "no finding"])

    # open_clip's way: the model and its evaluation transform, then encode_image on a stacked batch
    model, preprocess = UniMlipModel.from_pretrained("runs/my_run/model", return_transform=True)
    img = model.encode_image(torch.stack([preprocess("a.png"), preprocess(pil_image)]))

Images are prepared exactly as the training data was (:class:`~unimlip_kit.models.hub.Preprocessing`,
saved in the folder): files go through :func:`unimlip_kit.data.load_image`
(PNG/JPEG incl. 16-bit, DICOM, NIfTI; ``resize`` mode, channels, CT window); PIL
images follow the same per-mode rules; tensors and arrays follow one rule:

* floating point: already in [0, 1] (values outside raise; window CT Hounsfield units first);
* ``uint8``: divided by 255; ``uint16``: divided by 65535 (the decoder's rule for 8/16-bit files);
* any other integer type raises (its range is unknown: int16 CT in HU must be windowed first);
* shapes (H, W), (C, H, W) or a batch (B, C, H, W); C = 1 or 3; grey becomes RGB by repetition,
  RGB becomes grey with the ITU-R BT.601 luma weights; then resized to ``image_size`` with ``resize``.

Captions are tokenized with the saved tokenizer (padding, truncation at ``max_text_len``).
Everything runs without gradients in eval mode; results are float32 on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unimlip_kit.data.decode import load_image
from unimlip_kit.data.resize import resize_image
from unimlip_kit.eval.zero_shot import DEFAULT_TEMPLATES, zero_shot_classifier, zero_shot_logits
from unimlip_kit.models.hub import Preprocessing

__all__ = [
    "ImagePreprocess",
    "ZeroShotResult",
    "embed_images",
    "embed_texts",
    "prepare_image",
    "prepare_images",
    "zero_shot_classify",
]

#: ITU-R BT.601 luma weights (the decoder's colour-to-grey rule).
_LUMA = (0.299, 0.587, 0.114)
_INT_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0}


def _preprocessing(model: Any, preprocessing: Preprocessing | None) -> Preprocessing:
    if preprocessing is not None:
        return preprocessing
    getter = getattr(model, "get_preprocessing", None)
    if getter is None:
        raise TypeError(f"{type(model).__name__} has no get_preprocessing(); pass preprocessing=Preprocessing(...)")
    return getter()


def _to_unit_float(x: torch.Tensor, what: str) -> torch.Tensor:
    """Integer images scaled by their type's maximum; floats checked to lie in [0, 1]."""
    if x.dtype in _INT_SCALE:
        return x.to(torch.float32) / _INT_SCALE[x.dtype]
    if not x.dtype.is_floating_point:
        raise ValueError(f"{what}: integer images must be uint8 (/255) or uint16 (/65535), got {x.dtype}; "
                         "scale or window other integer data (e.g. CT in HU) to [0, 1] floats first")
    x = x.to(torch.float32)
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what}: float image has NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what}: float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                             "divide 8-bit data by 255 or pass it as uint8")
    return x


def _match_channels(x: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    c = x.shape[0]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=torch.float64)
        return (x.to(torch.float64) * w[:, None, None]).sum(0, keepdim=True).to(torch.float32)
    hint = ""
    if x.ndim == 3 and x.shape[-1] in (1, 3, 4):
        hint = (f"; a ({x.shape[0]}, {x.shape[1]}, {x.shape[2]}) array looks channels-last (H, W, C): pass "
                "array.transpose(2, 0, 1) or a PIL image")
    raise ValueError(f"{what}: images must have 1 or 3 channels, got {c} (shape {tuple(x.shape)}){hint}")


def _pil_to_tensor(image: Any) -> torch.Tensor:
    """A PIL image as float (C, H, W) in [0, 1] with the decoder's per-mode rules (8-bit /255, 16-bit /65535)."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(image, dtype=np.uint16).astype(np.float64) / 65535.0
    elif mode in ("L", "1"):
        arr = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    elif mode == "LA":
        arr = np.asarray(image, dtype=np.float64)[..., 0] / 255.0
    elif mode in ("I", "F"):
        raise ValueError(f"PIL image of mode {mode!r} has no fixed intensity range: convert it to a [0, 1] float "
                         "tensor first, or save it to a file and pass the path")
    else:
        arr = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def prepare_image(image: Any, preprocessing: Preprocessing) -> torch.Tensor:
    """One image (file path, PIL image, tensor or array) as float32 (C, H, W) in [0, 1] at the model's size.

    See the module docstring for the rules. A file that cannot be decoded raises
    :class:`unimlip_kit.data.ImageDecodeError` naming the file and the reason.

    Example:
        >>> pp = Preprocessing(image_size=8, channels=1)
        >>> prepare_image(torch.full((3, 16, 16), 255, dtype=torch.uint8), pp).shape
        torch.Size([1, 8, 8])
        >>> round(float(prepare_image(torch.full((1, 8, 8), 51, dtype=torch.uint8), pp).max()), 6)  # 51 / 255
        0.2
        >>> prepare_image(torch.full((1, 8, 8), 2.0), pp)
        Traceback (most recent call last):
        ...
        ValueError: image 0: float images must be in [0, 1], got values in [2, 2]; divide 8-bit data by 255 or pass it as uint8
    """
    return _prepare(image, preprocessing, "image 0")


def _prepare(image: Any, pp: Preprocessing, what: str) -> torch.Tensor:
    if isinstance(image, (str, os.PathLike)):
        window = tuple(pp.window) if isinstance(pp.window, list) else pp.window
        return load_image(image, size=pp.image_size, channels=pp.channels, resize=pp.resize, window=window)
    if isinstance(image, np.ndarray):
        arr = np.ascontiguousarray(image)
        image = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # np.asarray(PIL image) is read-only
    if isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"{what}: a single image must be (H, W) or (C, H, W), got shape {tuple(x.shape)}")
        x = _to_unit_float(x, what)
    elif hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image
        x = _pil_to_tensor(image)
    else:
        raise TypeError(f"{what}: expected a file path, PIL image, tensor or array, got {type(image).__name__}")
    x = _match_channels(x, pp.channels, what)
    return resize_image(x, pp.image_size, pp.resize)


class ImagePreprocess:
    """A model's evaluation transform, open_clip's ``preprocess``: one image -> the (C, H, W) tensor ``encode_image`` takes.

    It applies the model's :class:`~unimlip_kit.models.hub.Preprocessing` (a saved folder's
    ``preprocessor_config.json``): a file path is decoded by :func:`unimlip_kit.data.load_image`
    (PNG/JPEG incl. 16-bit, DICOM and NIfTI with the saved CT ``window``); a PIL image, tensor or
    array follows the rules of this module's docstring; then ``channels`` and ``image_size`` with the
    ``resize`` mode. The result is float32 (C, H, W) in [0, 1], exactly what :func:`prepare_image`
    returns and :func:`embed_images` feeds the model. ``pixel_mean`` / ``pixel_std`` are *not* applied:
    the model applies them inside ``encode_image`` (normalising here would do it twice). No random
    augmentation: this is the evaluation path. Picklable, so it can be a Dataset's transform in
    DataLoader workers.

    ``UniMlipModel.from_pretrained(folder, return_transform=True)`` returns ``(model, preprocess)``;
    :meth:`from_model` builds one for a model in memory.

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> model = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, image_size=32, embed_dim=16)).eval()
        >>> preprocess = ImagePreprocess.from_model(model)
        >>> preprocess
        ImagePreprocess(image_size=32, channels=1, resize='pad', window=None)
        >>> x = preprocess(np.full((40, 48), 255, dtype=np.uint8))      # a grey 8-bit array (H, W)
        >>> x.shape, float(x.max())
        (torch.Size([1, 32, 32]), 1.0)
        >>> model.encode_image(torch.stack([x, x])).shape
        torch.Size([2, 16])
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
        self.preprocessing = preprocessing

    @classmethod
    def from_model(cls, model: Any) -> "ImagePreprocess":
        """The transform of ``model``'s preprocessing (the saved one, else the one its config implies).

        Example:
            >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
            >>> ImagePreprocess.from_model(UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, image_size=16)))
            ImagePreprocess(image_size=16, channels=1, resize='pad', window=None)
        """
        return cls(_preprocessing(model, None))

    def __call__(self, image: Any) -> torch.Tensor:
        """One image (file path, PIL image, tensor or array) as float32 (C, H, W) in [0, 1] at the model's size."""
        return _prepare(image, self.preprocessing, "image")

    def __repr__(self) -> str:
        pp = self.preprocessing
        return (f"{type(self).__name__}(image_size={pp.image_size}, channels={pp.channels}, resize={pp.resize!r}, "
                f"window={pp.window!r})")


def prepare_images(images: Any, preprocessing: Preprocessing) -> torch.Tensor:
    """A list of images (or a (B, C, H, W) batch) as one float32 (B, C, H, W) batch in [0, 1].

    Example:
        >>> pp = Preprocessing(image_size=8, channels=1)
        >>> prepare_images([torch.rand(16, 16), np.zeros((3, 8, 8), dtype=np.uint8)], pp).shape
        torch.Size([2, 1, 8, 8])
    """
    items = _as_list(images)
    if not items:
        return torch.zeros(0, preprocessing.channels, preprocessing.image_size, preprocessing.image_size)
    return torch.stack([_prepare(im, preprocessing, f"image {i}") for i, im in enumerate(items)])


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert"):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim == 4:
            return list(images)
        return [images]
    try:
        return list(images)
    except TypeError:
        raise TypeError(f"images must be a list of paths, PIL images or tensors, got {type(images).__name__}") from None


def _device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def _batches(n: int, batch_size: int, progress: bool, desc: str) -> Iterable[int]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, disable=not progress, unit="batch", leave=False)


@torch.no_grad()
def embed_images(
    model: torch.nn.Module,
    images: Any,
    *,
    batch_size: int = 32,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """(N, D) unit-norm float32 embeddings (CPU) of ``images``, in order.

    ``images``: a list of file paths, PIL images, tensors or arrays (mixed is fine), or a
    (B, C, H, W) batch; prepared as the module docstring says, with the model's saved
    :class:`Preprocessing` unless ``preprocessing`` is given. Files are decoded one batch
    at a time, so a long list needs no more memory than ``batch_size`` images.

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> model = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, image_size=32, embed_dim=16))
        >>> emb = embed_images(model, [torch.rand(1, 32, 32), torch.randint(0, 256, (40, 40), dtype=torch.uint8)])
        >>> emb.shape, [round(float(n), 4) for n in emb.norm(dim=1)]
        (torch.Size([2, 16]), [1.0, 1.0])
    """
    pp = _preprocessing(model, preprocessing)
    items = _as_list(images)
    dev = _device(model, device)
    was = model.training
    model.eval()
    out = []
    try:
        for start in _batches(len(items), batch_size, progress, "embed images"):
            chunk = items[start:start + batch_size]
            x = torch.stack([_prepare(im, pp, f"image {start + i}") for i, im in enumerate(chunk)])
            out.append(F.normalize(model.encode_image(x.to(dev)).float(), dim=-1).cpu())
    finally:
        model.train(was)
    if not out:
        raise ValueError("embed_images got no images")
    return torch.cat(out)


def _tokenizer(model: Any, tokenizer: Any) -> Any:
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("no tokenizer: this model was saved without one; pass tokenizer= (the one it was trained "
                         "with), or save it with model.save_pretrained(folder, tokenizer=tok)")
    return tok


@torch.no_grad()
def embed_texts(
    model: torch.nn.Module,
    captions: Sequence[str],
    *,
    tokenizer: Any = None,
    batch_size: int = 256,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """(M, D) unit-norm float32 embeddings (CPU) of ``captions``, in order.

    Tokenized with ``tokenizer`` or the model's saved one, truncated at ``max_text_len`` tokens.

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> tok = train_wordpiece_tokenizer(["left lung nodule", "no focal lesion"] * 3, 60)
        >>> model = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vocab_size=len(tok), embed_dim=16))
        >>> emb = embed_texts(model, ["left lung nodule", "no lesion"], tokenizer=tok)
        >>> emb.shape, round(float(emb[0].norm()), 4)
        (torch.Size([2, 16]), 1.0)
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, got one string; wrap it in a list")
    texts = list(captions)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"captions must be strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}")
    if not texts:
        raise ValueError("embed_texts got no captions")
    tok = _tokenizer(model, tokenizer)
    pp = _preprocessing(model, preprocessing)
    dev = _device(model, device)
    was = model.training
    model.eval()
    out = []
    try:
        for start in _batches(len(texts), batch_size, progress, "embed captions"):
            enc = tok(texts[start:start + batch_size], padding=True, truncation=True, max_length=pp.max_text_len,
                      return_tensors="pt")
            mask = enc.get("attention_mask")
            emb = model.encode_text(enc["input_ids"].to(dev), None if mask is None else mask.to(dev))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


@dataclass
class ZeroShotResult:
    """Zero-shot predictions: ``scores`` (N, C) cosine similarities, ``probs`` (N, C) softmax of
    ``logit_scale · scores``, ``predictions`` (N,) class indices and ``labels`` their names.

    Example:
        >>> r = ZeroShotResult(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), ["a", "b"])
        >>> r.labels
        ['a', 'b']
    """

    scores: torch.Tensor
    probs: torch.Tensor
    predictions: torch.Tensor
    labels: list[str]


@torch.no_grad()
def zero_shot_classify(
    model: torch.nn.Module,
    images: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    tokenizer: Any = None,
    batch_size: int = 32,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
) -> ZeroShotResult:
    """CLIP zero-shot classification (Radford et al. 2021, §3.1.4) of ``images`` among ``class_names``.

    Each class weight is the prompt ensemble of ``template.format(name)`` over ``templates``
    (:func:`unimlip_kit.eval.zero_shot_classifier`); an image gets the class of highest cosine.
    ``probs`` uses the model's learnt ``logit_scale`` as the softmax temperature.

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> tok = train_wordpiece_tokenizer(["pneumothorax", "no finding", "an image of"] * 3, 60)
        >>> model = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vocab_size=len(tok), embed_dim=16))
        >>> r = zero_shot_classify(model, [torch.rand(1, 64, 64)] * 3, ["pneumothorax", "no finding"],
        ...                        ["{}", "an image of {}"], tokenizer=tok)
        >>> r.probs.shape, bool(torch.allclose(r.probs.sum(1), torch.ones(3))), len(r.labels)
        (torch.Size([3, 2]), True, 3)
    """
    names = [str(n) for n in class_names]
    tok = _tokenizer(model, tokenizer)

    def encode(prompts: list[str]) -> torch.Tensor:
        return embed_texts(model, prompts, tokenizer=tok, preprocessing=preprocessing, device=device)

    weights = zero_shot_classifier(encode, names, templates)
    image_emb = embed_images(model, images, batch_size=batch_size, preprocessing=preprocessing, device=device)
    scores = zero_shot_logits(image_emb, weights)
    scale = getattr(model, "logit_scale", None)
    s = float(scale()) if callable(scale) else 100.0
    probs = torch.softmax(s * scores, dim=-1)
    pred = scores.argmax(dim=-1)
    return ZeroShotResult(scores=scores, probs=probs, predictions=pred, labels=[names[i] for i in pred.tolist()])
