"""The figures' panel grid and sizes: one setting per row of panels, at most a few panels a
line, empty panels hidden, tick labels once per group of panels that share an axis.

Sizes: every figure is `FIG_WIDTH` x `DPI` = 1,200 px wide, index.html's content width in a
1,300 px window (analysis/document.py), where it is shown at its own size. Text is at least
`TICK_PT` points = 16.7 px in the PNG, so it is still 10.7 px in an 800 px window (768 px of
content: the figure at 64%). The report used to draw 7 pt text at 80 dpi (7.8 px) on figures
half the page wide.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (CI, ssh); switches pyplot if already imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

DPI = 100
FIG_WIDTH = 12.0  # inches: 1,200 px, the page's content width (document.py: max-width 1232px - padding)
TICK_PT = 12      # the smallest text (ticks, legend, heatmap values), in points
TEXT_PX = TICK_PT * DPI / 72  # ... in the PNG's pixels: 16.7
PANEL_HEIGHT = (2.8, 4.2)  # inches per line of panels, at least / at most
LEGEND_IN = 0.7   # inches above the panels for the norms' legend: a title line and a line of names
WRAP = 4          # panels a line: 300 px each, room for 5-6 tick labels of TICK_PT
WRAP_METRICS = 3  # ... when panels are metrics (longer titles) or heatmaps (a colorbar each)
THEME = {"font.size": TICK_PT + 1, "axes.titlesize": TICK_PT + 2, "axes.labelsize": TICK_PT + 1,
         "xtick.labelsize": TICK_PT, "ytick.labelsize": TICK_PT, "legend.fontsize": TICK_PT,
         "legend.title_fontsize": TICK_PT}
PLAIN = FuncFormatter(lambda v, _pos: f"{v:g}")  # 2, 128, 0.5, 60: not 2^1 or 6x10^0


class Grid:
    """Panels (setting row i, column j) `FIG_WIDTH` wide, at most `wrap` columns a line: a row
    of more columns goes on over more lines. Panels without data are hidden (`finish`).

    `sharex`, `sharey`: which panels share an axis: 'all', 'row' (the same setting), 'col' (the
    same column, e.g. a metric) or None. Tick labels are drawn once per group of neighbours
    that share them.
    """

    def __init__(self, rows: list, cols: list, style: str, wrap: int, height: float,
                 sharex: str | None = None, sharey: str | None = None, top: float = LEGEND_IN):
        sns.set_theme(style=style, rc=THEME)
        self.rows, self.cols, self.share, self.top = rows, cols, {"x": sharex, "y": sharey}, top
        self.lines = -(-len(cols) // wrap)  # grid lines per setting row
        self.width = -(-len(cols) // self.lines)  # balanced: 5 columns as 3 + 2, not 4 + 1
        self.fig, self.axes = plt.subplots(len(rows) * self.lines, self.width, squeeze=False,
                                           figsize=(FIG_WIDTH, height * len(rows) * self.lines + top))
        self.filled: dict[tuple[int, int], tuple[int, int]] = {}  # grid position -> (i, j)
        self.first: dict[tuple, plt.Axes] = {}  # the first axes of each sharing group

    def _group(self, axis: str, i: int, j: int):
        mode = self.share[axis]
        return None if mode is None else (axis, {"all": 0, "row": i, "col": j}[mode])

    def ax(self, row, col) -> plt.Axes:
        """The axes of one panel, now marked as having data."""
        i, j = self.rows.index(row), self.cols.index(col)
        pos = (i * self.lines + j // self.width, j % self.width)
        ax = self.axes[pos]
        if pos not in self.filled:
            self.filled[pos] = (i, j)
            for axis in ("x", "y"):
                group = self._group(axis, i, j)
                if group is not None and group in self.first:
                    getattr(ax, f"share{axis}")(self.first[group])
                elif group is not None:
                    self.first[group] = ax
        return ax

    def _shared(self, axis: str, a: tuple[int, int] | None, b: tuple[int, int]) -> bool:
        return a is not None and self._group(axis, *a) is not None and \
            self._group(axis, *a) == self._group(axis, *b)

    def finish(self, xlabel: str, ylabel: str = "") -> None:
        """Hide the panels with no data and label the others: a column's name over a panel unless
        the one above shows the same column, x ticks and label under a panel unless the one below
        shares its x axis, y ticks unless the one to its left shares them, and the setting (and
        `ylabel`) left of each line's first panel."""
        for pos, ax in np.ndenumerate(self.axes):
            ax.set_visible(pos in self.filled)
        for (r, c), (i, j) in self.filled.items():
            ax = self.axes[r, c]
            above, below, left = (self.filled.get(p) for p in ((r - 1, c), (r + 1, c), (r, c - 1)))
            ax.set_title(self.cols[j] if above is None or above[1] != j else "")
            inner_x = self._shared("x", below, (i, j))
            ax.tick_params(labelbottom=not inner_x)
            ax.set_xlabel("" if inner_x else xlabel)
            ax.tick_params(labelleft=not self._shared("y", left, (i, j)))
            setting = self.rows[i].replace(", ", "\n")
            ax.set_ylabel("\n".join(t for t in (setting, ylabel) if t) if left is None else "")
        # One layout pass, under `top` inches left for the legend. Matplotlib's constrained layout
        # places the legend itself but measures every tick label twice: 37 of the 71 s that the
        # figures of 5,000 runs took to save (python -m analysis.benchmark, cProfile).
        self.fig.tight_layout(rect=(0, 0, 1, 1 - self.top / self.fig.get_figheight()))


def legend(fig, colors: dict, used: set) -> None:
    """The norms' colours, once, above the panels (never over a curve)."""
    handles = [plt.Line2D([], [], color=colors[n], lw=3, label=n) for n in colors if n in used]
    fig.legend(handles=handles, title="norm", loc="upper center", bbox_to_anchor=(0.5, 1.0),
               ncols=min(len(handles), 8), frameon=False)


def height(cols: int, wrap: int, aspect: float = 0.75) -> float:
    """Inches per line of panels: `aspect` times the panel width (as Grid lays them out),
    within PANEL_HEIGHT."""
    width = -(-cols // -(-cols // wrap))
    return float(np.clip(FIG_WIDTH / width * aspect, *PANEL_HEIGHT))
