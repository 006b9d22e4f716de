"""Mean and std over seeds per cell, and each norm against a baseline with Welch's t-test.

Only completed runs are averaged; `status_counts` says what was left out of each cell. Std is the
sample std (ddof=1) and NaN with one run: shown as "n/a", never as 0.

Why Welch and not a bootstrap: with 2-5 seeds a percentile bootstrap has only a handful of
distinct resamples (10 for n = 3) and its intervals are far too narrow; Welch's t-test
(Welch 1947) does not assume equal variances, which BN at bs 2 vs 128 does not have (the
Replacing BatchNorm post: loss std 0.77 vs 0.01), and its t-interval widens honestly when n is
small. Tests are per cell and not corrected for multiple comparisons: the report says so.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats

# Which way is better, for bolding the best value; a name in neither set is never bolded.
# cfid/ckid/cis: FID, KID and inception score on a classifier's features (runners/gan.py).
HIGHER_IS_BETTER = {"acc", "accuracy", "top1", "top5", "is", "cis", "psnr", "ssim", "auc", "f1",
                    "classifier_acc"}
LOWER_IS_BETTER = {"loss", "mse", "mae", "rmse", "nll", "fid", "cfid", "kid", "ckid", "error", "err",
                   "bpd", "ppl"}
TIMING = re.compile(r"(^|_)(time|duration)(_s)?$|_per_s$")  # time_s, images_per_s: cost, not quality


def better(name: str) -> str | None:
    """'max', 'min' or None (direction unknown: g_loss, uniformity, ...)."""
    if name in HIGHER_IS_BETTER:
        return "max"
    if name.endswith("_per_s"):  # throughput
        return "max"
    if name in LOWER_IS_BETTER or TIMING.search(name):
        return "min"
    return None


def is_timing(name: str) -> bool:
    return bool(TIMING.search(name))


def summarize(values: pd.DataFrame, keys: list[str], value: str = "value") -> pd.DataFrame:
    """mean, std (ddof=1; NaN for n < 2) and n (non-NaN values) of `value` per `keys` group."""
    grouped = values.groupby(keys, dropna=False, sort=False)[value]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def status_counts(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Cells with runs not completed, and 'excluded': text such as '1 diverged, 2 running'."""
    left = runs[runs["status"] != "completed"]
    text = (left.groupby(keys, dropna=False)["status"]
            .agg(lambda s: ", ".join(f"{n} {st}" for st, n in sorted(s.value_counts().items())))
            .rename("excluded").reset_index())
    return text


# Why a cell of mixed thread counts is worth a note: on this project's 2-core machines the same
# sweep run one job at a time (2 threads each) and with the joblib launcher (1 thread per job)
# gave test losses of 0.323462 and 0.324338 for the same seed (measured for issue 9; the count is
# recorded in runs.threads, db/schema.py).
THREADS_NOTE = ("CPU reductions add up in an order that depends on the thread count, so the same "
                "seed gives the same numbers only at the same thread count.")


def _thread_list(threads: pd.Series) -> str:
    """'1', '1, 2', '2, not recorded' (a row written before runs.threads existed)."""
    shown = [str(int(t)) for t in sorted(threads.dropna().unique())]
    return ", ".join(shown + (["not recorded"] if threads.isna().any() else []))


