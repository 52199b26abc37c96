"""One command-line style for every recipe: ``--config FILE`` plus ``key=value`` overrides, a few flags mapped onto keys.

Every recipe (``recipes/uni_mlip_roco.py``, ``evaluate.py``, ``finetune_vqa.py``, ``ablation.py``) is
driven by a dataclass config::

    python recipes/<recipe>.py [--config FILE] [key.sub=value ...] [--flag value ...]

The defaults come from the dataclass, then the YAML file, then the overrides, then the flags (so a
flag wins over an override of the same key). :data:`FLAGS` is the one table of flags: each is a
shorthand for one key (``--max-steps 50`` = ``train.max_steps=50`` in the training recipe,
``max_steps=50`` in VQA fine-tuning), a switch (``--no-progress`` = ``progress=false``), a list
(``--tasks retrieval vqa`` = ``eval.tasks=[retrieval, vqa]``), or a repeatable ``KEY=VALUE`` under a
section (``--eval-set vqa_epochs=1`` = ``eval.vqa_epochs=1``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

import yaml

__all__ = ["FLAGS", "Flag", "ParsedArgs", "parse_recipe_args"]


@dataclass(frozen=True)
class Flag:
    """A command-line shorthand for a config key.

    Attributes:
        flag: the option, e.g. ``"--max-steps"``.
        key: the dotted config key it sets.
        help: the help text.
        switch: a flag without a value that writes ``switch`` (``--no-progress`` -> ``"false"``).
        many: takes one or more values, written as a YAML list.
        repeat: repeatable; ``"list"`` collects the values into a list key, ``"section"`` reads each as
            ``KEY=VALUE`` under ``key`` (``--eval-set a=1`` -> ``eval.a=1``).
        implies: keys that get the same value unless given explicitly (``--text-model`` -> ``tokenizer``).
        choices: allowed values (shown in ``--help``; the config types check them too).

    Example:
        >>> Flag("--max-steps", "train.max_steps").dest
        'max_steps'
    """

    flag: str
    key: str
    help: str = ""
    switch: str | None = None
    many: bool = False
    repeat: str | None = None
    implies: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute name."""
        return self.flag.lstrip("-").replace("-", "_")


_DEVICE = ("auto", "cpu", "cuda")
_PROGRESS = Flag("--no-progress", "progress", "no progress bars", switch="false")

