"""The analysis against independent references: Python's statistics module on the inserted values,
scipy's own Welch test on raw values, and the numbers printed in the autoencoder post."""

import hashlib
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis import cells, report, stats
from analysis.formats import latex_escape, to_latex, to_markdown
from analysis.tables import Table, fmt_mean_std
from db import ResultsDB

BASE = dict(task="classify", dataset="digits", model="convnet", lr=1e-3, epochs=2)


def add_run(db: ResultsDB, final: dict, *, norm="bn", bs=32, seed=0, status="completed",
            config=None, first: dict | None = None, **run) -> int:
    """A run with two epochs: `first` (default: final values + 1) then `final` {(split, name): v}."""
    spec = {**BASE, **run}
    cfg = {"task": {"name": spec["task"]}, "dataset": {"name": spec["dataset"]},
           "model": {"name": spec["model"]}, "norm": {"name": norm}, "bs": bs, "lr": spec["lr"],
           "seed": seed, "epochs": spec["epochs"], "threads": 1, "db": {"url": f"x{seed}"},
           **(config or {})}
    run_id = db.start_run(norm=norm, bs=bs, seed=seed, config=cfg, config_hash=f"{norm}{bs}{seed}",
                          **spec)
    db.log_epoch(run_id, 1, first or {k: v + 1 for k, v in final.items()})
    db.log_epoch(run_id, 2, final)
    if status != "running":
        db.finish(run_id, status, None if status == "completed" else f"{status} on purpose")
    return run_id


def run_report(tmp_path, db_path, *args) -> tuple[int, str]:
    out = tmp_path / "report"
    rc = report.main(["--db", f"sqlite:///{db_path}", "--out", str(out), *args])
    return rc, out


# Final values per (norm, bs): three seeds, chosen so every std lies in [0.01, 0.1) and is shown
# with 3 decimals.
ACC = {("none", 8): [0.50, 0.53, 0.58], ("none", 128): [0.61, 0.60, 0.65],
       ("bn", 8): [0.70, 0.74, 0.69], ("bn", 128): [0.81, 0.79, 0.83]}


@pytest.fixture
def grid_db(tmp_path):
    path = tmp_path / "grid.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        for (norm, bs), accs in ACC.items():
            for seed, acc in enumerate(accs):
                add_run(db, {("test", "acc"): acc, ("test", "loss"): 2 - acc, ("train", "loss"): 1 - acc},
                        norm=norm, bs=bs, seed=seed)
    return path


def test_table_numbers_equal_statistics_of_the_raw_rows(tmp_path, grid_db):
    rc, out = run_report(tmp_path, grid_db)
    assert rc == 0
    csv = pd.read_csv(out / "tables" / "final_metrics.csv")
    md = (out / "tables" / "classify-digits-convnet_final.md").read_text()
    for (norm, bs), accs in ACC.items():
        row = csv[(csv.norm == norm) & (csv.bs == bs) & (csv.split == "test") & (csv.name == "acc")]
        mean, std = statistics.mean(accs), statistics.stdev(accs)
        assert row["mean"].item() == pytest.approx(mean, abs=1e-12)
        assert row["std"].item() == pytest.approx(std, abs=1e-12)
        assert row["n"].item() == 3
        assert 0.01 <= std < 0.1
        assert f"{mean:.3f} ± {std:.3f} (3)" in md
    # The best accuracy per norm block is bolded: bs 128 for both norms here.
    assert f"**{statistics.mean(ACC['bn', 128]):.3f} ± " in md
    assert f"**{statistics.mean(ACC['bn', 8]):.3f} ± " not in md


def test_mixed_statuses_are_counted_and_listed_never_averaged(tmp_path):
    path = tmp_path / "mixed.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        for seed, acc in enumerate([0.6, 0.7]):
            add_run(db, {("test", "acc"): acc}, seed=seed)
        bad = [add_run(db, {("test", "acc"): 0.1}, seed=2, status="diverged"),
               add_run(db, {("test", "acc"): 0.0}, seed=3, status="failed"),
               add_run(db, {("test", "acc"): 0.05}, seed=4, status="running")]
        add_run(db, {("test", "acc"): 0.2}, norm="none", seed=0, status="failed")  # a cell of none
    rc, out = run_report(tmp_path, path)
    assert rc == 0
    csv = pd.read_csv(out / "tables" / "final_metrics.csv")
    [row] = csv[(csv.norm == "bn") & (csv.name == "acc")].itertuples()
    assert (row.mean, row.n) == (pytest.approx(statistics.mean([0.6, 0.7])), 2)
    assert row.excluded == "1 diverged, 1 failed, 1 running"
    md = (out / "tables" / "classify-digits-convnet_final.md").read_text()
    assert "1 diverged, 1 failed, 1 running" in md and "| 32 | 0.001 | – | 1 failed |" in md
    assert "No comparison with the baseline 'none'" in (out / "report.md").read_text()
    listed = pd.read_csv(out / "tables" / "runs_not_averaged.csv")
    assert sorted(listed["run_id"]) == sorted([*bad, 6])
    html = (out / "index.html").read_text()
    assert "Runs not averaged" in html and "diverged on purpose" in html


