"""The run folder of ``recipes/uni_mlip_roco.py``: a self-contained, movable, resumable directory.

Layout (``output_dir``)::

    config.yaml                    the resolved RecipeConfig; paths inside the folder are relative to it
    tokenizer/                     the caption tokenizer (always saved: WordPiece, bundled BERT or a given one)
    backbones.json                 the towers' transformers classes and configs, when a tower came from
                                   image_model / text_model (the run never needs that folder again)
    checkpoints/step_<n>/          model.safetensors + state.pt (optimizer, scheduler, RNG, data position,
                                   skips, history) + manifest.json (each file's size and SHA-256), written
                                   in a hidden folder and renamed into place: only complete ones exist
    log.csv, loss_curves.png, metrics.json, summary.md, model/ (UniMlipModel.save_pretrained)
    model_best/                    with train.keep_best: the model at the best validation R@1 (+ best.json)

:func:`load_run` rebuilds ``(model, tokenize, config)`` from the folder alone, on any machine.

Resuming (:func:`resume_config`): the run continues *as it was configured*, from its ``config.yaml``.
Overrides given again may only change what does not alter the training (:data:`SAFE_RESUME_KEYS`:
more steps, logging and checkpoint cadence, workers, device, evaluation settings); any other change
(learning rate, loss weights, batch size, model, data...) is refused with an error naming the keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import warnings
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import yaml
from torch import nn

from unimlip_kit.data import is_shard_source, source_kind
from unimlip_kit.train.config import RecipeConfig
from unimlip_kit.utils.config import apply_overrides, config_from_dict, config_to_dict, load_config, save_config
from unimlip_kit.utils.io import CorruptFileError, atomic_write, load_json, load_safetensors, load_torch

__all__ = [
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "DERIVED_KEYS",
    "ResumeError",
    "SAFE_RESUME_KEYS",
    "build_run_model",
    "find_checkpoint",
    "find_weights",
    "load_recipe_config",
    "load_run",
    "load_run_config",
    "load_run_tokenizer",
    "prepare_tokenizer",
    "read_config_file",
    "restore_checkpoint",
    "resume_config",
    "save_backbones",
    "save_checkpoint",
    "save_run_config",
    "verify_checkpoint",
]

CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
BACKBONES = "backbones.json"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
CHECKPOINT_FILES = ("model.safetensors", "state.pt")

#: Keys an override given with ``--resume`` may change (``fnmatch`` patterns on dotted keys).
SAFE_RESUME_KEYS = (
    "train.max_steps", "train.log_every", "train.ckpt_every", "train.ckpt_every_minutes", "train.keep_checkpoints",
    "train.loggers",
    "train.wandb_project", "progress", "device", "threads", "output_dir", "data.num_workers", "data.cache_dir",
    "data.eval_root", "data.vqa", "data.label_column", "train.val_every", "train.val_every_minutes", "train.val_pairs", "train.keep_best",
    "eval.*",
)
#: Keys the recipe sets from the tokenizer: kept from the saved config on resume, never compared.
DERIVED_KEYS = ("model.vocab_size", "model.pad_token_id", "model.mask_token_id", "model.special_token_ids")


class ResumeError(ValueError):
    """An override given with ``--resume`` would change the run (a ``ValueError``; :func:`resume_config` raises it).

    Example:
        >>> issubclass(ResumeError, ValueError)
        True
    """


# ----------------------------------------------------------------------------- config.yaml


def _flatten(data: Mapping[str, Any], cls: type, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": v, ...}``: dataclass sections flattened, every other value (lists, dict fields) a leaf."""
    hints = {f.name: f for f in dataclasses.fields(cls)}
    import typing

    types = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for k, v in data.items():
        tp = types.get(k)
        if k in hints and dataclasses.is_dataclass(tp) and isinstance(v, Mapping):
            out.update(_flatten(v, tp, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _leaves(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``_flatten``'s output with dict-valued fields spelled out (``loss.weights.itm``), for comparing two configs."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if isinstance(v, Mapping) and v:
            out.update(_leaves({f"{k}.{kk}": vv for kk, vv in v.items()}))
        else:
            out[k] = v
    return out


def _relative_tokenizer_fix(text_cfg: Mapping[str, Any], base: Path) -> list[str]:
    """An override resolving a relative ``tokenizer`` path of a config file against the file's folder."""
    tok = text_cfg.get("tokenizer")
    if isinstance(tok, str) and tok not in ("wordpiece", "bundled") and not os.path.isabs(tok):
        if (base / tok).exists() and not Path(tok).exists():
            return [f"tokenizer={base / tok}"]
    return []


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config YAML file as a nested dict of text (``yaml.BaseLoader``), or ``{}`` for an empty file.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "c.yaml"; _ = p.write_text("train:\\n  lr: 3e-4\\n")
        >>> read_config_file(p)
        {'train': {'lr': '3e-4'}}
    """
    with open(path, encoding="utf-8-sig") as fh:
        try:
            data = yaml.load(fh, Loader=yaml.BaseLoader) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    return dict(data)


def load_recipe_config(path: str | Path | None, overrides: Sequence[str] = (), cls: type = RecipeConfig) -> Any:
    """:func:`~unimlip_kit.utils.load_config` where a relative ``tokenizer`` path in the file is relative to the file.

    That is how a run's own ``config.yaml`` (``tokenizer: tokenizer``) loads from anywhere.

    Example:
        >>> load_recipe_config(None, ["train.lr=0.01"]).train.lr
        0.01
    """
    fix = _relative_tokenizer_fix(read_config_file(path), Path(path).parent) if path is not None else []
    return load_config(cls, path, [*fix, *overrides])


def save_run_config(cfg: RecipeConfig, run_dir: str | Path) -> None:
    """Write ``<run>/config.yaml``; a tokenizer that is a folder or hub id is recorded as the run's copy, ``tokenizer``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "tokenizer").mkdir()
        >>> save_run_config(RecipeConfig(tokenizer="org/model"), d)
        >>> "tokenizer: tokenizer" in (d / "config.yaml").read_text(), load_run_config(d).tokenizer == str(d / "tokenizer")
        (True, True)
    """
    run_dir = Path(run_dir)
    if cfg.tokenizer not in ("wordpiece", "bundled"):
        cfg = dataclasses.replace(cfg, tokenizer=TOKENIZER)  # the copy saved in <run>/tokenizer
    save_config(cfg, run_dir / CONFIG)


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> RecipeConfig:
    """The :class:`RecipeConfig` saved in ``<run>/config.yaml`` (paths resolved against the folder), with ``overrides``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); save_run_config(RecipeConfig(seed=3), d)
        >>> load_run_config(d).seed, load_run_config(d, ["seed=4"]).seed
        (3, 4)
    """
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {CONFIG})")
    return load_recipe_config(path, overrides)


def resume_config(run_dir: str | Path, overrides: Sequence[str] = (), config_file: str | Path | None = None,
                  safe: Sequence[str] = SAFE_RESUME_KEYS) -> tuple[RecipeConfig, dict[str, tuple[Any, Any]]]:
    """The saved config of ``run_dir`` with the safe ``overrides`` (and ``config_file``'s values) applied.

    Returns ``(config, changed)`` with ``changed = {key: (saved, new)}``. A value equal to the saved
    one is accepted whatever the key (the command that started the run resumes it); a changed key
    outside ``safe`` raises :class:`ResumeError` naming every such key with both values.
    ``output_dir`` is always the folder being resumed (it may have been moved).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); save_run_config(RecipeConfig(output_dir=str(d)), d)
        >>> cfg, changed = resume_config(d, ["train.max_steps=1500", "train.ckpt_every=10"])
        >>> cfg.train.max_steps, changed["train.max_steps"]
        (1500, (1000, 1500))
        >>> resume_config(d, ["train.lr=3e-4"])
        Traceback (most recent call last):
        ...
        unimlip_kit.train.run.ResumeError: --resume continues ... as saved in its config.yaml; refused: train.lr (saved 0.001, given 0.0003). ...
    """
    run_dir = Path(run_dir)
    saved = load_run_config(run_dir)
    given: list[str] = []
    if config_file is not None:  # a --config file given again: its values are overrides of the saved run
        data = read_config_file(config_file)
        fix = _relative_tokenizer_fix(data, Path(config_file).parent)
        for key, value in _flatten(data, RecipeConfig).items():
            text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
            given.append(f"{key}={text}")
        given += fix  # after the file's own relative tokenizer path
    given += list(overrides)
    new = config_from_dict(RecipeConfig, apply_overrides(config_to_dict(saved), given, RecipeConfig))
    if new.train.warmup_steps is None:  # "5% of max_steps": the run saved the number it resolved, which stays
        new.train = dataclasses.replace(new.train, warmup_steps=saved.train.warmup_steps)
    old_flat = _leaves(_flatten(config_to_dict(saved), RecipeConfig))
    new_flat = _leaves(_flatten(config_to_dict(new), RecipeConfig))
    keys = list(old_flat) + [k for k in new_flat if k not in old_flat]
    changed = {k: (old_flat.get(k), new_flat.get(k)) for k in keys
               if old_flat.get(k) != new_flat.get(k) and k not in DERIVED_KEYS and k != "output_dir"}
    refused = {k: v for k, v in changed.items() if not any(fnmatch(k, pat) for pat in safe)}
    if None in changed.get("data.eval_root", (0, 0)) and _holds_out(saved.data.root):
        # a table's own hold-out would join or leave the training set
        refused["data.eval_root (switching between --val-data and the hold-out of a table or folder changes the "
                "training set)"] = changed["data.eval_root"]
    if refused:
        listed = ", ".join(f"{k} (saved {a!r}, given {b!r})" for k, (a, b) in refused.items())
        raise ResumeError(
            f"--resume continues {run_dir} as saved in its config.yaml; refused: {listed}. With --resume only "
            f"these may change: {', '.join(safe)}. To train with other settings start a new run "
            f"(another --output-dir), or edit {run_dir / CONFIG} if you really mean to change this run.")
    for k in DERIVED_KEYS:  # the tokenizer's ids stay those of the saved run
        section, name = k.split(".")
        setattr(getattr(new, section), name, getattr(getattr(saved, section), name))
    new.output_dir = str(run_dir)
    return new, changed


def _holds_out(root: str | None) -> bool:
    """Whether a run on ``root`` trains on what is left after holding out validation pairs (a table or folder)."""
    try:
        return root is not None and source_kind(root) in ("table", "folder")
    except (OSError, ValueError):  # the data moved: the saved config is all we know
        return root is not None and not Path(root).is_dir() and not is_shard_source(root)


# ----------------------------------------------------------------------------- tokenizer and model


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def load_run_tokenizer(run_dir: str | Path, cfg: RecipeConfig | None = None) -> Any:
    """The tokenizer saved in ``<run>/tokenizer``; runs saved before it existed fall back to ``cfg.tokenizer``.

    Example:
        >>> import tempfile
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = train_wordpiece_tokenizer(["a b c"] * 3, vocab_size=40).save_pretrained(str(d / "tokenizer"))
        >>> len(load_run_tokenizer(d)) <= 40
        True
    """
    from transformers import AutoTokenizer

    folder = Path(run_dir) / TOKENIZER
    if _has_tokenizer(folder):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                load_json(folder / name)  # a cut or garbage file names itself (transformers' error would not)
        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - tokenizers raises bare Exceptions for bad files
            raise CorruptFileError(f"the run's tokenizer in {folder} cannot be loaded: {type(err).__name__}: {err}") from err
    if cfg is None or cfg.tokenizer == "wordpiece":
        raise FileNotFoundError(f"{folder} holds no tokenizer (tokenizer.json)")
    if cfg.tokenizer == "bundled":
        from unimlip_kit.text import load_bundled_tokenizer

        return load_bundled_tokenizer()
    return AutoTokenizer.from_pretrained(cfg.tokenizer)


def prepare_tokenizer(cfg: RecipeConfig, captions: Sequence[str], run_dir: str | Path, *, reuse: bool = False) -> Any:
    """Build the run's tokenizer per ``cfg.tokenizer`` and save it in ``<run>/tokenizer``; ``reuse`` loads a saved one.

    Built: WordPiece trained on ``captions`` (``wordpiece_vocab``), the bundled BERT, or
    ``AutoTokenizer.from_pretrained(cfg.tokenizer)``. ``reuse=True`` (a resumed run) loads
    ``<run>/tokenizer`` when it holds one, so the vocabulary is exactly the one trained on.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> tok = prepare_tokenizer(RecipeConfig(wordpiece_vocab=60), ["left lung mass"] * 4, d)
        >>> (d / "tokenizer" / "tokenizer.json").is_file(), len(prepare_tokenizer(RecipeConfig(), [], d, reuse=True)) == len(tok)
        (True, True)
    """
    folder = Path(run_dir) / TOKENIZER
    if reuse and _has_tokenizer(folder):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if cfg.tokenizer == "bundled":
        from unimlip_kit.text import load_bundled_tokenizer

        tok = load_bundled_tokenizer()
    elif cfg.tokenizer == "wordpiece":
        from unimlip_kit.text import train_wordpiece_tokenizer

        tok = train_wordpiece_tokenizer(list(captions), vocab_size=cfg.wordpiece_vocab)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    tok.save_pretrained(str(folder))
    return tok


def save_backbones(model: nn.Module, run_dir: str | Path) -> bool:
    """Write ``<run>/backbones.json`` (the towers' transformers specs) when a tower came from a pretrained folder/hub id.

    Returns whether it wrote the file. Towers built from the config need none: the config rebuilds them.

    Example:
        >>> import tempfile
        >>> from unimlip_kit.models import UniMlipModelConfig
        >>> save_backbones(build_run_model(UniMlipModelConfig(vision_layers=1, text_layers=1)), tempfile.mkdtemp())
        False
    """
    from unimlip_kit.models.hub import backbone_spec

    cfg = model.config
    if not (cfg.image_model or cfg.text_model):
        return False
    specs = {"image": backbone_spec(model.image_tower.backbone) if cfg.image_model else None,
             "text": backbone_spec(model.text_tower) if cfg.text_model else None}
    atomic_write(Path(run_dir) / BACKBONES, json.dumps(specs, indent=1, sort_keys=True) + "\n")
    return True


def build_run_model(cfg: Any, run_dir: str | Path | None = None) -> nn.Module:
    """``UniMlipModel(cfg)``; towers recorded in ``<run>/backbones.json`` are rebuilt from it (no download, no source folder).

    Example:
        >>> from unimlip_kit.models import UniMlipModelConfig
        >>> m = build_run_model(UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
        ...                     vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=50))
        >>> type(m).__name__
        'UniMlipModel'
    """
    from unimlip_kit.models import UniMlipModel
    from unimlip_kit.models.hub import build_backbone

    path = Path(run_dir) / BACKBONES if run_dir is not None else None
    if path is None or not path.is_file():
        return UniMlipModel(cfg)
    specs = load_json(path)
    kw = {f"{side}_backbone": build_backbone(spec) for side, spec in specs.items() if spec is not None}
    return UniMlipModel(cfg, **kw)


# ----------------------------------------------------------------------------- checkpoints


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a file-size limit, a permission); the message names the path,
    the error and the free space, and the previous checkpoint is left as it was.

    Example:
        >>> str(CheckpointWriteError("writing runs/x/checkpoints/step_0000004 failed: ..."))
        'writing runs/x/checkpoints/step_0000004 failed: ...'
    """


class CorruptCheckpointError(RuntimeError):
    """No checkpoint of a run can be trusted; the message names every file and what is wrong with it.

    Example:
        >>> str(CorruptCheckpointError("no valid checkpoint in runs/x/checkpoints: ..."))
        'no valid checkpoint in runs/x/checkpoints: ...'
    """


def _is_checkpoint(p: Path) -> bool:
    """A step folder with a manifest (or, written before manifests, a ``state.pt``)."""
    return p.is_dir() and ((p / MANIFEST).is_file() or (p / "state.pt").is_file())


def _complete(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    return sorted(p for p in (run_dir / CHECKPOINTS).glob("step_*") if _is_checkpoint(p))


def _clean_stray(folder: Path) -> None:
    """Remove what an interrupted checkpoint write left: hidden ``.tmp-step_*`` folders and ``.*.tmp`` files."""
    if not folder.is_dir():
        return
    for stray in folder.glob(".tmp-step_*"):
        shutil.rmtree(stray, ignore_errors=True)
    for stray in folder.glob("step_*/.*.tmp"):
        stray.unlink(missing_ok=True)


def verify_checkpoint(ckpt: str | Path) -> list[str]:
    """What is wrong with a checkpoint folder (empty: nothing): files missing, of the wrong size or hash.

    With a manifest every file's size and SHA-256 are compared; a checkpoint written before manifests is
    checked by reading both files.

    Example:
        >>> verify_checkpoint("/no/such/step_0000001")
        ['/no/such/step_0000001/manifest.json is missing (and there is no state.pt)']
    """
    ckpt = Path(ckpt)
    if not (ckpt / MANIFEST).is_file():
        if not (ckpt / "state.pt").is_file():
            return [f"{ckpt / MANIFEST} is missing (and there is no state.pt)"]
        problems = []
        for name, read in (("model.safetensors", load_safetensors), ("state.pt", load_torch)):
            try:
                read(ckpt / name)
            except (CorruptFileError, FileNotFoundError) as err:
                problems.append(str(err))
        return problems
    try:
        manifest = load_json(ckpt / MANIFEST)
        files = manifest["files"]
    except (CorruptFileError, KeyError, TypeError) as err:
        return [f"{ckpt / MANIFEST} is unreadable: {err}"]
    problems = []
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{path} has {size} bytes, the manifest says {want['bytes']} (truncated or rewritten)")
        elif _sha256(path) != want["sha256"]:
            problems.append(f"{path} does not match its SHA-256 in the manifest (changed after it was written)")
    return problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    stream: Any, skips: Any, history: list[dict[str, float]], keep: int, used: Iterable[str]) -> Path:
    """``checkpoints/step_<n>/``: safetensors weights, ``state.pt`` and a manifest; complete or absent, then pruned.

    ``state.pt`` holds the optimizer and scheduler, the torch/CUDA RNG, the data position
    (``stream.position()``), the skip counts, the logged history and the ids of the pairs used so far;
    ``manifest.json`` each file's size and SHA-256. All three are written in a hidden folder that is renamed
    to ``step_<n>`` only when complete, so no half-written checkpoint ever looks like the newest. A failed
    write (a full disk, a file-size limit) removes the hidden folder and raises
    :class:`CheckpointWriteError` naming the path and the free space; the older checkpoints are untouched.
    The newest ``keep`` survive (0: all).

    Example:
        >>> import tempfile
        >>> from unimlip_kit.data import SkipCounter
        >>> from unimlip_kit.models import UniMlipModelConfig
        >>> from unimlip_kit.train import TrainConfig, build_optimizer
        >>> model = build_run_model(UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
        ...     vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=50))
        >>> opt, sched = build_optimizer(model, TrainConfig())
        >>> class Stream:  # anything with position(), e.g. unimlip_kit.data.StepStream
        ...     def position(self): return {"epoch": 0, "batches_done": 3}
        >>> d = Path(tempfile.mkdtemp())
        >>> ckpts = [save_checkpoint(d, s, model, opt, sched, Stream(), SkipCounter(), [], 2, ["a"]) for s in (1, 2, 3)]
        >>> [p.name for p in sorted((d / "checkpoints").iterdir())], find_checkpoint(d) == ckpts[-1]
        (['step_0000002', 'step_0000003'], True)
        >>> sorted(p.name for p in ckpts[-1].iterdir()), verify_checkpoint(ckpts[-1])
        (['manifest.json', 'model.safetensors', 'state.pt'], [])
        >>> state = restore_checkpoint(ckpts[-1], model, opt, sched); state["step"], state["data"], state["used_pairs"]
        (3, {'epoch': 0, 'batches_done': 3}, ['a'])
    """
    from safetensors.torch import save

    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINTS
    ckpt = folder / f"step_{step:07d}"
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = {
        "step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "data": stream.position(),
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "skipped": skips.items(), "history": history, "used_pairs": sorted(used),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs = {"model.safetensors": save(tensors), "state.pt": buf.getvalue()}
    manifest = {"format": 1, "step": step,
                "files": {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in blobs.items()}}
    _clean_stray(folder)
    tmp = folder / f".tmp-{ckpt.name}-{os.getpid()}"
    try:
        for name, blob in blobs.items():
            atomic_write(tmp / name, blob)
        atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")  # last: the folder is complete
        if ckpt.exists():  # the same step saved again (e.g. before stopping on a NaN): swap, never half-replace
            old = folder / f".tmp-{ckpt.name}-{os.getpid()}-old"
            os.replace(ckpt, old)
            os.replace(tmp, ckpt)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, ckpt)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            free = f"{shutil.disk_usage(folder).free / 1e9:.2f} GB free on {folder}"
        except OSError:
            free = "free space unknown"
        done = _complete(run_dir)
        previous = f"the previous checkpoint {done[-1]} is intact" if done else "there is no earlier checkpoint"
        raise CheckpointWriteError(
            f"writing checkpoint {ckpt} failed: {err.strerror or err}"
            f"{f' ({err.filename})' if getattr(err, 'filename', None) else ''}; {free}; {previous}") from err
    done = _complete(run_dir)
    for stale in done[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return ckpt


def find_checkpoint(run_dir: str | Path, which: str | Path = "latest") -> Path | None:
    """The newest valid checkpoint of ``run_dir`` (``which="latest"``; ``None`` if there is none) or the folder ``which``.

    A damaged newest checkpoint (:func:`verify_checkpoint`) is skipped with a warning naming it; when every
    one is damaged, :class:`CorruptCheckpointError` names each file and its problem.

    Example:
        >>> import tempfile
        >>> find_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    if str(which) != "latest":
        path = Path(which)
        if not _is_checkpoint(path):
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no manifest.json or state.pt): pass a "
                                    f"checkpoints/step_* folder or a run folder")
        problems = verify_checkpoint(path)
        if problems:
            raise CorruptCheckpointError(f"checkpoint {path} is damaged: " + "; ".join(problems))
        return path
    run_dir = Path(run_dir)
    _clean_stray(run_dir / CHECKPOINTS)
    damaged = []
    for ckpt in reversed(_complete(run_dir)):
        problems = verify_checkpoint(ckpt)
        if not problems:
            if damaged:
                warnings.warn(f"skipped {len(damaged)} damaged checkpoint(s), using {ckpt}: " + " | ".join(damaged),
                              RuntimeWarning, stacklevel=2)
            return ckpt
        damaged.append(f"{ckpt.name}: " + "; ".join(problems))
    if damaged:
        raise CorruptCheckpointError(f"no valid checkpoint in {run_dir / CHECKPOINTS}: " + " | ".join(damaged))
    return None


def find_weights(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """``model.safetensors`` of ``checkpoint`` (a folder or file) or of the run's newest valid checkpoint.

    Example:
        >>> import tempfile
        >>> find_weights(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: no checkpoint with model.safetensors under .../checkpoints
    """
    if checkpoint is not None:
        p = Path(checkpoint)
        return p / "model.safetensors" if p.is_dir() else p
    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint with model.safetensors under {run_dir / CHECKPOINTS}")
    return ckpt / "model.safetensors"


def restore_checkpoint(ckpt: str | Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                       device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a :func:`save_checkpoint` folder into ``model``/``opt``/``sched``, restore the torch RNG; return ``state.pt``.

    The caller continues from ``state["step"]`` with ``state["history"]``, ``state["used_pairs"]``,
    ``state["data"]`` (the stream position) and ``state["skipped"]``. Example: :func:`save_checkpoint`.

    Example:
        >>> restore_checkpoint("/no/such/checkpoint", None, None, None)
        Traceback (most recent call last):
        ...
        FileNotFoundError: /no/such/checkpoint is not a complete checkpoint (no state.pt)
    """
    ckpt = Path(ckpt)
    if not (ckpt / "state.pt").is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no state.pt)")
    model.load_state_dict(load_safetensors(ckpt / "model.safetensors", device=str(device)))
    state = load_torch(ckpt / "state.pt")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    return state


# ----------------------------------------------------------------------------- loading a finished run


def load_run(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
    """``(model, tokenize, config)`` of a run folder, model in eval mode; needs nothing outside the folder.

    ``tokenize(texts)`` returns ``input_ids``/``attention_mask`` as the run tokenised captions
    (the saved tokenizer, truncation at ``model.max_text_len``). Towers that came from a pretrained
    folder are rebuilt from ``backbones.json``, so the folder can be copied to a machine without it.

    Example:
        >>> import tempfile
        >>> from unimlip_kit.data import SkipCounter
        >>> from unimlip_kit.models import UniMlipModelConfig
        >>> from unimlip_kit.train import build_optimizer
        >>> d = Path(tempfile.mkdtemp())
        >>> tok = prepare_tokenizer(RecipeConfig(wordpiece_vocab=50), ["left lung mass", "no lesion"] * 4, d)
        >>> cfg = RecipeConfig(model=UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
        ...     vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=len(tok)))
        >>> save_run_config(cfg, d)
        >>> model = build_run_model(cfg.model); opt, sched = build_optimizer(model, cfg.train)
        >>> class Stream:
        ...     def position(self): return {"epoch": 0, "batches_done": 0}
        >>> _ = save_checkpoint(d, 1, model, opt, sched, Stream(), SkipCounter(), [], 1, [])
        >>> loaded, tokenize, rcfg = load_run(d)
        >>> t = tokenize(["left lung mass"])
        >>> torch.equal(loaded.encode_text(**t), model.eval().encode_text(**t)), rcfg.model.vocab_size == len(tok)
        (True, True)
    """
    run_dir = Path(run_dir)
    rcfg = load_run_config(run_dir)
    model = build_run_model(rcfg.model, run_dir)
    model.load_state_dict(load_safetensors(find_weights(run_dir, checkpoint), device="cpu"))
    model.to(device).eval()
    tok = load_run_tokenizer(run_dir, rcfg)
    max_len = rcfg.model.max_text_len

    def tokenize(texts: list[str]) -> Mapping[str, torch.Tensor]:
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return model, tokenize, rcfg