#: The flags of every recipe, in one place: recipe name -> its shorthands.
FLAGS: dict[str, tuple[Flag, ...]] = {
    "uni_mlip_roco": (
        Flag("--data-root", "data.root", "the training pairs: a CSV/TSV/JSONL table, an image folder with .txt captions, "
             "a ROCO folder or WebDataset shards (default: the synthetic benchmark)"),
        Flag("--train-data", "data.root", "the same as --data-root (open_clip's name)"),
        Flag("--val-data", "data.eval_root", "the held-out pairs (a table, an image folder or ROCO); default: ROCO's "
             "test split, or a seeded data.val_fraction of a table or folder"),
        Flag("--image-column", "data.image_column", "a table's image-path column (default image)"),
        Flag("--caption-column", "data.caption_column", "a table's caption column (default caption)"),
        Flag("--zeroshot-labels", "data.label_column", "classes for zero-shot and the linear probe: a table's label "
             "column, or 'folder' for an image folder's class sub-folders"),
        Flag("--vqa", "data.vqa", "VQA questions for the vqa task: a VQA-RAD JSON, a SLAKE folder or a JSON list"),
        Flag("--tasks", "eval.tasks", "evaluation at the end: retrieval zero_shot linear_probe vqa", many=True),
        Flag("--val-every", "train.val_every", "validate on held-out pairs every N steps (R@1, loss; log.csv)"),
        Flag("--keep-best", "train.keep_best", "keep <run>/model_best/ at the best validation R@1", switch="true"),
        Flag("--ckpt-every", "train.ckpt_every", "checkpoint every N steps"),
        Flag("--threads", "threads", "torch CPU threads (0: torch's default, all cores)"),
        Flag("--output-dir", "output_dir", "the run folder"),
        Flag("--max-steps", "train.max_steps", "optimizer steps"),
        Flag("--seed", "seed"),
        Flag("--image-model", "model.image_model", "hub id or local folder of a pretrained vision tower"),
        Flag("--text-model", "model.text_model", "hub id or local folder of a pretrained text tower (its tokenizer too)",
             implies=("tokenizer",)),
        Flag("--batch-size", "train.batch_size", "pairs per rank and micro-batch"),
        Flag("--grad-accum", "train.grad_accum", "micro-batches per optimizer step"),
        Flag("--amp", "train.amp", choices=("auto", "bf16", "off")),
        Flag("--device", "device", choices=_DEVICE),
        _PROGRESS,
    ),
    "evaluate": (
        Flag("--run-dir", "run_dir", "a recipes/uni_mlip_roco.py run folder"),
        Flag("--checkpoint", "checkpoint", "a checkpoints/step_* folder (default: the last one)"),
        Flag("--data-root", "data_root", "a table, an image folder or a ROCO folder to evaluate on (default: the run's "
             "own held-out pairs)"),
        Flag("--zeroshot-labels", "zeroshot_labels", "classes for zero-shot and the probe: a table's label column or "
             "'folder' (default: the run's data.label_column)"),
        Flag("--class-names", "class_names", "class names for zero-shot on labelled real data", many=True),
        Flag("--vqa-rad", "vqa_rad", "VQA-RAD JSON (VQA_RAD Dataset Public.json)"),
        Flag("--slake", "slake", "SLAKE folder with train.json, test.json and imgs/"),
        Flag("--tasks", "eval.tasks", "retrieval zero_shot linear_probe vqa", many=True),
        Flag("--output", "output", "where to write the metrics JSON (default <run-dir>/eval.json)"),
        Flag("--device", "device", choices=_DEVICE),
        Flag("--seed", "eval.seed"),
        _PROGRESS,
    ),
    "finetune_vqa": (
        Flag("--run-dir", "run_dir", "a recipes/uni_mlip_roco.py run folder"),
        Flag("--checkpoint", "checkpoint", "a checkpoints/step_* folder (default: the last one)"),
        Flag("--vqa-rad", "vqa_rad", "VQA-RAD JSON; freeform/para questions train, test_* questions test"),
        Flag("--slake", "slake", "SLAKE folder (train.json, test.json, imgs/); English questions"),
        Flag("--output-dir", "output_dir", "default <run-dir>/vqa_<source>"),
        Flag("--epochs", "epochs"),
        Flag("--max-steps", "max_steps"),
        Flag("--batch-size", "batch_size"),
        Flag("--lr", "lr", "backbone learning rate"),
        Flag("--head-lr", "head_lr"),
        Flag("--min-answer-count", "min_answer_count", "answers seen fewer times in training are not classes"),
        Flag("--train-limit", "train_limit", "at most this many training questions"),
        Flag("--seed", "seed"),
        Flag("--device", "device", choices=_DEVICE),
        _PROGRESS,
    ),
    "ablation": (
        Flag("--variants", "variants", "uni-mlip clip clip-walltime +itc-feature +uni-modal +fused (no-<term>: "
             "leave-one-out)", many=True),
        Flag("--sizes", "sizes", "training-set sizes (the first N pairs of the pool)", many=True),
        Flag("--seeds", "seeds", many=True),
        Flag("--scale", "scale", "recipe (recipes/configs/default.yaml) or shortened (ablation.yaml)",
             choices=("recipe", "shortened")),
        Flag("--max-steps", "max_steps", "training steps per cell (default: the training config's)"),
        Flag("--output-dir", "output_dir", "run folders"),
        Flag("--cells-dir", "cells_dir", "finished cells, one JSON each"),
        Flag("--results-dir", "results_dir", "where ablation.md/.json/.png are written"),
        Flag("--only-size", "only_size", "run only these sizes", many=True),
        Flag("--only-variant", "only_variant", "run only these variants", many=True),
        Flag("--max-cells", "max_cells", "run at most N unfinished cells in this call"),
        Flag("--report", "report", "only aggregate the finished cells (missing ones marked)", switch="true"),
        Flag("--plan", "plan", "print the grid, the finished cells and the estimated time; run nothing",
             switch="true"),
        Flag("--train-set", "train_set", "training-recipe override for every run, KEY=VALUE (repeatable)",
             repeat="list"),
        Flag("--eval-set", "eval", "evaluation override, KEY=VALUE (repeatable)", repeat="section"),
        Flag("--reevaluate", "reevaluate", "evaluate trained runs again", switch="true"),
        Flag("--note", "note", "appended to the table header"),
        Flag("--lanes", "lanes", "cells run at once, each in its own process (threads: CPU count // lanes)"),
        Flag("--lane-child", "lane_child", "internal: set on the processes --lanes starts", switch="true"),
        _PROGRESS,
    ),
}


