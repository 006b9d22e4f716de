"""The report's tables as display strings: the Replacing BatchNorm post's per-norm blocks, the
autoencoder post's comparisons.

A `Table` holds strings and a bold mask; `analysis.formats` writes it as Markdown, LaTeX or
HTML. The numbers behind the strings go to CSV unformatted (`report.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis import stats
from analysis.cells import fmt_value, select


@dataclass
class Table:
    name: str                 # file stem, e.g. 'classify-digits-convnet_final'
    title: str
    data: pd.DataFrame        # display strings
    bold: pd.DataFrame        # same shape, True where the value is the best of its block
    block: str | None = None  # a column of `data` whose values split the table into blocks
    note: str = ""


def fmt_mean_std(mean: float, std: float, n: int) -> str:
    """'0.912 ± 0.012 (3)': the std to 2 significant digits, the mean to the same decimals.

    One value: '0.9123 (1)', the value and n (a std of one run does not exist; never '± 0').
    No value: '–'.
    """
    if n == 0 or mean != mean:
        return "–"
    if n == 1:
        return f"{mean:.4g} (1)"
    if std != std or math.isinf(std) or math.isinf(mean):
        return f"{mean:.4g} ± n/a ({n})"
    if std == 0:
        return f"{mean:.4g} ± 0 ({n})"
    decimals = min(8, max(0, 1 - math.floor(math.log10(std))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f} ({n})"


def fmt_p(p: float, mark: str) -> str:
    if p != p:
        return mark
    shown = "<1e-4" if p < 1e-4 else f"{p:.2g}"
    return f"{shown} {mark}"


def metric_label(split: str, name: str) -> str:
    return f"{split} {name}"


def _best_mask(means: pd.Series, blocks: pd.Series, direction: str | None) -> pd.Series:
    if direction is None:
        return pd.Series(False, index=means.index)
    grouped = means.groupby(blocks, sort=False)
    best, count = grouped.transform(direction), grouped.transform("count")
    return means.notna() & (means == best) & (count > 1)  # one row per block: nothing to rank


def final_table(name: str, title: str, cells: pd.DataFrame, summary: pd.DataFrame,
                excluded: pd.DataFrame, row_keys: list[str], metrics: list[tuple[str, str]],
                threads: pd.DataFrame | None = None) -> Table:
    """The Replacing BatchNorm post's layout: a block per norm, rows `row_keys`, a 'mean ± std (n)' column per
    metric, the best of each block in bold, and what was not averaged.

    `cells`: one row per cell (norm + row_keys), in display order; `summary`: stats.summarize
    output with norm, row_keys, split, name; `excluded`: stats.status_counts output; `threads`:
    stats.thread_counts output. When a cell averages runs of different CPU thread counts, a
    'threads' column and the note say so.
    """
    keys = ["norm", *row_keys]
    data = cells[keys].map(fmt_value).reset_index(drop=True)
    bold = pd.DataFrame(False, index=data.index, columns=data.columns)
    for split, metric in metrics:
        part = summary[(summary["split"] == split) & (summary["name"] == metric)]
        rows = cells[keys].merge(part[[*keys, "mean", "std", "n"]], on=keys, how="left")
        rows["n"] = rows["n"].fillna(0).astype(int)
        column = metric_label(split, metric)
        data[column] = [fmt_mean_std(m, s, n) for m, s, n in zip(rows["mean"], rows["std"], rows["n"],
                                                                 strict=True)]
        bold[column] = _best_mask(rows["mean"], rows["norm"], stats.better(metric)).to_numpy()
    left = cells[keys].merge(excluded, on=keys, how="left")["excluded"].fillna("")
    data["not averaged"] = left.to_numpy()
    bold["not averaged"] = False
    note = ("mean ± sample std over seeds (n completed runs), or the value (1) of a single run; "
            "best per norm in bold where the direction is known; failed, diverged and running "
            "runs are counted in 'not averaged', never in the mean.")
    mine = cells[keys].merge(threads, on=keys, how="left") if threads is not None else None
    mixed = int(mine["mixed"].eq(True).sum()) if mine is not None else 0
    if mixed:  # beside the settings, where it is seen before the numbers
        data.insert(len(keys), "threads", mine["threads"].fillna("").to_numpy())
        bold.insert(len(keys), "threads", False)
        note += (f" {mixed} {'cell averages' if mixed == 1 else 'cells average'} runs of different "
                 f"CPU thread counts (column 'threads'): {stats.THREADS_NOTE}")
    return Table(name, title, data, bold, block="norm", note=note)


def comparison_table(name: str, title: str, comparison: pd.DataFrame, row_keys: list[str],
                     baseline: str, alpha: float) -> Table:
    """The autoencoder post's layout: each norm against the baseline per cell and metric, with Welch's test
    and, for squared errors, the distance ratio sqrt(mse_norm) / sqrt(mse_baseline)."""
    c = comparison.reset_index(drop=True)
    data = pd.DataFrame({"comparison": [f"{n} vs {baseline}" for n in c["norm"]]})
    for key in row_keys:
        data[key] = c[key].map(fmt_value)
    data["metric"] = [metric_label(s, n) for s, n in zip(c["split"], c["name"], strict=True)]
    data["baseline"] = [fmt_mean_std(*v) for v in zip(c["base_mean"], c["base_std"], c["base_n"],
                                                      strict=True)]
    data["norm"] = [fmt_mean_std(*v) for v in zip(c["mean"], c["std"], c["n"], strict=True)]
    data["Δ (norm − baseline)"] = [f"{d:+.3g}" if d == d else "–" for d in c["diff"]]
    data["95% CI of Δ"] = ["–" if lo != lo else f"[{lo:+.3g}, {hi:+.3g}]"
                           for lo, hi in zip(c["ci_low"], c["ci_high"], strict=True)]
    data["p (Welch)"] = [fmt_p(p, m) for p, m in zip(c["p"], c["mark"], strict=True)]
    if c["ratio"].notna().any():
        data["distance ratio"] = ["" if r != r else f"{r:.3f}" for r in c["ratio"]]
    bold = pd.DataFrame(False, index=data.index, columns=data.columns)
    bold["p (Welch)"] = c["mark"].str.startswith("*").to_numpy()
    note = (f"Welch's t-test of each norm against '{baseline}' in the same cell; * p<{alpha:g}, "
            "** p<0.01, *** p<0.001, n.s. not significant, n<2 too few completed runs to test; "
            "not corrected for multiple comparisons.")
    if "distance ratio" in data:
        note += " distance ratio = sqrt(mse_norm) / sqrt(mse_baseline) (the autoencoder post)."
    return Table(name, title, data, bold, block="comparison", note=note)


# How bench/bn_eval.py batches the test set for the batch-statistics split.
BATCHSTATS_RULE = ("Batch statistics (`test_batchstats`): BN in train mode on the test set in batches "
                   "of the training batch size (the whole test set when it is smaller), in one fixed "
                   "shuffled order that is the same for every run; the last batch is filled up with "
                   "images from the start of that order, which are not scored again. All three "
                   "columns score every test image exactly once.")


def bn_modes_table(name: str, title: str, cells: pd.DataFrame, summary: pd.DataFrame,
                   paired: pd.DataFrame, row_keys: list[str], alpha: float) -> Table:
    """The fast.ai thread and Wu & Johnson: each metric of each cell as BN's three evaluation
    modes side by side (mean ± std (n) over seeds), then PreciseBN − EMA per run with its paired
    t-test."""
    keys = ["norm", *row_keys]
    rows = []
    for cell in cells[keys].itertuples(index=False):
        where = dict(zip(keys, cell, strict=True))
        mine = select(summary, where)
        for metric in sorted(set(mine.loc[mine["split"] == "test_precise", "name"])):
            if stats.is_timing(metric):
                continue
            row = {k: fmt_value(v) for k, v in where.items()} | {"metric": metric}
            for split, label_ in stats.BN_MODES.items():
                hit = mine[(mine["split"] == split) & (mine["name"] == metric)]
                if len(hit):
                    mean, std, n = hit[["mean", "std", "n"]].iloc[0]
                    row[label_] = fmt_mean_std(mean, std, int(n))
            pair = select(paired, {**where, "name": metric})
            if len(pair):
                d = pair.iloc[0]
                m = stats.mark(d["p"], int(d["n"]), int(d["n"]), alpha)
                row["Δ PreciseBN − EMA"] = f"{d['diff']:+.3g}"
                row["95% CI of Δ"] = "–" if d["ci_low"] != d["ci_low"] else \
                    f"[{d['ci_low']:+.3g}, {d['ci_high']:+.3g}]"
                row["p (paired t)"] = fmt_p(d["p"], m)
            rows.append(row)
    data = pd.DataFrame(rows).fillna("–")
    bold = pd.DataFrame(False, index=data.index, columns=data.columns)
    if "p (paired t)" in data:
        bold["p (paired t)"] = data["p (paired t)"].str.contains(r"\*", regex=True)
    return Table(name, title, data, bold, block="norm",
                 note="EMA (`test`): BN's running statistics, PyTorch's eval mode. PreciseBN "
                      "(`test_precise`): statistics recomputed with the current weights over "
                      "training images (bench/precise_bn.py). " + BATCHSTATS_RULE + " Mean ± "
                      "sample std over seeds (n). Δ: per-run difference, paired t-test over "
                      f"seeds (* p<{alpha:g}, ** p<0.01, *** p<0.001).")


def time_table(name: str, title: str, cells: pd.DataFrame, durations: pd.DataFrame,
               per_epoch: pd.DataFrame, row_keys: list[str]) -> Table:
    """Wall-clock seconds per completed run and per epoch, mean ± std (n) per cell."""
    keys = ["norm", *row_keys]
    data = cells[keys].map(fmt_value).reset_index(drop=True)
    for column, frame in (("seconds per run", durations), ("seconds per epoch", per_epoch)):
        rows = cells[keys].merge(frame, on=keys, how="left")
        data[column] = [fmt_mean_std(m, s, int(n) if n == n else 0)
                        for m, s, n in zip(rows["mean"], rows["std"], rows["n"], strict=True)]
    bold = pd.DataFrame(False, index=data.index, columns=data.columns)
    return Table(name, title, data, bold, block=None,
                 note="runs.duration_s of completed runs (start to end, evaluation included).")


def runs_table(name: str, title: str, runs: pd.DataFrame, keys: list[str], limit: int) -> Table:
    """The listed runs (id, status, cell, seed, epochs done, error), the first `limit` of them."""
    shown = runs.head(limit)
    data = pd.DataFrame({"run": shown.index.astype(str), "status": shown["status"]})
    for key in keys:
        data[key] = shown[key].map(fmt_value)
    data["seed"] = shown["seed"].astype(str)
    data["epochs"] = [f"{d}/{e}" for d, e in zip(shown["epochs_done"], shown["epochs"], strict=True)]
    data["error"] = shown["error"].fillna("").map(lambda e: e if len(e) <= 120 else e[:117] + "...")
    data = data.reset_index(drop=True)
    note = f"{len(runs)} runs" + (f"; the first {limit} shown, all in the CSV" if len(runs) > limit else "")
    return Table(name, title, data, pd.DataFrame(False, index=data.index, columns=data.columns),
                 note=note)
