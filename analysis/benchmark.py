"""`python -m analysis.benchmark`: time the report on a big synthetic database.

Builds RUNS runs x EPOCHS epochs x 4 metrics (default 5,000 x 100 x 4 = 2 M metric rows) in a
temporary SQLite file, then times `python -m analysis.report` on it, step by step. Target: the
report in under 60 s on 2 cores.

The database is written with one executemany inside one transaction, straight through sqlite3
(15-20 s for the 2 M rows here, values generated included), after `open_engine` created the
schema, views and indexes, so the indexes are maintained as a real database's would be.
Values are made up but shaped like training: accuracy rising to a plateau that depends on norm,
bs and lr, with seed noise; 3% of runs are diverged, failed or still running.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from analysis import report
from db.engine import open_engine

NORMS = ("none", "bn", "gn", "ln", "in")
BATCH_SIZES = (2, 8, 32, 128, 512)
LRS = (1e-4, 3e-4, 1e-3, 3e-3)
WIDTHS = (4, 8, 16, 32, 64)
METRICS = (("test", "acc"), ("test", "loss"), ("train", "loss"), ("train", "time_s"))
RUN_COLUMNS = ("id", "status", "task", "dataset", "model", "norm", "bs", "lr", "seed", "epochs",
               "epochs_done", "config", "config_hash", "started_at", "ended_at", "heartbeat_at",
               "duration_s", "host", "pid", "device", "torch_version", "code_version", "error")


def _runs(n: int, epochs: int, rng: np.random.Generator) -> list[tuple]:
    grid = list(itertools.product(NORMS, BATCH_SIZES, LRS, WIDTHS))
    status = rng.choice(["completed", "diverged", "failed", "running"], size=n, p=[0.97, 0.015, 0.01, 0.005])
    rows = []
    for i in range(n):
        norm, bs, lr, width = grid[i % len(grid)]
        seed = i // len(grid)
        config = {"task": {"name": "classify"}, "dataset": {"name": "cifar10", "image_size": 32},
                  "model": {"name": "cnn4", "width": width}, "norm": {"name": norm},
                  "optim": {"name": "adam", "weight_decay": 0.0}, "bs": bs, "lr": lr, "seed": seed,
                  "epochs": epochs, "threads": 1, "db": {"url": "sqlite:///bench.db"}}
        st = str(status[i])
        error = {"diverged": "test loss became nan", "failed": "RuntimeError: out of memory"}.get(st)
        ended, duration = (None, None) if st == "running" else ("2025-01-01 01:00:00", 600.0 * 32 / bs)
        rows.append((i + 1, st, "classify", "cifar10", "cnn4", norm, bs, lr, seed,
                     epochs, epochs, json.dumps(config),  # a running run: its last epoch
                     f"{i:064x}", "2025-01-01 00:00:00", ended, "2025-01-01 01:00:00", duration,
                     "bench", 1, "cpu", "synthetic", "synthetic", error))
    return rows


def _metrics(runs: list[tuple], epochs: int, rng: np.random.Generator):
    """Rows (run_id, epoch, split, name, value), run by run and epoch by epoch."""
    ids = np.array([r[0] for r in runs])
    norm_gain = np.array([NORMS.index(r[5]) for r in runs]) * 0.02
    lr_penalty = 0.03 * np.abs(np.log10([r[7] for r in runs]) + 3)  # best at lr 1e-3
    plateau = 0.55 + norm_gain - lr_penalty + rng.normal(0, 0.01, len(runs))
    e = np.arange(1, epochs + 1)
    acc = plateau[:, None] * (1 - np.exp(-e[None, :] / 10)) + rng.normal(0, 0.005, (len(runs), epochs))
    test_loss = -np.log(np.clip(acc, 1e-3, None)) + 0.3
    train_loss = test_loss - 0.1 * e[None, :] / epochs
    diverged = np.array([r[1] == "diverged" for r in runs])
    test_loss[diverged, -1] = np.nan  # NULL, as ResultsDB writes NaN
    seconds = np.array([6.0 * 32 / r[6] for r in runs])[:, None] * rng.uniform(0.9, 1.1, (len(runs), epochs))
    columns = [(s, n, v) for (s, n), v in zip(METRICS, (acc, test_loss, train_loss, seconds), strict=True)]
    for i, run_id in enumerate(ids.tolist()):
        for epoch in range(epochs):
            for split, name, values in columns:
                yield run_id, epoch + 1, split, name, float(values[i, epoch])


def build(path: Path, runs: int, epochs: int, seed: int = 0) -> int:
    """Write the synthetic database at `path`; returns the number of metric rows."""
    open_engine(f"sqlite:///{path}").dispose()  # schema, views and indexes, as a real database
    rng = np.random.default_rng(seed)
    run_rows = _runs(runs, epochs, rng)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # a throwaway file: no fsync
    conn.execute("BEGIN")
    marks = ", ".join("?" * len(RUN_COLUMNS))
    conn.executemany(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({marks})", run_rows)
    conn.executemany("INSERT INTO metrics (run_id, epoch, split, name, value) VALUES (?, ?, ?, ?, ?)",
                     _metrics(run_rows, epochs, rng))
    conn.execute("COMMIT")
    n = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    conn.close()
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--dir", type=Path, help="keep the database and report here (default: a temp dir)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as tmp:
        where = args.dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        path = where / "bench.db"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        rows = build(path, args.runs, args.epochs)
        built = time.perf_counter() - t0
        print(f"built {args.runs} runs, {rows:,} metric rows ({path.stat().st_size / 1e6:.0f} MB) "
              f"in {built:.1f} s")
        t0 = time.perf_counter()
        rc = report.main(["--db", f"sqlite:///{path}", "--out", str(where / "report"), "--timings"])
        took = time.perf_counter() - t0
        print(f"report: {took:.1f} s (target < 60 s){'' if took < 60 else '  SLOWER THAN TARGET'}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