def test_one_seed_per_cell_shows_the_value_and_n(tmp_path):
    path = tmp_path / "one.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        add_run(db, {("test", "acc"): 0.5}, norm="none")
        add_run(db, {("test", "acc"): 0.75}, norm="bn")
        for seed, acc in ((1, 0.5), (2, 0.7)):  # a second cell, of two runs
            add_run(db, {("test", "acc"): acc}, norm="bn", bs=64, seed=seed)
    rc, out = run_report(tmp_path, path)
    assert rc == 0
    md = (out / "tables" / "classify-digits-convnet_final.md").read_text()
    assert "| 32 | 0.001 | **0.75 (1)** |" in md and "| 32 | 0.001 | 0.5 (1) |" in md
    assert f"| 0.60 ± {statistics.stdev([0.5, 0.7]):.2f} (2) |" in md  # n >= 2: mean ± std (n)
    assert "n/a" not in md and "± 0 " not in md
    assert "n<2" in (out / "report.md").read_text()  # Welch's test needs two runs per side
    csv = pd.read_csv(out / "tables" / "final_metrics.csv")  # the numbers stay numbers
    [row] = csv[(csv.norm == "bn") & (csv.bs == 32)].itertuples()
    assert (row.mean, row.n) == (0.75, 1) and math.isnan(row.std)
    assert fmt_mean_std(0.75, float("nan"), 1) == "0.75 (1)"
    assert fmt_mean_std(0.9583333, float("nan"), 1) == "0.9583 (1)"


def test_a_cell_of_runs_with_different_thread_counts_is_marked(tmp_path):
    path = tmp_path / "threads.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        for seed, threads in ((0, 1), (1, 2)):  # one cell: same settings, seeds 0 and 1
            add_run(db, {("test", "acc"): 0.6 + seed / 10}, norm="bn", seed=seed, threads=threads)
        for seed in (0, 1):
            add_run(db, {("test", "acc"): 0.5}, norm="none", seed=seed, threads=1)
        add_run(db, {("test", "acc"): 0.1}, norm="bn", seed=2, threads=4, status="failed")
        add_run(db, {("test", "acc"): 0.4}, norm="gn", seed=0, threads=2)  # older rows: no count
        add_run(db, {("test", "acc"): 0.4}, norm="gn", seed=1)
    rc, out = run_report(tmp_path, path)
    assert rc == 0
    md = (out / "tables" / "classify-digits-convnet_final.md").read_text()
    assert "| bs | lr | threads | test acc |" in md
    assert "| 32 | 0.001 | 1, 2 | 0.650 ± 0.071 (2) | 1 failed |" in md  # the failed run's 4 not counted
    assert "| 32 | 0.001 | 1 | 0.5 ± 0 (2) |" in md
    assert "| 32 | 0.001 | 2, not recorded | 0.4 ± 0 (2) |" in md
    assert "2 cells average runs of different CPU thread counts" in md
    assert "the same seed gives the same numbers only at the same thread count" in md
    csv = pd.read_csv(out / "tables" / "final_metrics.csv").set_index("norm")
    assert csv.loc["bn", "threads"] == "1, 2" and csv.loc["none", "threads"] == "1"
    assert csv["threads_mixed"].to_dict() == {"none": False, "bn": True, "gn": True}
    listed = pd.read_csv(out / "tables" / "runs_not_averaged.csv")
    assert listed[["seed", "status", "threads"]].values.tolist() == [[2, "failed", 4]]
    page = (out / "report.md").read_text()
    assert "- **CPU threads**: 1 (3 runs), 2 (2 runs), 4 (1 run), not recorded (1 run)" in page


def test_runs_of_one_thread_count_get_no_threads_column(tmp_path, grid_db):
    rc, out = run_report(tmp_path, grid_db)  # add_run records no count: NULL in every row
    md = (out / "tables" / "classify-digits-convnet_final.md").read_text()
    assert rc == 0 and "threads" not in md
    assert "- **CPU threads**: not recorded (every run)" in (out / "report.md").read_text()


