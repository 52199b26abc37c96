"""recipes/ablation.py: the grid, the statistics against hand computations, resuming cell by cell, the time budget."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from recipes import ablation, uni_mlip_roco
from unimlip_kit.train import parse_recipe_args
from recipes.ablation import BASELINE, FLOOR, FULL, WALLTIME, AblationConfig, Cell

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"


# ------------------------------------------------------------------ statistics against hand computations


def test_paired_interval_matches_a_hand_computed_t_interval():
    # d = (0.02, 0.05, 0.08): mean 0.05, sd 0.03, n 3, t_{0.975,2} = 4.303: half-width 4.303 * 0.03 / sqrt(3) = 0.07453
    r = ablation.paired_interval([0.02, 0.05, 0.08])
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.05)
    assert r["lo"] == pytest.approx(0.05 - 0.07453, abs=2e-5) and r["hi"] == pytest.approx(0.05 + 0.07453, abs=2e-5)
    one = ablation.paired_interval([0.3, float("nan")])  # one difference: no interval
    assert one["n"] == 1 and one["mean"] == 0.3 and math.isnan(one["lo"]) and math.isnan(one["hi"])


def test_t_table_equals_scipy_and_is_used_without_it(monkeypatch):
    stats = pytest.importorskip("scipy.stats")
    for df, t in enumerate(ablation.T975, start=1):
        assert t == pytest.approx(float(stats.t.ppf(0.975, df)), abs=6e-4), df
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails: the table answers
    assert ablation.t_quantile_975(2) == 4.303 and ablation.t_quantile_975(30) == 2.042
    with pytest.raises(ValueError, match="df <= 30"):
        ablation.t_quantile_975(31)
    with pytest.raises(ValueError, match="at least 2 paired seeds"):
        ablation.t_quantile_975(0)


def test_aggregate_against_a_hand_computed_example():
    vals = {"clip": {0: 0.10, 1: 0.20, 2: 0.30}, "b": {0: 0.15, 1: 0.20, 2: 0.40}, "c": {0: 0.30, 2: 0.50}}
    cells = [{"size": 100, "variant": v, "seed": s, "metrics": {"acc": x, "t": 10.0 * (s + 1)}}
             for v, by in vals.items() for s, x in by.items()]
    expected = [Cell(100, v, s) for v in ("clip", "b", "c") for s in (0, 1, 2)] + [Cell(200, "clip", 0)]
    a = ablation.aggregate(cells, expected, metrics=["acc", "t"])
    clip = a["summary"]["100"]["clip"]["acc"]
    assert (clip["mean"], clip["n"]) == (pytest.approx(0.2), 3) and clip["std"] == pytest.approx(0.1)
    assert clip["values"] == {"0": 0.10, "1": 0.20, "2": 0.30}
    # b - clip = (0.05, 0.00, 0.10): mean 0.05, sd 0.05, half-width 4.303 * 0.05 / sqrt(3) = 0.12422
    pb = a["paired"]["100"]["b"]["acc"]
    assert pb["n"] == 3 and pb["mean"] == pytest.approx(0.05)
    assert (pb["lo"], pb["hi"]) == (pytest.approx(0.05 - 0.12422, abs=5e-5), pytest.approx(0.05 + 0.12422, abs=5e-5))
    # c has seeds 0 and 2 only: pairs (0.20, 0.20): mean 0.2, sd 0, interval [0.2, 0.2] with t_{0.975,1}
    pc = a["paired"]["100"]["c"]["acc"]
    assert pc["n"] == 2 and pc["mean"] == pytest.approx(0.2) and pc["lo"] == pytest.approx(0.2) == pc["hi"]
    assert a["paired"]["100"]["b"]["t"]["mean"] == 0.0 and "clip" not in a["paired"]["100"]
    assert a["missing"] == [[100, "c", 1], [200, "clip", 0]] and not a["complete"]
    text = ablation.markdown_report(a, "hdr", n_expected=3, metrics=["acc"])
    assert "| c | 0.400 ± 0.141 (2/3) |" in text and "| b | +0.050 [-0.074, +0.174] |" in text
    assert "| c | +0.200 [+0.200, +0.200] ▲ |" in text and "2 cells missing" in text


# ------------------------------------------------------------------ the grid


def test_the_default_grid_is_72_cells_with_the_full_objective_first():
    cells = ablation.grid(AblationConfig())
    assert len(cells) == (6 * 3 + 6) * 3 == 72
    assert [c for c in cells if c.variant.startswith("no-")] == [c for c in cells if c.size == 1000 and
                                                                 c.variant.startswith("no-")]
    for seed in (0, 1, 2):
        for size in (250, 1000, 4000):
            block = [c.variant for c in cells if (c.size, c.seed) == (size, seed)]
            assert block[0] == FULL and block.index(FULL) < block.index(WALLTIME)
    with pytest.raises(ValueError, match="unknown variant 'clipp'"):
        ablation.grid(AblationConfig(variants=["clipp"]))
    # a key=value after a list flag is an override, not a list value (argparse alone would swallow it)
    parsed = parse_recipe_args("ablation", ["--plan", "--variants", FULL, "baseline=clip-aug"])
    assert parsed.overrides == ["baseline=clip-aug", f"variants=[{FULL}]", "plan=true"]
    # the augmented-CLIP control is asked for by name, and its cells train ITC on an augmented view 1
    assert "clip-aug" not in {c.variant for c in cells}
    control = ablation.grid(AblationConfig(variants=[FULL, BASELINE, "clip-aug"], sizes=[250], leave_one_out=False))
    assert [c.variant for c in control[:3]] == [FULL, BASELINE, "clip-aug"]
    cmd = ablation.train_command(AblationConfig(), control[2], Path("runs/x"))
    assert cmd[-1] == "augment.view1_strength=light" and "loss.weights.itc_feature=0.0" in cmd
    assert "augment.view1_strength=light" not in ablation.train_command(AblationConfig(), control[1], Path("runs/x"))
    with pytest.raises(ValueError, match="needs 'uni-mlip'"):
        ablation.grid(AblationConfig(variants=["clip", WALLTIME]))
    with pytest.raises(ValueError, match="pool_size=4000"):
        ablation.grid(AblationConfig(sizes=[8000]))


def test_every_size_keeps_one_pool_and_one_test_split():
    cmds = [ablation.train_command(AblationConfig(), Cell(n, "clip", 0), Path("r")) for n in (250, 4000)]
    for cmd, n in zip(cmds, (250, 4000)):
        assert "data.synthetic.n_train=4000" in cmd and f"data.limit_train={n}" in cmd
        assert not any(a.startswith(("data.synthetic.n_test", "data.synthetic.seed")) for a in cmd)
    walltime = ablation.train_command(AblationConfig(max_steps=100), Cell(250, WALLTIME, 0), Path("r"), budget_s=42.5)
    assert walltime[walltime.index("--max-steps") + 1] == "2000"
    # the warm-up of a 100-step cell (5%: 5 steps) x 20: the same share of the schedule as in the other cells
    assert "train.max_seconds=42.5" in walltime and "train.warmup_steps=100" in walltime
    at_recipe_scale = ablation.train_command(AblationConfig(), Cell(250, WALLTIME, 0), Path("r"), budget_s=42.5)
    assert "train.warmup_steps=1000" in at_recipe_scale  # 1000 steps: 50 x 20, as the stored cells ran


# ------------------------------------------------------------------ resuming cell by cell (fake cell runner)


def _fake_runner(calls):
    def run_cell(cfg, cell, run, *, budget_s, floor):
        calls.append((cell, budget_s, floor))
        base = {FULL: 0.5, BASELINE: 0.3}.get(cell.variant, 0.4) + 0.01 * cell.seed + cell.size / 1e4
        metrics = {name: base for name in ablation.EVAL_METRICS}
        metrics.update({"train s": 100.0 + cell.size + cell.seed if cell.variant == FULL else 30.0, "steps": 7.0})
        out = {"metrics": metrics, "train": {"wall_s": metrics["train s"], "steps": 7}, "command": ["fake"],
               "evaluation": {}}
        if floor:
            out["vqa_floor"] = {"accuracy": 0.25}
        return out
    return run_cell


def test_a_rerun_skips_finished_cells_and_max_cells_bounds_a_sitting(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(ablation, "run_cell", _fake_runner(calls))
    base = ["loo_sizes=[20]", "pool_size=20", "--sizes", "10", "20", "--seeds", "0", "1", "--max-steps", "7",
            "--cells-dir", str(tmp_path / "cells"), "--results-dir", str(tmp_path / "res"),
            "--output-dir", str(tmp_path / "runs"), "--no-progress"]
    total = (6 + 12) * 2
    out = ablation.main(base + ["--max-cells", "5"])
    assert len(calls) == 5 == out["cells_run"] and not out["aggregate"]["complete"]
    assert [c.variant for c, _, _ in calls] == [FULL, BASELINE, WALLTIME, "+itc-feature", "+uni-modal"]
    assert calls[2][1] == 110.0  # clip-walltime's budget: the full objective's training time of (10, seed 0)
    assert [f for _, _, f in calls] == [True, False, False, False, False]  # the VQA floor once per (size, seed)
    stored = json.loads((tmp_path / "cells" / "10" / WALLTIME / "seed0.json").read_text())
    assert stored["budget_s"] == 110.0 and stored["budget_binding"] is True and stored["metrics"]["steps"] == 7.0
    floor = json.loads((tmp_path / "cells" / "10" / FLOOR / "seed0.json").read_text())
    assert floor["metrics"] == {"VQA acc": 0.25}
    md = (tmp_path / "res" / "ablation.md").read_text()
    assert f"{total - 5} cells missing" in md and "(1/2)" in md

    # a clip-walltime cell whose full-objective cell is missing waits (nothing runs)
    calls.clear()
    ablation.main(base + ["--only-size", "20", "--only-variant", WALLTIME])
    assert calls == []

    # the next sitting runs only the rest, in order, and the report is complete
    out = ablation.main(base)
    assert len(calls) == total - 5 and Cell(10, FULL, 0) not in [c for c, _, _ in calls]
    assert out["aggregate"]["complete"] and out["cells_run"] == total - 5
    assert sorted({(c.size, c.seed) for c, _, f in calls if f}) == [(10, 1), (20, 0), (20, 1)]
    agg = out["aggregate"]
    assert set(agg["summary"]["20"]) == set(ablation.VARIANTS) | set(ablation.LEAVE_ONE_OUT) | {FLOOR}
    assert "no-itm" not in agg["summary"]["10"]
    # uni-mlip - clip = 0.2 on every seed: sd 0, interval [0.2, 0.2]
    p = agg["paired"]["10"][FULL]["i2t R@1"]
    assert p["mean"] == pytest.approx(0.2) and p["lo"] == pytest.approx(0.2) and p["n"] == 2
    # equal training time: uni-mlip - clip-walltime = 0.1 on every seed, in the JSON and the Markdown
    e = agg["paired_equal_time"]["10"][FULL]["i2t R@1"]
    assert e["mean"] == pytest.approx(0.1) and e["hi"] == pytest.approx(0.1) and set(agg["paired_equal_time"]["10"]) == {FULL}
    md = (tmp_path / "res" / "ablation.md").read_text()
    assert md.count("Equal training time: paired difference to clip-walltime") == 2  # one per size
    assert "| uni-mlip | +0.100 [+0.100, +0.100] ▲ |" in md
    # leave-one-out read as what each term adds: uni-mlip - no-<term> = 0.5 - 0.4 on every seed, at 20 pairs only
    terms = agg["paired_term"]
    assert list(terms) == ["20"] and set(terms["20"]) == {f"{FULL} − no-{t}" for t in ablation.ALL_TERMS}
    assert all(r["VQA acc"]["mean"] == pytest.approx(0.1) and r["VQA acc"]["n"] == 2 for r in terms["20"].values())
    assert md.count("Leave-one-out, what each term adds") == 1 and "| uni-mlip − no-mlm | +0.100 [+0.100, +0.100] ▲" in md
    saved = json.loads((tmp_path / "res" / "ablation.json").read_text())
    assert saved["command"].startswith("python recipes/ablation.py 'loo_sizes=[20]' pool_size=20 --sizes 10 20") and "commit" in saved
    assert (tmp_path / "res" / "ablation.png").stat().st_size > 1000

    # nothing left: a rerun runs nothing; --report aggregates the same numbers
    calls.clear()
    again = ablation.main(base)
    assert calls == [] and again["cells_run"] == 0
    rep = ablation.main(base + ["--report"])
    same = [json.dumps(r["aggregate"]["summary"], sort_keys=True) for r in (rep, again)]  # NaN-safe comparison
    assert same[0] == same[1] and "cells_run" not in rep

    # another baseline: every difference is to it (uni-mlip - +fused = 0.5 - 0.4 on every seed)
    other = ablation.main(base + ["--report", "baseline=+fused"])
    assert other["aggregate"]["paired"]["10"][FULL]["i2t R@1"]["mean"] == pytest.approx(0.1)
    assert "Paired difference to +fused over seeds" in (tmp_path / "res" / "ablation.md").read_text()
    with pytest.raises(ValueError, match="baseline 'clip-aug' is not among the variants"):
        ablation.main(base + ["--report", "baseline=clip-aug"])

    # other settings (more steps) do not mix with these cells: a run refuses, naming the key; a report leaves them out
    with pytest.raises(ValueError, match="max_steps"):
        ablation.main(base + ["--max-steps", "8"])
    assert ablation.main(base + ["--max-steps", "8", "--report"]) is None


class _FakeLane:
    """A lane process that finishes on its ``delay``-th poll by running the lane's command in-process."""

    def __init__(self, cmd, log, state, delay, fail):
        self.cmd, self.log, self.state, self.delay, self.fail, self.polls = cmd, log, state, delay, fail, 0
        state["running"] += 1
        state["max_running"] = max(state["max_running"], state["running"])
        state["started"].append(cmd)

    def poll(self):
        self.polls += 1
        if self.polls < self.delay:
            return None
        self.state["running"] -= 1
        if self.fail:
            return 3
        ablation.main(self.cmd[2:])  # the lane's own arguments through the real parser and the serial path
        return 0