@dataclass
class ParsedArgs:
    """What :func:`parse_recipe_args` read: the config file, the overrides, implied overrides and argparse's namespace.

    ``implied`` are applied after ``overrides`` for a fresh run only (a resumed run keeps its saved values).

    Example:
        >>> parse_recipe_args("finetune_vqa", ["--config", "c.yaml", "--epochs", "3"]).config
        'c.yaml'
    """

    config: str | None
    overrides: list[str]
    implied: list[str]
    namespace: argparse.Namespace


def _flow(values: Sequence[str]) -> str:
    return yaml.safe_dump(list(values), default_flow_style=True, width=10**9).strip()


def parse_recipe_args(recipe: str, argv: Sequence[str] | None, *, description: str = "",
                      extra: Sequence[tuple[Sequence[str], dict[str, Any]]] = ()) -> ParsedArgs:
    """Parse a recipe's command line into ``--config``, overrides (positional first, then flags) and implied keys.

    ``extra`` adds recipe-specific options that are not config keys, as ``(names, argparse kwargs)``
    (the training recipe's ``--resume`` / ``--resume-from``); they are in ``namespace``.

    Example:
        >>> p = parse_recipe_args("uni_mlip_roco", ["train.lr=3e-4", "--max-steps", "50", "--no-progress",
        ...                                         "--text-model", "bert/tiny"])
        >>> p.overrides
        ['train.lr=3e-4', 'train.max_steps=50', 'model.text_model=bert/tiny', 'progress=false']
        >>> p.implied
        ['tokenizer=bert/tiny']
        >>> parse_recipe_args("evaluate", ["--tasks", "retrieval", "vqa", "--run-dir", "r"]).overrides
        ['run_dir=r', 'eval.tasks=[retrieval, vqa]']
        >>> parse_recipe_args("uni_mlip_roco", ["--tasks", "retrieval", "train.lr=1"]).overrides
        ['train.lr=1', 'eval.tasks=[retrieval]']
        >>> parse_recipe_args("ablation", ["--eval-set", "vqa_epochs=1", "--train-set", "train.lr=1"]).overrides
        ['train_set=[train.lr=1]', 'eval.vqa_epochs=1']
    """
    if recipe not in FLAGS:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(FLAGS)}")
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides key.sub=value (after --config)")
    p.add_argument("--config", help="YAML file with any subset of the config")
    flags = FLAGS[recipe]
    for f in flags:
        kw: dict[str, Any] = {"help": (f.help + f" (= {f.key})").strip(), "dest": f.dest}
        if f.switch is not None:
            kw["action"] = "store_true"
        elif f.repeat is not None:
            kw.update(action="append", metavar="KEY=VALUE" if f.repeat == "section" else "VALUE")
        elif f.many:
            kw["nargs"] = "+"
        if f.choices:
            kw["choices"] = list(f.choices)
        p.add_argument(f.flag, **kw)
    for names, kw in extra:
        p.add_argument(*names, **kw)
    args = p.parse_intermixed_args(list(argv) if argv is not None else None)
    for f in flags:  # `--tasks retrieval train.lr=1`: a KEY=VALUE after a list flag is an override, not a value
        v = getattr(args, f.dest)
        if f.many and isinstance(v, list):
            setattr(args, f.dest, [x for x in v if "=" not in x])
            args.overrides += [x for x in v if "=" in x]
            if not getattr(args, f.dest):
                p.error(f"{f.flag} needs at least one value")
    for item in args.overrides:
        if "=" not in item:
            p.error(f"{item!r} is not a key=value override (options start with --; see --help)")
    overrides = list(args.overrides)
    implied: list[str] = []
    for f in flags:
        v = getattr(args, f.dest)
        if v is None or v is False or v == []:
            continue
        if f.switch is not None:
            overrides.append(f"{f.key}={f.switch}")
        elif f.repeat == "section":
            for kv in v:
                if "=" not in kv:
                    p.error(f"{f.flag} expects KEY=VALUE, got {kv!r}")
                overrides.append(f"{f.key}.{kv}")
        elif f.repeat == "list" or f.many:
            overrides.append(f"{f.key}={_flow(v)}")
        else:
            overrides.append(f"{f.key}={v}")
            for key in f.implies:
                if not any(o.split("=", 1)[0].strip() == key for o in overrides):
                    implied.append(f"{key}={v}")
    return ParsedArgs(args.config, overrides, implied, args)
