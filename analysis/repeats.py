"""One run per config in the means: duplicates and deliberate repeats are told apart.

Two completed runs of one config hash (the seed is part of it) are the same experiment. Pooled,
they would count as n = 2 with a spread that says nothing about seeds (measured on the code
before claims, db/claims.py: two sweeps started together gave every config two runs, averaged as
n = 2, std 0). So only the first completed run of each config is averaged; the others are
listed with the runs not averaged, as
- 'duplicate': a second launch trained it by accident (a database written before claims, or
  two databases merged);
- 'repeat': trained again on purpose (`resume=false`, runs.repeat_of); averaged with the first
  run only when the report is asked to (`--repeats`).
"""

from __future__ import annotations

import pandas as pd


def mark(frame: pd.DataFrame, runs: pd.DataFrame, keys: list[str] = (), *,
         repeats: bool = False) -> tuple[pd.DataFrame, str]:
    """`frame` (one row per run, `status`, `error` and the cell `keys` as columns, indexed by
    run id) with the completed runs that are not averaged given status 'duplicate' or 'repeat'
    and an error naming the run they repeat; and one sentence saying what was done. `runs`:
    load_runs' rows (config_hash, seed, repeat_of). Runs are the same config when their hash,
    seed and cell settings are: equal hashes imply the rest, which only guards against rows
    whose hash was not made by `bench.config_hash` (hand-written rows)."""
    frame = frame.copy()
    done = runs[frame["status"] == "completed"].sort_index()
    same = pd.concat([done[["config_hash", "seed"]], frame.loc[done.index, list(keys)]], axis=1)
    config = {i: tuple(map(str, row)) for i, row in same.iterrows()}
    kept = {}
    for run_id, row in done.iterrows():
        if pd.isna(row["repeat_of"]):
            kept.setdefault(config[run_id], run_id)
    counts = {"duplicate": 0, "repeat": 0}
    for run_id, row in done.iterrows():
        original = kept.setdefault(config[run_id], run_id)  # a repeat whose original is gone
        if original == run_id:
            continue
        kind = "duplicate" if pd.isna(row["repeat_of"]) else "repeat"
        if kind == "repeat" and repeats:
            continue
        counts[kind] += 1
        frame.loc[run_id, "status"] = kind
        frame.loc[run_id, "error"] = f"the same config as run id {original}" + (
            " (resume=false; --repeats averages it)" if kind == "repeat" else "")
    if not any(counts.values()):
        return frame, ""
    said = [f"{n} {k}{'s' if n > 1 else ''}" for k, n in counts.items() if n]
    return frame, (f"One completed run per config is averaged: {' and '.join(said)} of an "
                   "averaged run's exact config are listed below, not averaged"
                   + ("" if repeats else "; --repeats averages the deliberate repeats") + ".")