def test_lanes_store_the_same_cells_as_one_process_and_respect_the_order(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(ablation, "run_cell", _fake_runner(calls))
    monkeypatch.setattr(ablation.time, "sleep", lambda s: None)
    common = ["loo_sizes=[20]", "pool_size=20", "--sizes", "10", "20", "--seeds", "0", "1", "--max-steps", "7",
              "--no-progress", "--only-variant", FULL, BASELINE, WALLTIME, "+fused"]

    def dirs(name):
        return ["--cells-dir", str(tmp_path / name / "cells"), "--results-dir", str(tmp_path / name / "res"),
                "--output-dir", str(tmp_path / name / "runs")]

    serial = ablation.main(common + dirs("serial"))
    serial_calls = list(calls)
    calls.clear()
    state = {"running": 0, "max_running": 0, "started": []}
    argv = common + dirs("lanes") + ["--lanes", "3"]
    launch = lambda cmd, env, log: _FakeLane(cmd, log, state, delay=2, fail=False)  # noqa: E731
    cfg = ablation.load_config(AblationConfig, None, ablation.parse_recipe_args("ablation", argv).overrides)
    todo = ablation.select(ablation.grid(cfg), cfg.only_size, cfg.only_variant)
    ran, failed = ablation.run_in_lanes(cfg, argv, todo, launch=launch)
    assert (ran, failed) == (len(serial_calls), []) == (16, [])
    assert state["max_running"] == 3
    # the same cells, budgets and floors as one process (only the order of starting differs)
    assert sorted(calls) == sorted(serial_calls)
    for c, _, _ in serial_calls:
        a = json.loads(ablation.cell_path(tmp_path / "serial" / "cells", c).read_text())
        b = json.loads(ablation.cell_path(tmp_path / "lanes" / "cells", c).read_text())
        assert (a["metrics"], a["budget_s"], a["settings"]) == (b["metrics"], b["budget_s"], b["settings"])
    # clip-walltime started only after its full-objective cell was stored (its budget is that cell's time)
    order = [(c.size, c.variant, c.seed) for c, _, _ in calls]
    for size, seed in [(10, 0), (10, 1), (20, 0), (20, 1)]:
        assert order.index((size, FULL, seed)) < order.index((size, WALLTIME, seed))
    assert sum(f for _, _, f in calls) == 4  # one VQA floor per (size, seed)
    assert all("--lane-child" in cmd and cmd.count("--max-cells") == 1 for cmd in state["started"])
    report = ablation.main(common + dirs("lanes") + ["--report"])
    assert json.dumps(report["aggregate"]["summary"], sort_keys=True) == json.dumps(serial["aggregate"]["summary"],
                                                                                   sort_keys=True)


def test_a_failed_lane_is_named_and_the_other_cells_are_stored(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(ablation, "run_cell", _fake_runner(calls))
    monkeypatch.setattr(ablation.time, "sleep", lambda s: None)
    argv = ["pool_size=20", "leave_one_out=false", "--sizes", "10", "--seeds", "0", "--max-steps", "7", "--no-progress", "--only-variant",
            FULL, BASELINE, WALLTIME, "--cells-dir", str(tmp_path / "cells"), "--output-dir", str(tmp_path / "runs"),
            "--lanes", "2"]
    state = {"running": 0, "max_running": 0, "started": []}
    launch = lambda cmd, env, log: _FakeLane(cmd, log, state, 1, fail="--only-variant" in cmd and  # noqa: E731
                                             cmd[cmd.index("--only-variant", len(argv)) + 1] == FULL)
    cfg = ablation.load_config(AblationConfig, None, ablation.parse_recipe_args("ablation", argv).overrides)
    ran, failed = ablation.run_in_lanes(cfg, argv, ablation.select(ablation.grid(cfg), [], cfg.only_variant),
                                        launch=launch)
    out = capsys.readouterr().out
    assert ran == 1 and failed == [str(tmp_path / "runs" / "logs" / f"10_{FULL}_seed0.log")]
    assert f"FAILED 10 {FULL} seed 0" in out and f"skip Cell(size=10, variant='{WALLTIME}'" in out
    assert [c.variant for c, _, _ in calls] == [BASELINE]


def test_plan_prints_the_estimate_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablation, "run_cell", lambda *a, **k: pytest.fail("--plan must not run a cell"))
    assert ablation.main(["--plan", "--cells-dir", str(tmp_path / "cells"), "guess_seconds_per_cell=100"]) is None
    out = capsys.readouterr().out
    assert "grid 72 cells (0 finished)" in out and "estimated 2.0 h" in out and "steps 1000" in out


# ------------------------------------------------------------------ the training wall-time budget


def test_max_seconds_stops_at_the_first_step_boundary_with_the_schedule_over_the_budget(tmp_path):
    cfg = ["--config", str(TINY), f"data.cache_dir={tmp_path / 'cache'}", "--max-steps", "50",
           "--output-dir", str(tmp_path / "run"), "train.max_seconds=1e-6", "eval.tasks=[retrieval]",
           "loss.weights.itm=0", "loss.weights.mlm=0", "train.ckpt_every=100"]
    m = uni_mlip_roco.main(cfg)
    assert m["train"]["steps"] == 1  # the budget is spent after the first step
    # the budget is spent, so the schedule's progress max(1/50, elapsed/budget) is 1: lr = lr * min_lr_ratio
    assert m["train"]["final_losses"]["lr"] == pytest.approx(1e-3 * 0.05)
    assert (tmp_path / "run" / "checkpoints" / "step_0000001" / "model.safetensors").is_file()  # saved as a last step