def thread_counts(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell of completed runs (the ones averaged): keys, threads (the distinct counts as
    text) and mixed (True when the runs used more than one count, a missing count being one
    more value: it may be any)."""
    done = runs[runs["status"] == "completed"]
    grouped = done.groupby(keys, dropna=False, sort=False)["threads"]
    return grouped.agg(threads=_thread_list, mixed=lambda t: t.nunique(dropna=False) > 1).reset_index()


def welch(mean_a, std_a, n_a, mean_b, std_b, n_b, level: float = 0.95) -> pd.DataFrame:
    """Welch's t-test of b - a from summary statistics (arrays): diff, ci_low, ci_high, p.

    Equal to scipy.stats.ttest_ind(b, a, equal_var=False) on the raw values (checked in the
    tests); NaN where a group has fewer than 2 values or both have zero spread.
    """
    mean_a, std_a, n_a, mean_b, std_b, n_b = (np.atleast_1d(np.asarray(x, dtype="float64"))
                                              for x in (mean_a, std_a, n_a, mean_b, std_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        va, vb = std_a**2 / n_a, std_b**2 / n_b
        se = np.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))  # Welch–Satterthwaite
        diff = mean_b - mean_a
        t = diff / se
        p = 2 * stats.t.sf(np.abs(t), dof)
        half = stats.t.ppf(0.5 + level / 2, dof) * se
    few = (n_a < 2) | (n_b < 2)
    p = np.where(few | (se == 0), np.nan, p)
    half = np.where(few, np.nan, half)
    return pd.DataFrame({"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p": p})


def mark(p: float, n_a: int, n_b: int, alpha: float = 0.05) -> str:
    """'n<2', 'n/a' (no spread at all), '***' p<0.001, '**' p<0.01, '*' p<alpha, else 'n.s.'."""
    if n_a < 2 or n_b < 2:
        return "n<2"
    if p != p:
        return "n/a"
    if p < min(alpha, 0.001):
        return "***"
    if p < min(alpha, 0.01):
        return "**"
    return "*" if p < alpha else "n.s."


# BN's evaluation modes (bench/bn_eval.py): the split of each, in display order.
BN_MODES = {"test": "EMA", "test_precise": "PreciseBN", "test_batchstats": "batch stats"}


def paired(values: pd.DataFrame, keys: list[str], a: str = "test", b: str = "test_precise",
           level: float = 0.95) -> pd.DataFrame:
    """Split b against split a of the same runs (Wu & Johnson: PreciseBN against EMA), per `keys`
    cell and metric name: the per-run difference b - a, its mean, std, n, confidence interval and
    the paired t-test's p (= scipy.stats.ttest_rel(b, a), checked in the tests). A paired test
    removes the spread between seeds that both splits share, which Welch's test would count as
    noise. `values`: run_id, keys, split, name, value. Returns keys, name, diff, std, n, ci_low,
    ci_high, p (NaN where n < 2 or every difference is the same)."""
    both = values[values["split"].isin([a, b])]
    wide = both.pivot_table(index=["run_id", *keys, "name"], columns="split", values="value",
                            dropna=False)
    columns = [*keys, "name", "diff", "std", "n", "ci_low", "ci_high", "p"]
    if a not in wide or b not in wide:
        return pd.DataFrame(columns=columns)
    d = (wide[b] - wide[a]).dropna().rename("d").reset_index()
    g = d.groupby([*keys, "name"], dropna=False, sort=False)["d"].agg(diff="mean", std="std", n="count")
    g = g.reset_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        se = g["std"] / np.sqrt(g["n"])
        p = 2 * stats.t.sf(np.abs(g["diff"] / se), g["n"] - 1)
        half = stats.t.ppf(0.5 + level / 2, g["n"] - 1) * se
    g["p"] = np.where((g["n"] < 2) | (se == 0), np.nan, p)
    g["ci_low"], g["ci_high"] = g["diff"] - half, g["diff"] + half
    return g[columns]


def sqrt_mse_ratio(mse_a, mse_b):
    """sqrt(mse_a) / sqrt(mse_b): how much farther from the target a's reconstructions are.

    The autoencoder post treats the square root of an autoencoder's test MSE as a distance: with BN as `a`
    and no norm as `b`, sqrt(0.007543) / sqrt(0.005948) = 1.126 ("12.61% larger with BN").
    Works on numbers or arrays, for any two norms. The one implementation of the formula: the
    report's comparisons use it, and `analysis.distance.distance_ratio` applies it to a database.
    """
    return np.sqrt(mse_a) / np.sqrt(mse_b)


def is_squared_distance(name: str) -> bool:
    """Metrics for which `sqrt_mse_ratio` makes sense (mean squared errors)."""
    return name == "mse" or name.endswith("_mse")


def compare(summary: pd.DataFrame, keys: list[str], baseline: str, alpha: float = 0.05) -> pd.DataFrame:
    """Every non-baseline norm against `baseline` in the same cell (`keys` minus norm) and metric.

    `summary` has keys + split, name, mean, std, n. Returns one row per (cell, metric, norm) with
    base_* and the norm's mean/std/n, Welch's diff, ci_low, ci_high, p, mark, and `ratio`
    (sqrt_mse_ratio of the norm over the baseline) for squared-error metrics.
    """
    match = [k for k in keys if k != "norm"] + ["split", "name"]
    base = summary[summary["norm"] == baseline].drop(columns="norm")
    base = base.rename(columns={"mean": "base_mean", "std": "base_std", "n": "base_n"})
    other = summary[summary["norm"] != baseline]
    both = other.merge(base, on=match, how="inner")
    if both.empty:
        return both
    test = welch(both["base_mean"], both["base_std"], both["base_n"],
                 both["mean"], both["std"], both["n"])
    both = pd.concat([both.reset_index(drop=True), test], axis=1)
    both["mark"] = [mark(p, na, nb, alpha) for p, na, nb in zip(both["p"], both["base_n"], both["n"],
                                                                strict=True)]
    squared = both["name"].map(is_squared_distance)
    both["ratio"] = np.where(squared, sqrt_mse_ratio(both["mean"].where(squared),
                                                     both["base_mean"].where(squared)), np.nan)
    return both
