"""One report section per (task, dataset, model): its tables and figures.

`analyse` does the statistics once for every selected run; `section` cuts out one experiment
and lays it out: the Replacing BatchNorm post's table, the autoencoder post's comparison, time
cost, then the figures.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from analysis import plots, stats
from analysis.cells import SECTION, label, norm_order, select, sort_cells
from analysis.document import Section
from analysis.tables import bn_modes_table, comparison_table, final_table, metric_label, time_table

# The GAN post's metrics, plotted together over epochs whatever their split: the discriminator's
# batch uniformity (runners/gan.py: d_uniformity, _real, _fake) and FID. FID proper uses
# Inception-v3 features (Heusel et al. 2017, arXiv:1706.08500), whose weights are a download; here
# it is computed on a classifier's features (offline), so it is labelled as such.
GAN_CURVES = re.compile(r"uniformity|fid$")
GAN_TITLES = {"fid": "FID", "cfid": "FID (classifier features, not Inception)"}


@dataclass
class Analysis:
    runs: pd.DataFrame        # one row per selected run: cell keys, status, seed, epochs, ...
    keys: list[str]           # the cell keys (cells.swept)
    summary: pd.DataFrame     # final metrics of completed runs: keys, split, name, mean, std, n
    excluded: pd.DataFrame    # keys, excluded ('1 diverged, 1 running')
    comparison: pd.DataFrame  # stats.compare output
    durations: pd.DataFrame   # keys, mean, std, n of duration_s
    per_epoch: pd.DataFrame   # keys, mean, std, n of duration_s / epochs_done
    paired: pd.DataFrame      # stats.paired: PreciseBN - EMA per cell and metric (BN runs)
    threads: pd.DataFrame     # stats.thread_counts: keys, threads, mixed (completed runs)
    norms: list[str]          # display order, baseline first
    baseline: str
    alpha: float


def analyse(runs: pd.DataFrame, final: pd.DataFrame, keys: list[str], baseline: str,
            alpha: float) -> Analysis:
    """`runs`: settings + status, threads, ...; `final`: load_final rows of those runs."""
    done = runs[runs["status"] == "completed"]
    values = final.merge(done[keys], left_on="run_id", right_index=True)
    summary = stats.summarize(values, keys + ["split", "name"])
    timed = done.assign(per_epoch=done["duration_s"] / done["epochs_done"].where(done["epochs_done"] > 0))
    return Analysis(
        runs=runs, keys=keys, summary=summary, excluded=stats.status_counts(runs, keys),
        comparison=stats.compare(summary, keys, baseline, alpha),
        durations=stats.summarize(timed, keys, "duration_s"),
        per_epoch=stats.summarize(timed, keys, "per_epoch"),
        paired=stats.paired(values, keys), threads=stats.thread_counts(runs, keys),
        norms=norm_order(runs["norm"], baseline), baseline=baseline, alpha=alpha)


def table_metrics(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """Evaluation metrics (not train, not timing) in display order: test first, then by name.

    Falls back to the train metrics when nothing else was logged."""
    pairs = list(summary[["split", "name"]].drop_duplicates().itertuples(index=False, name=None))
    quality = [p for p in pairs if not stats.is_timing(p[1])]
    chosen = [p for p in quality if p[0] != "train"] or quality
    return sorted(chosen, key=lambda p: (p[0] != "test", p[0], p[1]))


def section(an: Analysis, where: dict, curves: Callable[[str, str, list], pd.DataFrame]) -> Section:
    """The section for one (task, dataset, model) `where`; `curves(split, name, run_ids)` reads
    a metric's per-epoch values of those runs (run_id, epoch, value)."""
    slug = "-".join(str(where[k]) for k in SECTION)
    row_keys = [k for k in an.keys if k not in SECTION and k != "norm"]
    runs = select(an.runs, where)
    summary = select(an.summary, where)
    metrics = table_metrics(summary)
    sec = Section(id=slug, title=" / ".join(f"{k} {where[k]}" for k in SECTION))
    n_cells = len(runs[["norm", *row_keys]].drop_duplicates())
    varied = [k for k in ["norm", *row_keys] if runs[k].nunique(dropna=False) > 1]
    sec.paragraphs.append(f"{len(runs)} runs, {int((runs['status'] == 'completed').sum())} completed, "
                          f"in {n_cells} cells (a cell: one value of each of "
                          f"{', '.join(['norm', *row_keys])}; varied here: "
                          f"{', '.join(varied) or 'nothing but the seed'}).")
    _tables(sec, an, where, slug, runs, summary, row_keys, metrics)
    _figures(sec, an, slug, runs, summary, row_keys, metrics, curves)
    return sec


