"""The report's figures (seaborn/matplotlib) as PNG bytes, drawn from aggregates.

Every plot is drawn from per-cell means and stds computed with a pandas groupby first: seaborn's
default per-point bootstrap on 5,000 runs x 100 epochs takes minutes, the groupby well under a
second. Grids are rows of settings (lr, model.width, ... whatever else varied) and are cut at
`MAX_ROWS`, saying so in the caption.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (CI, ssh)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator, ScalarFormatter  # noqa: E402

from analysis.cells import fmt_value  # noqa: E402

MAX_ROWS = 6
DPI = 80
FIG_WIDTH = 15.0  # inches at most, so a grid stays readable in a 1280 px wide browser


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
    # One layout pass: tight_layout here, not also bbox_inches="tight" (each costs a full draw;
    # together they were a third of the report's time on 5,000 runs).
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _grid(rows: list, cols: list, panel=(4.0, 3.0), **share):
    """A rows x cols grid of axes; `share`: sharex/sharey as plt.subplots (fewer tick labels to draw)."""
    width = min(FIG_WIDTH, panel[0] * len(cols))
    height = panel[1] * len(rows) * width / (panel[0] * len(cols))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(width, max(height, 2.5)), squeeze=False,
                             **share)
    return fig, axes


def _cut(labels: list, what: str) -> tuple[list, str]:
    if len(labels) <= MAX_ROWS:
        return labels, ""
    return labels[:MAX_ROWS], f" Showing {MAX_ROWS} of {len(labels)} {what}; filter the report to see others."


def _legend(axes, colors: dict, used: set) -> None:
    """The norms' colours, in the first panel (a legend outside the axes needs bbox_inches)."""
    handles = [plt.Line2D([], [], color=colors[n], lw=2, label=n) for n in colors if n in used]
    axes[0, 0].legend(handles=handles, title="norm", fontsize=7, title_fontsize=7, loc="best")


def _labels(axes, rows: list, cols: list, xlabel: str, ylabel: str = "") -> None:
    """Column names on the top row, row names (the settings) as the first column's y label,
    the x label on the bottom row: less text to draw than a title on every panel, and long
    setting names no longer overlap."""
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ax.set_title(c if i == 0 else "", fontsize=9)
            ax.set_xlabel(xlabel if i == len(rows) - 1 else "")
            ax.set_ylabel("\n".join(t for t in (r.replace(", ", "\n"), ylabel) if t) if j == 0 else "")


def _panels(frame: pd.DataFrame, rows: list, cols: list, axes):
    """(axis, rows of `frame` for it) for each (row, col) panel shown (rows cut by _cut are not)."""
    for (r, c), panel in frame.groupby(["row", "col"], sort=False):
        if r in rows:
            yield axes[rows.index(r), cols.index(c)], panel


