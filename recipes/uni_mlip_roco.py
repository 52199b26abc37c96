"""Uni-Mlip pre-training on ROCO (or the embedded synthetic benchmark), end to end, in one readable file.

Uni-Mlip (Bawazir, Wu, Li, BMVC 2024, arXiv 2411.15207): a CLIP-style image/text
model trained with cross-modal (ITC), uni-modal (image NT-Xent or SimSiam, text
SimCSE) and fused-modal (ITM with hard negatives, image-conditioned MLM)
self-supervision, at the data level (medical augmentations, caption
augmentation, laterality-aware flips) and the feature level (dropout, FLIP
token keeping). Every term is on by default. The pieces live in
``unimlip_kit.train``; this file is the loop, top to bottom.

Run it::

    python recipes/uni_mlip_roco.py                       # synthetic benchmark, tiny model, CPU, < 10 min
    python recipes/uni_mlip_roco.py --data-root pairs.csv --image-column file --caption-column text \
        --zeroshot-labels diagnosis --val-every 100 --keep-best     # your own table: 10% held out, seeded
    python recipes/uni_mlip_roco.py --data-root scans/ --zeroshot-labels folder   # images + .txt captions, class folders
    python recipes/uni_mlip_roco.py --config recipes/configs/tiny.yaml --output-dir runs/tiny   # seconds
    python recipes/uni_mlip_roco.py --max-steps 50 --output-dir runs/quick
    python recipes/uni_mlip_roco.py --resume --output-dir runs/quick          # continue as saved in its config.yaml
    python recipes/uni_mlip_roco.py --resume --output-dir runs/quick train.max_steps=100   # extend it
    python recipes/uni_mlip_roco.py --resume-from runs/quick/checkpoints/step_0000050
    python recipes/uni_mlip_roco.py --config my.yaml train.lr=3e-4 loss.weights.itm=0.5 train.loggers=[csv,tensorboard]
    python recipes/uni_mlip_roco.py --data-root /data/roco --image-model google/vit-base-patch16-224-in21k \\
        --text-model microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract --batch-size 64 --amp bf16
    torchrun --nproc_per_node 2 recipes/uni_mlip_roco.py --max-steps 20        # DDP (gloo on CPU, NCCL on GPU)
    python recipes/uni_mlip_roco.py --data-root /data/shards data.eval_root=/data/roco \\
        --batch-size 64 --grad-accum 16 model.gradient_checkpointing=true   # shards, gradient-cached batch of 1024

Every key of ``recipes/configs/default.yaml`` can be set in a ``--config`` file or as ``key.sub=value``;
the flags are shorthands (``unimlip_kit.train.FLAGS``). ``--resume`` continues the run folder's own
``config.yaml``: only overrides that do not change the training are accepted (more steps, logging,
checkpoint cadence, workers, device, evaluation), any other is refused naming the key.

The run folder (``output_dir``, default ``runs/uni_mlip_roco``) receives ``config.yaml``, ``tokenizer/``,
``checkpoints/step_*`` (``model.safetensors`` + ``state.pt`` with optimizer, scheduler, RNG and data
position), ``log.csv`` (one row per logged step, one column per term, ``val_*`` on validated steps), ``loss_curves.png``
(one panel per term), ``metrics.json``, ``summary.md``, ``model/`` (``UniMlipModel.from_pretrained``) and, with
``--keep-best``, ``model_best/``; it can be moved.

Reproducibility: every random stream of step ``s`` (data order, image and caption augmentation, token
masking, hard negatives, token keeping, dropout) is derived from ``(seed, s, micro-batch, rank)``, so a
run killed and resumed with ``--resume`` ends with exactly the metrics of an uninterrupted run.

Faults (``unimlip_kit.train.faults``): SIGTERM or SIGINT stops the run after the current step with a
checkpoint (every rank at the same step) and exit code 143 / 130, so ``--resume`` loses nothing; a second
run on the same ``--output-dir`` stops at once naming the holder's pid and host; ``train.ckpt_every_minutes``
checkpoints on a clock as well as every ``train.ckpt_every`` steps.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from unimlip_kit.data import SkipCounter, StepStream, describe_source
from unimlip_kit.distributed import get_rank, get_world_size, is_distributed
from unimlip_kit.eval import format_table
from unimlip_kit.losses import DEFAULT_WEIGHTS, UniMlipLoss
from unimlip_kit.models.hub import Preprocessing
from unimlip_kit.train import (BatchMaker, Loggers, NonFiniteLossError, RecipeConfig, StepOutput, TrainParts,
                               Validation, build_optimizer, build_run_model, evaluate_run,
                               find_checkpoint, load_recipe_config, load_run_data, load_run_tokenizer, load_run_vqa, log0,
                               parse_recipe_args, plot_losses, prepare_tokenizer, resolve_warmup, restore_checkpoint,
                               resume_config, save_backbones, save_checkpoint, save_run_config, schedule_notes,
                               setup_distributed, summary_table, train_step, use_bf16, write_csv)
from unimlip_kit.train.faults import Preemption, RunLock, check_run_layout, exit_code_for
from unimlip_kit.utils import config_to_dict, derive_seed, run_metadata, save_json, seed_everything
from unimlip_kit.utils.io import atomic_write

RESUME = [(("--resume",), {"action": "store_true", "help": "continue the run in --output-dir from its last checkpoint"}),
          (("--resume-from",), {"metavar": "PATH", "help": "continue from this checkpoints/step_* folder (or run folder)"})]


def parse_args(argv: list[str] | None) -> tuple[RecipeConfig, Path | None, bool]:
    """The run's config, the checkpoint to resume from (``None``: from step 0) and whether the run is resumed."""
    p = parse_recipe_args("uni_mlip_roco", argv, description=__doc__.split("\n\n")[0], extra=RESUME)
    resume_from = p.namespace.resume_from
    if not (p.namespace.resume or resume_from):
        return load_recipe_config(p.config, p.overrides + p.implied), None, False
    if resume_from and (Path(resume_from) / "state.pt").is_file():  # a checkpoint folder: <run>/checkpoints/step_*
        run_dir, ckpt = Path(resume_from).resolve().parents[1], Path(resume_from)
    else:
        run_dir = Path(resume_from) if resume_from else Path(load_recipe_config(p.config, p.overrides).output_dir)
        ckpt = None
    if not (run_dir / "config.yaml").is_file():
        if resume_from:
            raise FileNotFoundError(f"--resume-from {resume_from}: {run_dir} is not a run folder (no config.yaml)")
        log0(f"[resume] no run in {run_dir}; starting from scratch")
        return load_recipe_config(p.config, p.overrides + p.implied), None, False
    cfg, changed = resume_config(run_dir, p.overrides, p.config)  # refuses a change that would alter the run
    for key, (old, new) in changed.items():
        log0(f"[resume] {key}: {old!r} -> {new!r}")
    ckpt = ckpt or find_checkpoint(run_dir)
    if ckpt is None:
        log0(f"[resume] no checkpoint in {run_dir / 'checkpoints'}; starting from scratch with its config.yaml")
    return cfg, ckpt, True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, ckpt, resuming = parse_args(argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = setup_distributed(cfg.device)
    rank = get_rank()
    run_dir = Path(cfg.output_dir)
    check_run_layout(run_dir)  # e.g. `checkpoints` as a file fails now, not at the first checkpoint
    lock = RunLock(run_dir).acquire() if rank == 0 else None  # one run per folder; a dead holder's lock is taken over
    if lock is not None and lock.took_over:
        log0(f"[run] {run_dir} was locked by pid {lock.took_over.get('pid')} on {lock.took_over.get('host')}, "
             f"which is gone: taken over")
    try:
        with Preemption() as stop:
            return train_and_evaluate(cfg, ckpt, resuming, device, run_dir, stop)
    finally:
        if lock is not None:
            lock.release()


def train_and_evaluate(cfg: RecipeConfig, ckpt: Path | None, resuming: bool, device: torch.device, run_dir: Path,
                       stop: Preemption) -> dict[str, Any]:
    """The run: data, model, the training loop (stopping early on ``stop``'s signal), evaluation, the run folder."""
    rank, world = get_rank(), get_world_size()
    seed_everything(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # ---- data: records (skipped rows counted), tokenizer, datasets
    skips = SkipCounter()  # data.root: synthetic, a table, an image folder, ROCO or shards; data.eval_root: held out
    data = load_run_data(cfg, skips, rank, world)
    train_recs, eval_recs, loader = data.train_records, data.eval_records, data.loader
    vqa = load_run_vqa(cfg, skips) if rank == 0 else ([], [])  # the synthetic questions, or data.vqa's
    if rank == 0:  # built (WordPiece: trained on the captions) and saved in <run>/tokenizer; a resumed run reloads it
        tokenizer = prepare_tokenizer(cfg, [r.caption for r in train_recs], run_dir, reuse=resuming)
    if is_distributed():
        dist.barrier()
    if rank > 0:
        tokenizer = load_run_tokenizer(run_dir)  # the copy rank 0 saved: the exact same vocabulary
    cfg.model = dataclasses.replace(cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                    mask_token_id=tokenizer.mask_token_id,
                                    special_token_ids=sorted(set(tokenizer.all_special_ids)))
    if len(loader) == 0:
        raise ValueError(f"{len(train_recs)} training pairs make no full batch of {cfg.train.batch_size} per rank "
                         f"(world size {world}); lower train.batch_size")
    source = f"{cfg.data.root} ({describe_source(data.info['source'])})" if cfg.data.root else "the synthetic benchmark"
    log0(f"[data] {len(train_recs)} train / {len(eval_recs)} held-out pairs from {source}; vocab {len(tokenizer)}; "
         f"world size {world}; device {device}")
    if data.info.get("validation"):
        log0(f"[data] evaluation pairs: {data.info['validation']}")
    if data.class_names:
        log0(f"[data] {len(data.class_names)} classes ({cfg.data.label_column}): {', '.join(data.class_names[:8])}"
             f"{', ...' if len(data.class_names) > 8 else ''}")
    if skips.total:
        log0(f"[data] {skips.summary()}")
    if data.eval_skipped:
        log0(f"[data] evaluation skipped: {data.eval_skipped}")
    if cfg.train.warmup_steps is None:  # 5% of max_steps, at most 50; saved resolved, so extending keeps it
        cfg.train = dataclasses.replace(cfg.train, warmup_steps=resolve_warmup(cfg.train))
    log0(f"[schedule] {cfg.train.max_steps} steps, warm-up {cfg.train.warmup_steps}, cosine to "
         f"{cfg.train.min_lr_ratio:g} x lr {cfg.train.lr:g}")
    for note in schedule_notes(cfg.train):
        log0(f"[schedule] note: {note}")

    # ---- model, loss, optimizer, schedule (a resumed run rebuilds its towers from the run folder alone)
    if cfg.loss.itc_loss == "siglip" and cfg.model.logit_bias_init is None:  # SigLIP's bias, started at -10
        cfg.model = dataclasses.replace(cfg.model, logit_bias_init=-10.0)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_run_model(cfg.model, run_dir if ckpt is not None else None).to(device)
    if rank == 0:
        save_run_config(cfg, run_dir)
        save_backbones(model, run_dir)
    loss_fn = UniMlipLoss(cfg.loss.weights, image_ssl=cfg.loss.image_ssl, itc_loss=cfg.loss.itc_loss,
                          image_temperature=cfg.loss.image_temperature, text_temperature=cfg.loss.text_temperature)
    terms = loss_fn.enabled_terms
    started: list[float] = []  # the training clock, started at the first step (for train.max_seconds)

    def elapsed() -> float:  # training seconds on rank 0's clock: every rank gets the same lr and stops at the same step
        spent = time.time() - started[0] - validation.seconds if started else 0.0  # validating is not training
        c = torch.tensor([spent], dtype=torch.float64, device=device)
        if is_distributed():
            dist.broadcast(c, 0)
        return float(c)

    # warm-up + cosine over max_steps, or over the time budget train.max_seconds when that ends first (lr_multiplier)
    opt, sched = build_optimizer(model, cfg.train, clock=elapsed)
    n_params = sum(p.numel() for p in model.parameters())
    log0(f"[model] {n_params / 1e6:.2f} M parameters; terms {terms}")

    # ---- resume
    step, history = 0, []
    used: set[str] = set()  # ids of the training pairs that entered a usable micro-batch (this rank)
    stream = StepStream(loader)
    if ckpt is not None:
        state = restore_checkpoint(ckpt, model, opt, sched, device)
        step, history = int(state["step"]), list(state["history"])
        used.update(state.get("used_pairs", []))
        stream = StepStream(loader, state["data"]["epoch"], state["data"]["batches_done"])
        for reason, ids in state["skipped"].items():
            for item_id, detail in ids.items():
                skips.add(item_id, reason, detail)
        log0(f"[resume] from {ckpt} at step {step}")

    train_model: nn.Module = model
    if is_distributed():
        # With a term switched off its heads get no gradient; DDP must then look for unused parameters.
        unused = len(terms) < len(DEFAULT_WEIGHTS) or (cfg.model.image_ssl_predictor and cfg.loss.image_ssl != "simsiam")
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    maker = BatchMaker(cfg, tokenizer, device)
    parts = TrainParts(model, loss_fn, maker, opt, sched, seed=cfg.seed, device=device, grad_accum=cfg.train.grad_accum,
                       grad_clip=cfg.train.grad_clip, bf16=use_bf16(cfg.train.amp, device), rank=rank, world_size=world,
                       train_model=train_model, accumulation=cfg.train.accumulation)
    loggers = Loggers(cfg.train.loggers if rank == 0 else [], run_dir, config=config_to_dict(cfg),
                      project=cfg.train.wandb_project)
    preprocessing = Preprocessing.from_config(cfg.model)
    validation = Validation(cfg, (data.val_records or []) if rank == 0 else [], history=history,
                            run_dir=run_dir if rank == 0 else None, resumed=ckpt is not None,
                            save_best=lambda folder: model.save_pretrained(folder, tokenizer=tokenizer,
                                                                           preprocessing=preprocessing))
    for line in validation.notes(data.info.get("validated_on", "")):
        log0(line)

    # ---- train
    model.train()
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    t_train, pairs_seen = time.time(), 0
    started.append(t_train)
    budget = cfg.train.max_seconds  # wall-time budget (None: max_steps only)

    def close_early() -> None:
        """Stopping before the evaluation (a signal, a NaN): close what is open; wait for rank 0's checkpoint."""
        if bar is not None:
            bar.close()
        loggers.close()
        if is_distributed():
            dist.barrier()

    every_minutes, t_ckpt = cfg.train.ckpt_every_minutes, time.time()
    nonfinite_in_a_row, nonfinite_skipped = 0, []
    while step < cfg.train.max_steps:
        try:
            out = train_step(parts, step, stream.next, on_batch=skips.update_from_batch)
            nonfinite_in_a_row = 0
        except NonFiniteLossError as err:  # the weights were not updated; every rank raised at the same step
            nonfinite_in_a_row += 1
            if cfg.train.on_nonfinite == "stop" or nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                why = ("train.on_nonfinite=stop" if cfg.train.on_nonfinite == "stop" else
                       f"{nonfinite_in_a_row} non-finite steps in a row (train.max_nonfinite_steps)")
                saved = None
                if rank == 0 and used:  # the last good weights (those of step `step`), never as model/
                    saved = save_checkpoint(run_dir, step, model, opt, sched, stream, skips, history,
                                            cfg.train.keep_checkpoints, used)
                log0(f"[non-finite] {err}. Stopped ({why}); the weights of step {step} are in "
                     f"{saved or find_checkpoint(run_dir) or 'no checkpoint'}; no model/ was written. A lower "
                     f"train.lr, train.grad_clip or warm-up, or train.on_nonfinite=skip, may help")
                close_early()
                raise
            nonfinite_skipped.append(err.step)
            sched.step()  # the schedule follows the step count; the optimizer did not step
            log0(f"[non-finite] {err}: step skipped ({nonfinite_in_a_row} in a row, {len(nonfinite_skipped)} in all)")
            out = StepOutput()
        pairs_seen += out.pairs
        used.update(out.ids)
        step += 1
        last = step == cfg.train.max_steps or (budget is not None and elapsed() >= budget)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{out.losses.get('total', float('nan')):.3f}")
        val = validation(model, maker, step, skips) if validation.due(step, last) else {}
        if val:
            log0(f"[val] step {step}: R@1 i2t {val['val_R@1_i2t']:.3f} t2i {val['val_R@1_t2i']:.3f}, "
                 f"itc {val['val_itc']:.3f}{' (best)' if val['val_R@1'] >= validation.best else ''}")
        if (out.losses and (step % cfg.train.log_every == 0 or last)) or val:  # no losses: no usable batch
            row = {"step": step, "lr": sched.get_last_lr()[0], "logit_scale": float(model.logit_scale().detach()),
                   **out.losses, **val}
            if model.logit_bias is not None:
                row["logit_bias"] = float(model.logit_bias().detach())
            history.append(row)
            loggers.log(row)
        # every rank agrees on a signal any of them got and on rank 0's clock for timed checkpoints
        signum, timed = stop.agreed(device, every_minutes is not None and time.time() - t_ckpt >= 60 * every_minutes)
        checkpoint_now = step % cfg.train.ckpt_every == 0 or last or timed or signum is not None
        if not used and checkpoint_now:
            raise RuntimeError(f"no usable training batch in {step} steps (every micro-batch had fewer than 2 readable "
                               f"pairs): {skips.summary()}; nothing was saved")
        if rank == 0 and checkpoint_now:
            saved = save_checkpoint(run_dir, step, model, opt, sched, stream, skips, history, cfg.train.keep_checkpoints,
                                    used)
            t_ckpt = time.time()
        if signum is not None:
            log0(f"[preempted] {signal.Signals(signum).name}: stopped after step {step} of {cfg.train.max_steps}; "
                 f"checkpoint {saved if rank == 0 else 'written by rank 0'}; continue with --resume "
                 f"--output-dir {run_dir}")
            close_early()
            if is_distributed():
                dist.destroy_process_group()
            raise SystemExit(exit_code_for(signum))
        if last:
            break
    stop.phase = "eval"  # the last step is checkpointed: a signal from here on stops at once
    if bar is not None:
        bar.close()
    train_wall = time.time() - t_train
    if is_distributed():  # every rank decoded its own shard: merge what they skipped and which pairs they used
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (skips.items(), sorted(used)))
        for items, ids_used in gathered:
            used.update(ids_used)
            for reason, ids in items.items():
                for item_id, detail in ids.items():
                    skips.add(item_id, reason, detail)

    # ---- evaluate and report (rank 0)
    metrics: dict[str, Any] = {}
    if rank == 0:
        t_eval = time.time()
        evaluation = evaluate_run(model, cfg, maker, data.probe_records, eval_recs, data.eval_dataset, vqa, device, skips,
                                  skip_reason=data.eval_skipped, class_names=data.class_names)
        evaluation["seconds"] = time.time() - t_eval
        metrics = {
            "retrieval": evaluation.get("retrieval", {}),
            "eval": evaluation,
            "data": {"train_pairs": len(used),
                     "train_pairs_available": len(train_recs) - sum(1 for r in train_recs if r.id in skips),
                     "eval_pairs": evaluation.get("eval_images", 0), "skipped": skips.total,
                     "skipped_detail": skips.to_dict(), "source": data.info.get("source"),
                     "validation": data.info.get("validation"), "class_names": data.class_names,
                     "skipped_while_converting": data.info.get("skipped_while_converting", 0)},
            "train": {"steps": step, "nonfinite_skipped_steps": nonfinite_skipped, "wall_s": train_wall,
                      "pairs_per_s_this_session": pairs_seen / max(train_wall, 1e-9),
                      "terms": terms, "parameters": n_params, "world_size": world, "device": str(device),
                      "final_losses": history[-1] if history else {},
                      "warmup_steps": cfg.train.warmup_steps, "val_seconds": validation.seconds,
                      "best_val_R@1": validation.best if validation.best > float("-inf") else None},
            "total_wall_s": time.time() - t_start,
            "meta": run_metadata(),
        }
        save_json(run_dir / "metrics.json", metrics)
        # the trained model as a self-contained Hugging Face folder: UniMlipModel.from_pretrained(run_dir / "model")
        model.save_pretrained(run_dir / "model", tokenizer=tokenizer, preprocessing=preprocessing)
        if history and "csv" in cfg.train.loggers:
            write_csv(history, run_dir / "log.csv")
            plot_losses(history, run_dir / "loss_curves.png")
        atomic_write(run_dir / "summary.md", summary_table(metrics) + "\n")
        r = metrics["retrieval"]
        loggers.summary({f"retrieval/{d}_R@1": r[d]["R@1"] for d in ("i2t", "t2i") if d in r})
        print("\n" + format_table(evaluation) + "\n" + skips.summary(), flush=True)
        print(f"[done] run folder: {run_dir}", flush=True)
    loggers.close()
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
