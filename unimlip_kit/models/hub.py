"""A trained :class:`~unimlip_kit.models.UniMlipModel` as a self-contained folder in the Hugging Face hub layout.

``model.save_pretrained(folder, tokenizer=tok)`` writes::

    folder/config.json                 UniMlipModelConfig fields + the two towers' transformers configs
    folder/model.safetensors           every weight (safetensors, no pickle)
    folder/preprocessor_config.json    how images and captions must be prepared (Preprocessing)
    folder/tokenizer.json, tokenizer_config.json, ...   the caption tokenizer (when given)
    folder/README.md                   a short model card

and ``UniMlipModel.from_pretrained(folder or "owner/name")`` rebuilds the model
from those files alone. The save/load machinery is ``huggingface_hub``'s
:class:`~huggingface_hub.PyTorchModelHubMixin`, so ``push_to_hub("owner/name")``
and loading a hub id work for anyone with network access; everything here is
tested offline from a folder.

Why the towers' configs are stored: a model built with ``image_model`` /
``text_model`` pointing at a local folder or hub id would, rebuilt from its
:class:`UniMlipModelConfig` alone, need that folder (or a download) again. The
saved ``config.json`` therefore sets ``image_model``/``text_model`` to ``None`` and
records each backbone as its transformers class and ``config.to_dict()``
(``"image_backbone_spec"``, ``"text_backbone_spec"``); loading builds the same
architecture offline with ``AutoConfig.for_model(model_type, **config)`` and
that class (random weights, no download), then loads ``model.safetensors``
strictly. The folder can be copied anywhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from unimlip_kit.models.config import UniMlipModelConfig
from unimlip_kit.utils.io import CorruptFileError, load_json

__all__ = [
    "CONFIG_NAME",
    "PREPROCESSOR_NAME",
    "Preprocessing",
    "UniMlipHubMixin",
    "WEIGHTS_NAME",
    "backbone_spec",
    "build_backbone",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESSOR_NAME = "preprocessor_config.json"
#: Bumped when the folder layout changes incompatibly; a newer folder is refused with a clear message.
FORMAT_VERSION = 1
_BACKBONE_KEYS = {"image": "image_backbone_spec", "text": "text_backbone_spec"}
_META_KEYS = {"architectures", "format_version", "unimlip_kit_version", "image_backbone_spec",
              "text_backbone_spec", "initialised_from"}
# Transformers config keys that describe where a config came from, not the architecture.
_DROP_CONFIG_KEYS = ("_name_or_path", "_commit_hash", "transformers_version", "architectures")


@dataclass
class Preprocessing:
    """How inputs must be prepared for a saved model (``preprocessor_config.json``).

    Attributes:
        image_size: images are resized to ``image_size x image_size`` with ``resize``.
        channels: 1 (grey, ITU-R BT.601 luma of a colour image) or 3 (RGB).
        resize: ``"pad"`` (keep aspect, pad with 0: the training default), ``"crop"`` or ``"stretch"``.
        window: CT window (preset name or ``[centre, width]`` in HU) for DICOM/NIfTI files; ``None`` = the
            file's own window or min-max.
        pixel_mean, pixel_std: the model's own ``(x - mean) / std``; applied *inside* the model, recorded
            here for other pipelines. Inputs to the model are in [0, 1].
        max_text_len: captions are truncated to this many tokens ([CLS] and [SEP] included).

    Example:
        >>> pp = Preprocessing.from_config(UniMlipModelConfig(image_size=32, max_text_len=16))
        >>> pp.image_size, pp.channels, pp.resize, pp.max_text_len
        (32, 1, 'pad', 16)
        >>> Preprocessing.from_dict(pp.to_dict()) == pp
        True
    """

    image_size: int = 64
    channels: int = 1
    resize: Literal["pad", "crop", "stretch"] = "pad"
    window: str | list[float] | None = None
    pixel_mean: float = 0.5
    pixel_std: float = 0.25
    max_text_len: int = 64

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in ("pad", "crop", "stretch"):
            raise ValueError(f"resize must be 'pad', 'crop' or 'stretch', got {self.resize!r}")
        if int(self.image_size) < 1 or int(self.max_text_len) < 2:
            raise ValueError(f"image_size must be >= 1 and max_text_len >= 2, got {self.image_size}, {self.max_text_len}")
        if isinstance(self.window, tuple):
            self.window = [float(v) for v in self.window]

    @classmethod
    def from_config(cls, cfg: UniMlipModelConfig, **overrides: Any) -> "Preprocessing":
        """The preprocessing a model of ``cfg`` was trained with (the recipe's defaults), with ``overrides``.

        Example:
            >>> Preprocessing.from_config(UniMlipModelConfig(), resize="crop").resize
            'crop'
        """
        base = dict(image_size=int(cfg.image_size), channels=int(cfg.image_channels), pixel_mean=float(cfg.pixel_mean),
                    pixel_std=float(cfg.pixel_std), max_text_len=int(cfg.max_text_len))
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``dataclasses.asdict``).

        Example:
            >>> Preprocessing().to_dict()["resize"]
            'pad'
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """Read :meth:`to_dict`'s output; unknown keys raise, naming them.

        Example:
            >>> Preprocessing.from_dict({"image_size": 32}).image_size
            32
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{PREPROCESSOR_NAME} has unknown keys {unknown} (known: {sorted(known)})")
        return cls(**data)


def backbone_spec(module: nn.Module) -> dict[str, Any]:
    """``{"class", "config", "init_kwargs"}`` that rebuild ``module``'s architecture offline (:func:`build_backbone`).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                             intermediate_size=16), add_pooling_layer=False)
        >>> spec = backbone_spec(bert)
        >>> spec["class"], spec["config"]["model_type"], spec["init_kwargs"]
        ('transformers.models.bert.modeling_bert.BertModel', 'bert', {'add_pooling_layer': False})
    """
    cls = type(module)
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    if not qualname.startswith("transformers."):
        raise TypeError(f"cannot save a {qualname} tower: only Hugging Face transformers towers can be rebuilt from a config")
    config = module.config.to_dict()
    for key in _DROP_CONFIG_KEYS:
        config.pop(key, None)
    init_kwargs: dict[str, Any] = {}
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        init_kwargs["add_pooling_layer"] = getattr(module, "pooler", None) is not None
    return {"class": qualname, "config": config, "init_kwargs": init_kwargs}


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """A randomly initialised transformers module of the architecture :func:`backbone_spec` recorded (no download).

    Only classes under ``transformers.`` are imported, so a config.json from the hub cannot name arbitrary code.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                             intermediate_size=16), add_pooling_layer=False)
        >>> again = build_backbone(backbone_spec(bert))
        >>> type(again).__name__, sorted(again.state_dict()) == sorted(bert.state_dict())
        ('BertModel', True)
    """
    qualname = str(spec.get("class", ""))
    module_name, _, name = qualname.rpartition(".")
    if not qualname.startswith("transformers.") or not module_name:
        raise ValueError(f"backbone class must be a transformers class, got {qualname!r}")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import backbone class {qualname!r} with the installed transformers ({err})") from None
    from transformers import AutoConfig

    config = dict(spec["config"])
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ValueError(f"backbone config of {qualname} has no model_type")
    return cls(AutoConfig.for_model(model_type, **config), **dict(spec.get("init_kwargs") or {}))


def _source_label(value: str | None) -> str | None:
    """Where a tower was initialised from, without an absolute local path (the folder must stay movable)."""
    if not value:
        return None
    return f"local folder {Path(value).name}" if os.path.exists(value) else str(value)


def _resolve_folder(model_id: str, **download: Any) -> Path:
    if os.path.isdir(model_id):
        return Path(model_id)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=model_id, **download))