def _tables(sec, an: Analysis, where: dict, slug: str, runs, summary, row_keys, metrics) -> None:
    """The Replacing BatchNorm post's table, the autoencoder post's comparison against the
    baseline, BN's evaluation modes (the fast.ai thread and Wu & Johnson), time cost."""
    keys = ["norm", *row_keys]
    cells = sort_cells(runs[keys].drop_duplicates(), keys, an.norms)
    sec.tables.append(final_table(f"{slug}_final", "Final metrics", cells, summary,
                                  select(an.excluded, where), row_keys, metrics,
                                  select(an.threads, where)))
    if (summary["split"] == "test_precise").any():
        with_modes = cells.merge(summary.loc[summary["split"] == "test_precise", keys].drop_duplicates(),
                                 on=keys)
        sec.tables.append(bn_modes_table(f"{slug}_bn_modes", "BN evaluation: EMA, PreciseBN, batch "
                                         "statistics", with_modes, summary,
                                         select(an.paired, where), row_keys, an.alpha))
    comparison = select(an.comparison, where) if not an.comparison.empty else an.comparison
    if not comparison.empty:
        wanted = set(metrics)
        comparison = comparison[[p in wanted for p in zip(comparison["split"], comparison["name"],
                                                          strict=True)]]
        comparison = sort_cells(comparison, [*keys, "split", "name"], an.norms)
        sec.tables.append(comparison_table(f"{slug}_vs_{an.baseline}", f"Against {an.baseline}",
                                           comparison, row_keys, an.baseline, an.alpha))
    elif runs["norm"].nunique() > 1:
        sec.paragraphs.append(f"No comparison with the baseline '{an.baseline}': it has no completed "
                              "run in the cells of the other norms (choose another with --baseline).")
    sec.tables.append(time_table(f"{slug}_time", "Time cost", cells, select(an.durations, where),
                                 select(an.per_epoch, where), row_keys))


def _figures(sec, an: Analysis, slug: str, runs, summary, row_keys, metrics, curves) -> None:
    """Learning curves per metric, the GAN curves, final metric vs bs, heatmap, time cost.

    Panel rows are the settings other than norm and bs (lr, ...), so each line is one cell."""
    setting_keys = [k for k in row_keys if k != "bs"]
    colors = plots.palette(an.norms)

    def rows_of(frame: pd.DataFrame) -> pd.Series:
        if not setting_keys:
            return pd.Series("", index=frame.index)
        return frame.apply(lambda r: label({k: r[k] for k in setting_keys}), axis=1)

    done = sort_cells(runs[runs["status"] == "completed"], ["norm", *row_keys], an.norms)
    done = done.assign(row=rows_of(done))
    ids = list(done.index)
    for split, name in [m for m in metrics if not GAN_CURVES.search(m[1])]:
        frame = curves(split, name, ids).merge(done[["norm", "bs", "row"]], left_on="run_id",
                                               right_index=True)
        if frame["epoch"].nunique() > 1:  # not a value logged once (a GAN's epoch-0 reference)
            frame = frame.sort_values("bs", kind="stable").assign(col="bs=" + frame["bs"].astype(str))
            sec.figures.append(plots.line_grid(frame, colors, metric_label(split, name),
                                               f"{slug}_curve_{split}_{name}",
                                               f"Learning curves: {metric_label(split, name)}"))
    gan = sorted({(s, n) for s, n in summary[["split", "name"]].itertuples(index=False)
                  if GAN_CURVES.search(n)})
    if gan:
        parts = [curves(s, n, ids).assign(col=f"{s} {GAN_TITLES.get(n, n)}") for s, n in gan]
        frame = pd.concat(parts).merge(done[["norm", "bs", "row"]], left_on="run_id", right_index=True)
        frame["row"] = ("bs=" + frame["bs"].astype(str) + ", " + frame["row"]).str.strip(", ")
        if not frame.empty:
            sec.figures.append(plots.line_grid(frame, colors, "", f"{slug}_gan",
                                               "GAN: uniformity and FID over epochs", sharey="col"))
    points = [summary[(summary["split"] == s) & (summary["name"] == n)].assign(col=metric_label(s, n))
              for s, n in metrics]
    if points:
        points = sort_cells(pd.concat(points).query("n > 0"), ["norm", *row_keys], an.norms)
        points = points.assign(row=rows_of(points))
        if points["bs"].nunique() > 1:
            sec.figures.append(plots.final_vs_bs(points, colors, f"{slug}_vs_bs",
                                                 "Final metrics against batch size"))
        directions = {metric_label(s, n): stats.better(n) for s, n in metrics}
        sec.figures.append(plots.heatmap(points, an.norms, directions, f"{slug}_heatmap",
                                         "Norm × batch size"))
    timed = done[done["duration_s"].notna()]
    if not timed.empty:
        sec.figures.append(plots.time_cost(timed, colors, f"{slug}_time_plot", "Time cost per run"))