def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, grid_db, capsys):
    for args, allowed in ((["--alpha", "5"], "0 < alpha < 1"), (["--alpha", "0"], "0 < alpha < 1"),
                          (["--alpha", "nan"], "0 < alpha < 1"), (["--alpha", "abc"], "0 < alpha < 1"),
                          (["--baseline", "nope"], "allowed: a norm of the selected runs: bn, none"),
                          (["--baseline", "none", "--norm", "bn"], "selected runs: bn)"),
                          (["--bogus"], "unrecognized arguments: --bogus")):
        try:
            rc = run_report(tmp_path, grid_db, *args)[0]
        except SystemExit as e:  # argparse's errors exit from parse_args
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2, args
        assert err.startswith("error: ") and err.count("\n") == 1 and allowed in err, err
        assert "usage:" not in err and "Traceback" not in err
        assert not (tmp_path / "report").exists()
    rc, out = run_report(tmp_path, grid_db, "--baseline", "bn", "--alpha", "0.01")
    assert rc == 0 and (out / "tables" / "classify-digits-convnet_vs_bn.md").exists()
    assert "p<0.01" in (out / "tables" / "classify-digits-convnet_vs_bn.md").read_text()


def test_a_path_instead_of_a_url_gets_the_url_suggested(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.main(["--db", "results/bench.db", "--out", "r"]) == 1
    assert capsys.readouterr().err == ("error: cannot open results database 'results/bench.db': not a URL "
                                       "(did you mean sqlite:///results/bench.db?)\n")
    assert not (tmp_path / "r").exists() and not (tmp_path / "results").exists()


def test_empty_database_and_unmatched_filter_exit_with_one_line(tmp_path, grid_db, capsys):
    empty = tmp_path / "empty.db"
    ResultsDB(f"sqlite:///{empty}").close()
    assert run_report(tmp_path, empty)[0] == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no runs in the database") and err.count("\n") == 1
    assert run_report(tmp_path, grid_db, "--task", "autoencode")[0] == 1
    err = capsys.readouterr().err
    assert "no runs match task=autoencode" in err and "classify 12" in err and err.count("\n") == 1
    assert run_report(tmp_path, grid_db, "--where", "lr=0.5")[0] == 1
    assert run_report(tmp_path, grid_db, "--where", "nokey=1")[0] == 1
    missing = tmp_path / "nothing" / "here.db"
    assert run_report(tmp_path, missing)[0] == 1
    assert "no results database" in capsys.readouterr().err and not missing.parent.exists()


def _settings(rows: list[dict]) -> pd.DataFrame:
    runs = pd.DataFrame([{**BASE, "norm": r["norm"], "bs": r["bs"], "lr": r.get("lr", 1e-3),
                          "config": r["config"]} for r in rows])
    return cells.settings_table(runs)


def test_cells_are_what_varied():
    rows = [dict(norm=n, bs=b, config={"optim": {"name": "adam"}, "threads": t, "seed": s,
                                       "db": {"url": f"u{s}"}, "norm": {"name": n, "eps": e}})
            for n, e in (("bn", 1e-5), ("ln", 1e-6)) for b in (8, 128) for s, t in ((0, 1), (1, 2))]
    table = _settings(rows)
    # Only norm and bs varied (seed, threads and db are bookkeeping; eps follows the norm).
    assert cells.swept(table) == list(cells.IDENTITY)
    assert cells.fixed(table) == {"epochs": 2, "optim.name": "adam"}
    with_sweeps = [{**r, "lr": lr, "config": {**r["config"], "model": {"width": w}}}
                   for r in rows for lr in (1e-3, 1e-2) for w in (8, 16)]
    table = _settings(with_sweeps)
    assert cells.swept(table) == [*cells.IDENTITY, "model.width"]
    assert sorted(table["lr"].unique()) == [1e-3, 1e-2]
    # GroupNorm's groups: absent for bn, so it follows the norm until it is swept itself.
    gn = [dict(norm="gn", bs=8, config={"norm": {"groups": g}}) for g in (4, 8)]
    bn = [dict(norm="bn", bs=8, config={})]
    assert cells.swept(_settings(gn[:1] + bn)) == list(cells.IDENTITY)
    assert cells.swept(_settings(gn + bn)) == [*cells.IDENTITY, "norm.groups"]


def test_swept_config_key_becomes_a_table_column(tmp_path):
    path = tmp_path / "width.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        for width in (8, 16):
            for seed in (0, 1):
                add_run(db, {("test", "acc"): width / 100 + seed / 1000}, seed=seed,
                        config={"model": {"name": "convnet", "width": width}})
    rc, out = run_report(tmp_path, path)
    assert rc == 0
    md = (out / "tables" / "classify-digits-convnet_final.md").read_text()
    assert "| bs | lr | model.width | test acc |" in md
    assert "| 32 | 0.001 | 16 | **0.16050 ± 0.00071 (2)** |" in md


def test_bookkeeping_keys_follow_the_config_hash():
    from bench.config_hash import BOOKKEEPING_KEYS

    assert set(BOOKKEEPING_KEYS) <= set(cells.BOOKKEEPING_ROOTS)
    assert all(cells.is_bookkeeping(f"{k}.x") for k in BOOKKEEPING_KEYS)


def test_the_analysis_and_the_config_hash_import_without_torch():
    # The report must start fast on a machine that has no torch: `import torch` takes ~3.6 s.
    code = ("import sys; import analysis.cells, analysis.distance, analysis.load, analysis.report, "
            "bench.config_hash, db; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# sha256 digests that config_hash gave before it moved out of bench/runtime.py: resuming an
# existing database matches them, so they must never change.
OLD_HASHES = [
    ({"task": {"name": "classify"}, "bs": 128, "lr": 0.001, "seed": 0, "epochs": 2,
      "optim": {"name": "adam", "betas": [0.9, 0.999]}, "db": {"url": "sqlite:///x"}, "device": "cpu",
      "threads": 4, "resume": True, "progress": False, "data_root": "data", "channels_last": False},
     "79ba63d144d3bde461b73199b81f9f043b0b0859c2595da138ca4a3d13a6eeeb"),
    ({"task": {"name": "classify"}, "bs": 128, "lr": 0.001, "seed": 0, "epochs": 2,
      "optim": {"name": "adam", "betas": [0.9, 0.999]}},  # the same without bookkeeping
     "79ba63d144d3bde461b73199b81f9f043b0b0859c2595da138ca4a3d13a6eeeb"),
    ({"norm": {"name": "gn", "groups": 8, "eps": 1e-05}, "lr": 3e-4, "note": "é",
      "out": Path("/tmp/x"), "dataset": {"name": "digits", "download": True}},
     "3d8ad6746cfdfb8e69a0ba898a90acc9a9d949f0e738688afafd3d354477135a"),
    ({}, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"),
]


@pytest.mark.parametrize("config, digest", OLD_HASHES)
def test_config_hash_is_unchanged(config, digest):
    from bench.config_hash import config_hash

    assert config_hash(config) == digest


def _reference_hash(config: dict) -> str:
    """The config hash as it was defined: sha256 of canonical JSON without these seven keys."""
    kept = {k: v for k, v in config.items()
            if k not in ("db", "resume", "progress", "device", "threads", "data_root", "channels_last")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
                          .encode()).hexdigest()


def test_config_hash_of_every_preset_is_the_reference():
    from conftest import compose_config
    from omegaconf import OmegaConf

    from bench.config_hash import config_hash
    from runners.validate import CONF_DIR

    presets = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    assert "demo" in presets
    for overrides in [(), *((f"experiment={p}",) for p in presets)]:
        config = OmegaConf.to_container(compose_config(*overrides), resolve=True)
        # `checkpoint` came later, as a bookkeeping key: a config's hash is the one it had
        # before the key existed, so stored runs still resume.
        assert "checkpoint" in config
        before = {k: v for k, v in config.items() if k not in ("checkpoint", "ddp", "agc")}
        # `ddp` came later too: one replica (every config from before it) leaves the hash as it
        # was; more replicas add the replica count and how BN buffers are reconciled.
        if (ddp := config["ddp"])["replicas"] != 1:
            before["ddp"] = {"replicas": ddp["replicas"], "buffers": ddp["buffers"]}
        # and `agc`: off (clipping 0, every config from before it) leaves the hash as it was
        if (agc := config["agc"])["clipping"] != 0:
            before["agc"] = agc
        # and `model.residual`: plain (every resnet18 config from before it) leaves it as it was
        if config["model"].get("residual") == "plain":
            before["model"] = {k: v for k, v in config["model"].items() if k != "residual"}
        assert config_hash(config) == _reference_hash(before), overrides


def test_welch_matches_scipy_on_raw_values():
    rng = np.random.default_rng(0)
    clear = (rng.normal(0.50, 0.01, 4), rng.normal(0.60, 0.02, 3))  # far apart
    noise = (rng.normal(0.50, 0.05, 3), rng.normal(0.51, 0.05, 3))  # overlapping
    for (a, b), significant in ((clear, True), (noise, False)):
        ref = scipy_stats.ttest_ind(b, a, equal_var=False)
        ci = ref.confidence_interval(0.95)
        got = stats.welch(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b)).iloc[0]
        assert got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert (got["ci_low"], got["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert (ref.pvalue < 0.05) == significant
        summary = pd.DataFrame([dict(norm=n, bs=8, split="test", name="acc", mean=v.mean(),
                                     std=v.std(ddof=1), n=len(v)) for n, v in (("none", a), ("bn", b))])
        [row] = stats.compare(summary, ["norm", "bs"], "none").itertuples()
        assert row.mark.startswith("*") if significant else row.mark == "n.s."
    assert stats.mark(float("nan"), 1, 3) == "n<2"


def test_distance_ratio_is_the_autoencoder_posts_number():
    # the autoencoder post: math.sqrt(0.007543) / math.sqrt(0.005948) = 1.1261249325984088 (BN over none)
    assert stats.sqrt_mse_ratio(0.007543, 0.005948) == pytest.approx(1.1261249325984088, rel=1e-12)
    assert stats.sqrt_mse_ratio(np.array([4.0, 1.0]), np.array([1.0, 4.0])).tolist() == [2.0, 0.5]


def test_directions_and_formats():
    assert (stats.better("acc"), stats.better("mse"), stats.better("images_per_s")) == ("max", "min", "max")
    assert stats.better("uniformity") is None and stats.is_timing("time_s")
    assert fmt_mean_std(0.005948, 0.00012, 3) == "0.00595 ± 0.00012 (3)"
    assert fmt_mean_std(2.78, 0.77, 3) == "2.78 ± 0.77 (3)"  # the Replacing BatchNorm post's BN at bs 2
    assert fmt_mean_std(float("nan"), float("nan"), 0) == "–"
    assert fmt_mean_std(1.0, 0.0, 2) == "1 ± 0 (2)"
    data = pd.DataFrame({"norm": ["a_b", "a_b", "c"], "x": ["1 ± 2", "50%", "3|4"]})
    bold = pd.DataFrame({"norm": [False] * 3, "x": [True, False, False]})
    table = Table("t", "T", data, bold, block="norm")
    tex = to_latex(table)
    assert r"a\_b & \textbf{1 $\pm$ 2} \\" in tex and r"50\%" in tex and tex.count(r"\midrule") == 2
    md = to_markdown(table)
    assert "**norm = a_b**" in md and "| **1 ± 2** |" in md and "3\\|4" in md
    assert latex_escape("#&~") == r"\#\&\textasciitilde{}"
    assert not math.isnan(stats.sqrt_mse_ratio(1.0, 1.0))


def test_paired_matches_scipy_ttest_rel_per_cell():
    rng = np.random.default_rng(0)
    rows = []
    for bs in (8, 64):
        for run in range(5):
            base = rng.normal(0.8, 0.05)  # the seed's shared part: cancels in a paired test
            rid = bs * 10 + run
            rows += [dict(run_id=rid, norm="bn", bs=bs, split="test", name="acc", value=base),
                     dict(run_id=rid, norm="bn", bs=bs, split="test_precise", name="acc",
                          value=base + rng.normal(0.01 * bs / 8, 0.002)),
                     dict(run_id=rid, norm="bn", bs=bs, split="train", name="acc", value=0.9)]
    frame = pd.DataFrame(rows)
    got = stats.paired(frame, ["norm", "bs"]).set_index("bs")
    for bs in (8, 64):
        cell = frame[frame["bs"] == bs]
        a = cell[cell["split"] == "test"].sort_values("run_id")["value"].to_numpy()
        b = cell[cell["split"] == "test_precise"].sort_values("run_id")["value"].to_numpy()
        ref = scipy_stats.ttest_rel(b, a)
        ci = ref.confidence_interval(0.95)
        assert got.loc[bs, "n"] == 5
        assert got.loc[bs, "diff"] == pytest.approx((b - a).mean())
        assert got.loc[bs, "p"] == pytest.approx(ref.pvalue)
        assert (got.loc[bs, "ci_low"], got.loc[bs, "ci_high"]) == pytest.approx((ci.low, ci.high))


def test_paired_is_empty_without_both_splits():
    frame = pd.DataFrame([dict(run_id=1, norm="gn", split="test", name="acc", value=0.5)])
    assert stats.paired(frame, ["norm"]).empty
