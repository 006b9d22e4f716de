"""The report's figures (seaborn/matplotlib) as PNG bytes, drawn from aggregates.

Every plot is drawn from per-cell means and stds computed with a pandas groupby first: seaborn's
default per-point bootstrap on 5,000 runs x 100 epochs takes minutes, the groupby well under a
second. Grids are rows of settings (lr, model.width, ... whatever else varied) and are cut at
`MAX_ROWS`, saying so in the caption. A panel with no data (runs of 1 epoch have no bs=128 row,
say) is left out rather than drawn empty.

Sizes, fonts and the panel grid: analysis/panels.py.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, NullLocator

from analysis.cells import fmt_value
from analysis.panels import DPI, PANEL_HEIGHT, PLAIN, TICK_PT, WRAP, WRAP_METRICS, Grid, height, legend

MAX_ROWS = 6


@dataclass
class Figure:
    name: str     # file stem
    title: str
    caption: str
    png: bytes


def palette(norms: list[str]) -> dict[str, tuple]:
    """One colour per norm, the same in every figure."""
    return dict(zip(norms, sns.color_palette("tab10", max(10, len(norms))), strict=False))


def _png(fig) -> bytes:
    # Laid out once, in Grid.finish: not also bbox_inches="tight" (each costs a full draw;
    # together they were a third of the report's time on 5,000 runs).
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _cut(labels: list, what: str) -> tuple[list, str]:
    if len(labels) <= MAX_ROWS:
        return labels, ""
    return labels[:MAX_ROWS], f" Showing {MAX_ROWS} of {len(labels)} {what}; filter the report to see others."


def _panels(frame: pd.DataFrame, rows: list):
    """((row, col), rows of `frame` for that panel), for the rows shown (not cut by _cut)."""
    for (r, c), panel in frame.groupby(["row", "col"], sort=False):
        if r in rows:
            yield (r, c), panel


def line_grid(frame: pd.DataFrame, colors: dict, ylabel: str, name: str, title: str,
              sharey: str = "row") -> Figure:
    """Mean over seeds with a ±1 std band, per (row, col) panel and norm.

    `frame`: columns row, col, norm, run_id, epoch, value (one row per run and epoch).
    `sharey`: 'row' when columns are batch sizes of one metric, 'col' when they are metrics.
    """
    agg = (frame.groupby(["row", "col", "norm", "epoch"], sort=False)["value"]
           .agg(["mean", "std", "count"]).reset_index())
    rows, cut = _cut(list(pd.unique(frame["row"])), "settings")
    cols = list(pd.unique(frame.loc[frame["row"].isin(rows), "col"]))
    grid = Grid(rows, cols, "whitegrid", WRAP, height(len(cols), WRAP), sharex="all", sharey=sharey)
    marker = "o" if agg["epoch"].nunique() <= 20 else None  # sparse metrics (FID every k epochs)
    for (r, c), panel in _panels(agg, rows):
        ax = grid.ax(r, c)
        for norm, line in panel.groupby("norm", sort=False):
            line = line.sort_values("epoch")
            x, y = line["epoch"].to_numpy(float), line["mean"].to_numpy(float)
            band = line["std"].fillna(0).to_numpy(float)  # one run: no band
            ax.plot(x, y, color=colors[norm], lw=2, marker=marker, ms=5)
            ax.fill_between(x, y - band, y + band, color=colors[norm], alpha=0.2, lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid.finish("epoch", ylabel)
    legend(grid.fig, colors, set(agg["norm"]))
    return Figure(name, title, "Mean over seeds of completed runs, band ±1 std." + cut, _png(grid.fig))


def final_vs_bs(summary: pd.DataFrame, colors: dict, name: str, title: str) -> Figure:
    """Final metric against batch size (log2 axis, ticks at the batch sizes), mean ± std per norm.

    `summary`: columns row, col (metric), norm, bs, mean, std, n.
    """
    rows, cut = _cut(list(pd.unique(summary["row"])), "settings")
    cols = list(pd.unique(summary.loc[summary["row"].isin(rows), "col"]))
    grid = Grid(rows, cols, "whitegrid", WRAP_METRICS, height(len(cols), WRAP_METRICS),
                sharex="all", sharey="col")
    sizes = sorted(summary["bs"].unique())
    for (r, c), panel in _panels(summary, rows):
        ax = grid.ax(r, c)
        for norm, pts in panel.groupby("norm", sort=False):
            pts = pts.sort_values("bs")
            ax.errorbar(pts["bs"].to_numpy(float), pts["mean"].to_numpy(float),
                        yerr=pts["std"].fillna(0).to_numpy(float), color=colors[norm], marker="o",
                        ms=6, capsize=4, lw=2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)  # one shared x axis: every batch size of the figure as a tick
        ax.xaxis.set_major_formatter(PLAIN)
        ax.xaxis.set_minor_locator(NullLocator())
    grid.finish("batch size")
    legend(grid.fig, colors, set(summary["norm"]))
    return Figure(name, title, "Final value, mean ± 1 std over seeds of completed runs." + cut,
                  _png(grid.fig))


def heatmap(summary: pd.DataFrame, norms: list[str], directions: dict, name: str, title: str) -> Figure:
    """norm x batch size, the mean final value annotated; brighter = better where known.

    One colour scale per metric (column), shared by all its panels, beside each as a colorbar: a
    scale per panel showed 0.968 and 0.977 as the two ends of viridis. Drawn with imshow:
    seaborn's heatmap draws the whole figure once per call (to check tick label overlap), which
    made a 6 x 2 grid take 17 s instead of 1 s.
    """
    rows, cut = _cut(list(pd.unique(summary["row"])), "settings")
    shown = summary[summary["row"].isin(rows)]
    cols = list(pd.unique(shown["col"]))
    tall = 0.45 * shown["norm"].nunique() + 1.2  # inches: a norm per line of TICK_PT text, and room
    grid = Grid(rows, cols, "white", WRAP_METRICS, float(np.clip(tall, PANEL_HEIGHT[0], 7.0)), top=0.1)
    scales = {c: (part["mean"].min(), part["mean"].max()) for c, part in shown.groupby("col")}
    for (r, metric), panel in _panels(summary, rows):
        ax = grid.ax(r, metric)
        table = panel.pivot_table(index="norm", columns="bs", values="mean", aggfunc="first")
        table = table.reindex([n for n in norms if n in table.index])
        cmap = plt.get_cmap("viridis_r" if directions.get(metric) == "min" else "viridis")
        values = table.to_numpy(dtype=float)
        low, high = scales[metric]
        image = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto")
        bar = grid.fig.colorbar(image, ax=ax, aspect=15, pad=0.02)
        bar.ax.yaxis.set_major_formatter(PLAIN)
        scaled = (values - low) / (high - low) if high > low else np.full_like(values, 0.5)
        for (i, j), v in np.ndenumerate(values):
            if v == v:  # dark text on the bright end of the colormap
                shade = scaled[i, j] if cmap.name == "viridis" else 1 - scaled[i, j]
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=TICK_PT,
                        color="black" if shade > 0.6 else "white")
        ax.set_xticks(range(len(table.columns)), [fmt_value(b) for b in table.columns])
        ax.set_yticks(range(len(table.index)), list(table.index))
    grid.finish("batch size")
    return Figure(name, title, "Mean final value over seeds of completed runs; one colour scale per "
                  "metric, brighter is better where the direction is known." + cut, _png(grid.fig))


def time_cost(runs: pd.DataFrame, colors: dict, name: str, title: str) -> Figure:
    """Seconds per completed run by batch size and norm (bars: mean, whiskers: ±1 std), one
    seconds axis for all panels.

    Drawn from the groupby's means with plain bars: seaborn's barplot on a log axis averages the
    logs (a geometric mean: 13 s for runs of 6, 7 and 52 s, whose mean is 22 s), and the number
    would depend on which panels had the log axis when they were drawn.

    `runs`: columns row, norm, bs, duration_s (one row per run).
    """
    rows, cut = _cut(list(pd.unique(runs["row"])), "settings")
    grid = Grid(rows, [""], "whitegrid", 1, PANEL_HEIGHT[0], sharey="all")  # one unnamed column
    norms = [n for n in colors if n in set(runs["norm"])]
    sizes = sorted(runs["bs"].unique())  # every panel has every batch size, so they line up
    cells = runs.groupby(["row", "bs", "norm"], sort=False)["duration_s"].agg(["mean", "std"]).reset_index()
    width = 0.8 / len(norms)
    for r, panel in cells.groupby("row", sort=False):
        if r not in rows:
            continue
        ax = grid.ax(r, "")
        for k, norm in enumerate(norms):
            bars = panel[panel["norm"] == norm]
            x = [sizes.index(b) + (k - (len(norms) - 1) / 2) * width for b in bars["bs"]]
            ax.bar(x, bars["mean"], width * 0.95, color=colors[norm], yerr=bars["std"].fillna(0),
                   capsize=3, error_kw={"ecolor": "#333", "lw": 1.5})
        ax.set_xticks(range(len(sizes)), [fmt_value(b) for b in sizes])
        ax.set_xlim(-0.5, len(sizes) - 0.5)
    seconds = runs["duration_s"]
    if seconds.max() > 20 * seconds.min() > 0:  # bs 2 vs 512: minutes vs hours
        ax = grid.first["y", 0]
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(NullFormatter())
        # bars start at the bottom: half the shortest run, not where a whisker ends (below 0)
        ax.set_ylim(seconds.min() / 2, (cells["mean"] + cells["std"].fillna(0)).max() * 1.5)
    grid.finish("batch size", "seconds per run")
    legend(grid.fig, colors, set(norms))
    return Figure(name, title, "runs.duration_s of completed runs, mean ± 1 std." + cut, _png(grid.fig))
