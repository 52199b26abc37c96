"""Uni-Mlip pre-training as a library: what ``recipes/uni_mlip_roco.py`` (and the benchmarks, evaluation, fine-tuning
and ablation recipes) are built from.

* config: :class:`RecipeConfig` and its sections (:class:`DataConfig`, :class:`AugmentConfig`,
  :class:`LossConfig`, :class:`TrainConfig`; evaluation is :class:`unimlip_kit.eval.EvalConfig`);
* data-level views: :class:`BatchMaker` (flip, two medical views, caption EDA, tokens);
* optimisation: :func:`param_groups`, :func:`cosine_with_warmup`, :func:`build_optimizer` (shared with VQA
  fine-tuning), and :func:`train_step`, one optimizer step exactly as the recipe runs it;
* the run folder (:mod:`unimlip_kit.train.run`): config, tokenizer, checkpoints, resuming, :func:`load_run`;
* evaluation of a run (:func:`evaluate_run`, :func:`evaluate_run_folder`) and reporting
  (:func:`write_csv`, :func:`plot_losses`, :func:`summary_table`, :class:`Loggers`);
* the command line shared by every recipe (:func:`parse_recipe_args`, :data:`FLAGS`).

Needs the ``[train]`` extra (matplotlib) for the plots; TensorBoard and W&B logging need ``[tensorboard]``
and ``[wandb]``.
"""

from unimlip_kit.train.cli import FLAGS, Flag, ParsedArgs, parse_recipe_args
from unimlip_kit.train.config import LOGGERS, AugmentConfig, DataConfig, LossConfig, RecipeConfig, TrainConfig
from unimlip_kit.train.device import log0, resolve_device, setup_distributed
from unimlip_kit.train.evaluation import (BEST_MODEL, VAL_KEYS, RunData, RunPairs, Validation, evaluate_run, evaluate_run_folder, load_records,
                                         load_run_data, load_run_vqa, read_run_pairs, validate)
from unimlip_kit.train.optim import (build_optimizer, cosine_with_warmup, default_no_decay, lr_multiplier, param_groups,
                                     resolve_warmup, schedule_notes)
from unimlip_kit.train.report import Loggers, plot_losses, summary_table, write_csv
from unimlip_kit.train.run import (SAFE_RESUME_KEYS, CheckpointWriteError, CorruptCheckpointError, ResumeError,
                                   build_run_model, find_checkpoint, find_weights, verify_checkpoint,
                                   load_recipe_config, load_run, load_run_config, load_run_tokenizer, prepare_tokenizer,
                                   restore_checkpoint, resume_config, save_backbones, save_checkpoint, save_run_config)
from unimlip_kit.train.step import NonFiniteLossError, StepOutput, TrainParts, train_step, use_bf16
from unimlip_kit.train.views import VIEW_PRESETS, BatchMaker

__all__ = [
    "AugmentConfig",
    "BEST_MODEL",
    "BatchMaker",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "DataConfig",
    "FLAGS",
    "Flag",
    "LOGGERS",
    "Loggers",
    "LossConfig",
    "NonFiniteLossError",
    "ParsedArgs",
    "RecipeConfig",
    "ResumeError",
    "RunData",
    "RunPairs",
    "SAFE_RESUME_KEYS",
    "StepOutput",
    "TrainConfig",
    "TrainParts",
    "VAL_KEYS",
    "VIEW_PRESETS",
    "Validation",
    "build_optimizer",
    "build_run_model",
    "cosine_with_warmup",
    "default_no_decay",
    "evaluate_run",
    "evaluate_run_folder",
    "find_checkpoint",
    "find_weights",
    "load_recipe_config",
    "load_records",
    "load_run",
    "load_run_config",
    "load_run_data",
    "load_run_tokenizer",
    "load_run_vqa",
    "log0",
    "lr_multiplier",
    "param_groups",
    "parse_recipe_args",
    "plot_losses",
    "prepare_tokenizer",
    "read_run_pairs",
    "resolve_device",
    "resolve_warmup",
    "restore_checkpoint",
    "resume_config",
    "save_backbones",
    "save_checkpoint",
    "save_run_config",
    "schedule_notes",
    "setup_distributed",
    "summary_table",
    "train_step",
    "use_bf16",
    "validate",
    "verify_checkpoint",
    "write_csv",
]