class UniMlipHubMixin(
    PyTorchModelHubMixin,
    library_name="unimlip_kit",
    tags=["medical", "vision-language", "uni-mlip"],
):  # no paper_url=: huggingface_hub 0.24 (the floor) lacks it; the model card cites the paper
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for :class:`~unimlip_kit.models.UniMlipModel`.

    ``save_pretrained(folder, tokenizer=tok, preprocessing=pp)`` also remembers ``tok``
    and ``pp`` on the model (``model.tokenizer``, ``model.preprocessing``), so a later
    ``push_to_hub`` includes them; ``from_pretrained`` sets both from the folder.
    Loading is strict (every weight must match) and returns the model in eval mode.
    ``from_pretrained(..., map_location="cuda")`` loads onto a device.

    Example:
        >>> import tempfile
        >>> from unimlip_kit.models import UniMlipModel
        >>> cfg = UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32, vision_heads=2,
        ...                          text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=50)
        >>> model = UniMlipModel(cfg).eval()
        >>> folder = tempfile.mkdtemp()
        >>> model.save_pretrained(folder)
        >>> again = UniMlipModel.from_pretrained(folder)
        >>> x = torch.rand(2, 1, 64, 64)
        >>> torch.allclose(model.encode_image(x), again.encode_image(x), atol=1e-6), again.preprocessing.image_size
        (True, 64)
    """

    #: The caption tokenizer saved with the model (a transformers tokenizer), or None.
    tokenizer: Any = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, return_transform: bool = False,
                        **kwargs: Any) -> Any:
        """huggingface_hub's ``from_pretrained``: the model (eval mode, ``tokenizer`` and ``preprocessing`` attached).

        With ``return_transform=True`` it returns ``(model, preprocess)`` as open_clip's
        ``create_model_from_pretrained`` does: ``preprocess`` is the model's evaluation transform
        (:class:`unimlip_kit.inference.ImagePreprocess` of the folder's saved :class:`Preprocessing`),
        mapping a file path, PIL image, tensor or array to the (C, H, W) tensor ``encode_image`` takes.
        A local folder's ``config.json`` is read first, so that a file cut in half fails naming itself
        (the mixin's own ``json.load`` would not).

        Example:
            >>> import tempfile
            >>> from unimlip_kit.models import UniMlipModel
            >>> folder = tempfile.mkdtemp()
            >>> UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, image_size=32, embed_dim=16)).save_pretrained(folder)
            >>> model, preprocess = UniMlipModel.from_pretrained(folder, return_transform=True)
            >>> x = preprocess(torch.randint(0, 256, (50, 40), dtype=torch.uint8))   # any size, 8-bit grey
            >>> x.shape, model.encode_image(x[None]).shape
            (torch.Size([1, 32, 32]), torch.Size([1, 16]))
        """
        local = Path(str(pretrained_model_name_or_path))
        if local.is_dir() and (local / CONFIG_NAME).is_file():
            load_json(local / CONFIG_NAME)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if not return_transform:
            return model
        from unimlip_kit.inference import ImagePreprocess  # the layer above: the one image decoder lives there

        return model, ImagePreprocess.from_model(model)
    #: How inputs are prepared (:class:`Preprocessing`); None means :meth:`Preprocessing.from_config`.
    preprocessing: Preprocessing | None = None

    def save_pretrained(self, save_directory: str | Path, *, tokenizer: Any = None,
                        preprocessing: Preprocessing | None = None, **kwargs: Any) -> str | None:
        """Write the folder (see the module docstring); ``tokenizer`` and ``preprocessing`` are kept on the model.

        Other keyword arguments go to ``huggingface_hub``'s ``save_pretrained`` (``push_to_hub``, ``repo_id``).
        """
        if tokenizer is not None:
            if not hasattr(tokenizer, "save_pretrained"):
                raise TypeError(f"tokenizer must be a transformers tokenizer with save_pretrained, got {type(tokenizer).__name__}")
            self.tokenizer = tokenizer
        if preprocessing is not None:
            if not isinstance(preprocessing, Preprocessing):
                raise TypeError(f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
            self.preprocessing = preprocessing
        return super().save_pretrained(save_directory, **kwargs)

    def get_preprocessing(self) -> Preprocessing:
        """The model's :class:`Preprocessing` (the saved one, else the one its config implies).

        Example:
            >>> from unimlip_kit.models import UniMlipModel
            >>> UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, image_size=32)).get_preprocessing().image_size
            32
        """
        return self.preprocessing if self.preprocessing is not None else Preprocessing.from_config(self.config)

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_model

        import unimlip_kit

        save_directory = Path(save_directory)
        cfg: UniMlipModelConfig = self.config
        data = dataclasses.asdict(cfg)
        sources = {k: _source_label(getattr(cfg, k)) for k in ("image_model", "text_model")}
        data.update(image_model=None, text_model=None)
        data.update(
            architectures=[type(self).__name__],
            format_version=FORMAT_VERSION,
            unimlip_kit_version=unimlip_kit.__version__,
            image_backbone_spec=backbone_spec(self.image_tower.backbone),
            text_backbone_spec=backbone_spec(self.text_tower),
            initialised_from={k: v for k, v in sources.items() if v},
        )
        save_model(self, str(save_directory / WEIGHTS_NAME))
        (save_directory / CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        pp = self.get_preprocessing()
        (save_directory / PREPROCESSOR_NAME).write_text(json.dumps(pp.to_dict(), indent=2) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(save_directory))
        card = save_directory / "README.md"
        if not card.exists():
            card.write_text(_model_card(type(self).__name__, cfg, self.tokenizer is not None))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> Any:
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        download = dict(revision=revision, cache_dir=cache_dir, force_download=force_download,
                        local_files_only=local_files_only, token=token)
        proxies = model_kwargs.pop("proxies", None)  # passed by huggingface_hub < 1.0
        model_kwargs.pop("resume_download", None)  # passed by huggingface_hub < 1.0, deprecated there
        if proxies:
            download["proxies"] = proxies
        folder = _resolve_folder(model_id, **download)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not a folder written by save_pretrained")
        raw = load_json(config_file)  # CorruptFileError naming the file when it is cut or not JSON
        version = int(raw.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(f"{folder} was written with folder format {version}; this unimlip_kit reads up to "
                             f"{FORMAT_VERSION}: upgrade unimlip_kit")
        fields = {f.name for f in dataclasses.fields(UniMlipModelConfig)}
        unknown = sorted(set(raw) - fields - _META_KEYS)
        if unknown:
            raise ValueError(f"{config_file} has keys this unimlip_kit does not know: {unknown}")
        cfg = UniMlipModelConfig(**{k: v for k, v in raw.items() if k in fields})
        backbones = {}
        for side, key in _BACKBONE_KEYS.items():
            if raw.get(key) is not None:
                backbones[f"{side}_backbone"] = build_backbone(raw[key])
        model_kwargs.pop("config", None)  # the mixin's parsed copy of config.json: rebuilt above
        model = cls(cfg, **backbones, **model_kwargs)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}")
        try:
            missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
        except SafetensorError as err:  # truncated, garbage, not a safetensors file
            raise CorruptFileError(f"{weights} cannot be read as safetensors ({weights.stat().st_size} bytes): "
                                   f"{err}") from None
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{weights} does not match the model built from {CONFIG_NAME}: {err}") from None
        if strict and (missing or unexpected):
            raise ValueError(f"{weights} does not match the model built from {CONFIG_NAME}: "
                             f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
        pp_file = folder / PREPROCESSOR_NAME
        if pp_file.is_file():
            model.preprocessing = Preprocessing.from_dict(load_json(pp_file))
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            model.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return model.to(map_location).eval()


def _model_card(name: str, cfg: UniMlipModelConfig, has_tokenizer: bool) -> str:
    tok = "" if has_tokenizer else "\nNo tokenizer was saved with this model: pass one to `embed_texts(..., tokenizer=tok)`.\n"
    return f"""---
library_name: unimlip_kit
tags:
- medical
- vision-language
- uni-mlip
---

# {name}

A Uni-Mlip image-text model (Bawazir, Wu, Li, BMVC 2024, arXiv 2411.15207) saved by unimlip_kit:
{cfg.image_size}x{cfg.image_size} images with {cfg.image_channels} channel(s), captions up to {cfg.max_text_len} tokens,
{cfg.embed_dim}-dimensional joint embeddings.

```python
from unimlip_kit.models import UniMlipModel
from unimlip_kit.inference import embed_images, embed_texts

model = UniMlipModel.from_pretrained("this folder or owner/name")
image_emb = embed_images(model, ["scan.png"])        # (N, {cfg.embed_dim}), unit norm
text_emb = embed_texts(model, ["chest x-ray, no focal lesion"])

# or with the evaluation transform, as open_clip returns it
model, preprocess = UniMlipModel.from_pretrained("this folder or owner/name", return_transform=True)
image_emb = model.encode_image(preprocess("scan.png")[None])
```
{tok}"""