def line_grid(frame: pd.DataFrame, colors: dict, ylabel: str, name: str, title: str,
              sharey: str = "row") -> Figure:
    """Mean over seeds with a ±1 std band, per (row, col) panel and norm.

    `frame`: columns row, col, norm, run_id, epoch, value (one row per run and epoch).
    `sharey`: 'row' when columns are batch sizes of one metric, 'col' when they are metrics.
    """
    agg = (frame.groupby(["row", "col", "norm", "epoch"], sort=False)["value"]
           .agg(["mean", "std", "count"]).reset_index())
    rows, cut = _cut(list(pd.unique(frame["row"])), "settings")
    cols = list(pd.unique(frame["col"]))
    sns.set_theme(style="whitegrid", font_scale=0.8)
    fig, axes = _grid(rows, cols, sharex=True, sharey=sharey)
    marker = "o" if agg["epoch"].nunique() <= 20 else None  # sparse metrics (FID every k epochs)
    for ax, panel in _panels(agg, rows, cols, axes):
        for norm, line in panel.groupby("norm", sort=False):
            line = line.sort_values("epoch")
            x, y = line["epoch"].to_numpy(float), line["mean"].to_numpy(float)
            band = line["std"].fillna(0).to_numpy(float)  # one run: no band
            ax.plot(x, y, color=colors[norm], lw=1.5, marker=marker, ms=3)
            ax.fill_between(x, y - band, y + band, color=colors[norm], alpha=0.2, lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _labels(axes, rows, cols, "epoch", ylabel)
    _legend(axes, colors, set(agg["norm"]))
    return Figure(name, title, "Mean over seeds of completed runs, band ±1 std." + cut, _png(fig))


def final_vs_bs(summary: pd.DataFrame, colors: dict, name: str, title: str) -> Figure:
    """Final metric against batch size (log2 axis), mean ± std per norm.

    `summary`: columns row, col (metric), norm, bs, mean, std, n.
    """
    rows, cut = _cut(list(pd.unique(summary["row"])), "settings")
    cols = list(pd.unique(summary["col"]))
    sns.set_theme(style="whitegrid", font_scale=0.8)
    fig, axes = _grid(rows, cols, sharex=True, sharey="col")
    for ax, panel in _panels(summary, rows, cols, axes):
        for norm, pts in panel.groupby("norm", sort=False):
            pts = pts.sort_values("bs")
            ax.errorbar(pts["bs"].to_numpy(float), pts["mean"].to_numpy(float),
                        yerr=pts["std"].fillna(0).to_numpy(float), color=colors[norm], marker="o",
                        ms=4, capsize=3, lw=1.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(panel["bs"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    _labels(axes, rows, cols, "batch size")
    _legend(axes, colors, set(summary["norm"]))
    return Figure(name, title, "Final value, mean ± 1 std over seeds of completed runs." + cut, _png(fig))


def heatmap(summary: pd.DataFrame, norms: list[str], directions: dict, name: str, title: str) -> Figure:
    """norm x batch size, the mean final value annotated; brighter = better where known.

    Drawn with imshow: seaborn's heatmap draws the whole figure once per call (to check tick
    label overlap), which made a 6 x 2 grid take 17 s instead of 1 s.
    """
    rows, cut = _cut(list(pd.unique(summary["row"])), "settings")
    cols = list(pd.unique(summary["col"]))
    sns.set_theme(style="white", font_scale=0.8)
    fig, axes = _grid(rows, cols, panel=(4.5, 3.2))
    for ax, panel in _panels(summary, rows, cols, axes):
        grid = panel.pivot_table(index="norm", columns="bs", values="mean", aggfunc="first")
        grid = grid.reindex([n for n in norms if n in grid.index])
        cmap = plt.get_cmap("viridis_r" if directions.get(panel["col"].iloc[0]) == "min" else "viridis")
        values = grid.to_numpy(dtype=float)
        low, high = np.nanmin(values), np.nanmax(values)
        ax.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto")
        scaled = (values - low) / (high - low) if high > low else np.full_like(values, 0.5)
        for (i, j), v in np.ndenumerate(values):
            if v == v:  # dark text on the bright end of the colormap
                shade = scaled[i, j] if cmap.name == "viridis" else 1 - scaled[i, j]
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if shade > 0.6 else "white")
        ax.set_xticks(range(len(grid.columns)), [fmt_value(b) for b in grid.columns])
        ax.set_yticks(range(len(grid.index)), list(grid.index))
    _labels(axes, rows, cols, "batch size")
    return Figure(name, title, "Mean final value over seeds of completed runs; brighter is better "
                  "where the direction is known." + cut, _png(fig))


def time_cost(runs: pd.DataFrame, colors: dict, name: str, title: str) -> Figure:
    """Seconds per completed run by batch size and norm (bars: mean, whiskers: ±1 std).

    `runs`: columns row, norm, bs, duration_s (one row per run).
    """
    rows, cut = _cut(list(pd.unique(runs["row"])), "settings")
    sns.set_theme(style="whitegrid", font_scale=0.8)
    fig, axes = _grid(rows, ["time"], panel=(7.0, 3.0))
    norms = [n for n in colors if n in set(runs["norm"])]
    for r, panel in runs.groupby("row", sort=False):
        if r not in rows:
            continue
        ax = axes[rows.index(r), 0]
        sns.barplot(data=panel, x="bs", y="duration_s", hue="norm", hue_order=norms,
                    palette=colors, errorbar="sd", ax=ax, legend=False)
        if runs["duration_s"].max() > 20 * runs["duration_s"].min() > 0:
            ax.set_yscale("log")  # bs 2 vs 512: minutes vs hours
    _labels(axes, rows, [""], "batch size", "seconds per run")
    _legend(axes, colors, set(norms))
    return Figure(name, title, "runs.duration_s of completed runs, mean ± 1 std." + cut, _png(fig))

