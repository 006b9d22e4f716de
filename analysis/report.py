"""`python -m analysis.report --db URL --out DIR`: the write-ups' tables and plots from the database.

Writes DIR/index.html (self-contained: figures as base64 PNG, no external asset), DIR/report.md
(figures in DIR/figures/), and DIR/tables/: one .md and .tex per table, and CSVs of the numbers
behind them (final_metrics.csv, comparisons.csv, time_cost.csv, runs_not_averaged.csv).
An empty database or a filter that matches nothing is a one-line error and exit status 1; a bad
option (`--alpha 5`, a `--baseline` that is not a norm of the selected runs) one line and status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from analysis import cells, load, repeats
from bench.errors import UserError, one_line
from db.cli import OneLineParser
from db.engine import open_readonly

# The modules that draw and test (matplotlib, seaborn, scipy: ~2.5 s to import) are imported in
# build() and write(), after the selection is checked: a mistyped filter is reported at once.

LISTED_RUNS = 200  # rows of "Runs not averaged" in the page; the CSV has them all


class BadOption(UserError):
    """An option whose allowed values depend on the selected runs (--baseline): exit status 2,
    as argparse's own errors."""


def alpha_value(text: str) -> float:
    """--alpha: a significance level, 0 < alpha < 1 (5 or 0 would mark everything or nothing)."""
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not 0 < alpha < 1:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed (allowed: a number with 0 < alpha < 1, "
                                         "e.g. 0.05)")
    return alpha


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    p.add_argument("--db", default=load.DEFAULT_URL, help="results database URL (default: %(default)s)")
    p.add_argument("--out", default="reports", type=Path, help="output directory (default: %(default)s)")
    for key in ("task", "dataset", "model", "norm"):
        p.add_argument(f"--{key}", action="append", default=[], metavar="NAME",
                       help=f"only runs with this {key} (repeat or comma-separate for several)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only runs with this setting, e.g. lr=0.001 or model.width=16 (repeatable)")
    p.add_argument("--baseline", help="norm the others are tested against, one of the selected runs' "
                   "norms (default: none, when there are runs of it)")
    p.add_argument("--alpha", type=alpha_value, default=0.05,
                   help="significance level, 0 < alpha < 1 (default: %(default)s)")
    p.add_argument("--repeats", action="store_true", help="also average the runs trained again on "
                   "purpose (resume=false) with the first run of their config (analysis/repeats.py)")
    p.add_argument("--timings", action="store_true", help="print the time each step took")
    return p.parse_args(argv)


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v for item in values for v in item.split(",") if v)


def _where(table: pd.DataFrame, conditions: list[str]) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for cond in conditions:
        key, sep, value = cond.partition("=")
        if not sep or key not in table.columns:
            known = ", ".join(sorted(c for c in table.columns))
            raise UserError(f"--where {cond!r}: expected KEY=VALUE with KEY one of: {known}")
        column = table[key]
        if pd.api.types.is_numeric_dtype(column):
            try:
                mask &= column.astype("float64") == float(value)
            except ValueError:
                raise UserError(f"--where {cond!r}: {key} is a number") from None
        else:
            mask &= column.map(cells.fmt_value) == value
    return mask


class Clock:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.steps: dict[str, float] = {}

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step] = now - self.last
        self.last = now


def _threads_fact(threads: pd.Series) -> str:
    """'1 (20 runs), 2 (1 run)'; missing counts (rows older than runs.threads) as 'not recorded'."""
    counts = threads.map(lambda t: "not recorded" if t != t else str(int(t))).value_counts()
    order = sorted(counts.index, key=lambda t: (not t.isdigit(), int(t) if t.isdigit() else 0))
    shown = ", ".join(f"{t} ({counts[t]} run{'s' if counts[t] > 1 else ''})" for t in order)
    return shown if len(counts) > 1 else f"{order[0]} (every run)"


def build(opts: argparse.Namespace, clock: Clock):
    """(Document, {csv name: DataFrame}); a UserError when nothing is selected."""
    engine = open_readonly(opts.db)  # creates and changes nothing, even on a writable file
    filters = load.Filters(task=_split(opts.task), dataset=_split(opts.dataset),
                           model=_split(opts.model), norm=_split(opts.norm))
    runs = load.load_runs(engine, filters)
    shown_db = make_url(opts.db).render_as_string(hide_password=True)
    if runs.empty:
        total = load.count_runs(engine)
        if total.empty:
            raise UserError(f"no runs in the database {shown_db} (train some with `python -m bench.run`)")
        have = ", ".join(f"{task} {n}" for task, n in total.items())
        raise UserError(f"no runs match {filters.describe()} (the database has: {have})")
    table = cells.settings_table(runs)
    table = table[_where(table.assign(seed=runs["seed"]), opts.where)]
    if table.empty:
        raise UserError(f"no runs match --where {' '.join(opts.where)} among {len(runs)} runs")
    keys = cells.swept(table)
    runs = runs.loc[table.index]
    norms = sorted(runs["norm"].unique())
    if opts.baseline is not None and opts.baseline not in norms:
        raise BadOption(f"--baseline {opts.baseline!r} is not allowed (allowed: a norm of the selected "
                        f"runs: {', '.join(norms)})")
    baseline = "none" if opts.baseline is None else opts.baseline
    frame = pd.concat([table, runs[["status", "seed", "epochs_done", "duration_s", "threads", "error"]]],
                      axis=1)
    frame, one_per_config = repeats.mark(frame, runs, keys, repeats=opts.repeats)
    clock("load runs")
    from analysis.document import Document, Section
    from analysis.sections import analyse, section
    from analysis.tables import runs_table
    clock("import plotting, scipy")
    final = load.load_final(engine, filters)
    final = final[final["run_id"].isin(runs.index)]
    clock("load final metrics (SQL)")
    an = analyse(frame, final, keys, baseline, opts.alpha)
    clock("statistics")

    def curves(split: str, name: str, run_ids) -> pd.DataFrame:
        return load.load_curves(engine, split, name, run_ids)

    sections = [section(an, dict(zip(cells.SECTION, values, strict=True)), curves)
                for values, _ in frame.groupby(list(cells.SECTION), sort=True)]
    clock("tables and figures")
    left = frame[frame["status"] != "completed"].sort_index()
    counts = frame["status"].value_counts()
    fixed = cells.fixed(table)
    facts = [("database", shown_db), ("selection", filters.describe() + "".join(f" {w}" for w in opts.where)),
             ("generated", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
             ("runs", ", ".join(f"{n} {s}" for s, n in counts.items())),
             ("varied", ", ".join(k for k in keys if frame[k].nunique(dropna=False) > 1) or "seed only"),
             ("fixed settings", ", ".join(f"{k}={cells.fmt_value(v)}" for k, v in fixed.items()) or "–"),
             ("CPU threads", _threads_fact(runs["threads"])),
             ("baseline", f"{baseline} (Welch's t-test, alpha {opts.alpha:g})")]
    tail = Section(id="not-averaged", title="Runs not averaged")
    tail.paragraphs.append("Failed, diverged and running runs are left out of every mean above and "
                           "counted per cell in the tables' 'not averaged' column." if len(left)
                           else "Every selected run completed.")
    if one_per_config:
        tail.paragraphs.append(one_per_config)
    if len(left):
        tail.tables.append(runs_table("runs_not_averaged", "Failed, diverged or running", left,
                                      [k for k in keys if k not in cells.SECTION or frame[k].nunique() > 1],
                                      LISTED_RUNS))
    doc = Document("normbench report", facts, sections + [tail])
    time_cost = an.durations.merge(an.per_epoch, on=keys, how="outer", suffixes=("", "_per_epoch"))
    listed = list(dict.fromkeys([*keys, "seed", "status", "epochs_done", "epochs", "duration_s", "threads",
                                 "error"]))
    final_csv = an.summary.merge(an.excluded, on=keys, how="left").merge(
        an.threads.rename(columns={"mixed": "threads_mixed"}), on=keys, how="left")
    csvs = {"final_metrics": final_csv,
            "comparisons": an.comparison, "time_cost": time_cost, "bn_modes": an.paired,
            "runs_not_averaged": left[listed].rename_axis("run_id").reset_index()}
    return doc, csvs


def write(doc, csvs: dict[str, pd.DataFrame], out: Path) -> Path:
    from analysis.document import to_index_html, to_report_md
    from analysis.formats import to_latex, to_markdown

    for folder, pattern in (("figures", "*.png"), ("tables", "*.md"), ("tables", "*.tex"),
                            ("tables", "*.csv")):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for old in (out / folder).glob(pattern):  # a previous report's files, so none is stale
            old.unlink()
    for s in doc.sections:
        for t in s.tables:
            (out / "tables" / f"{t.name}.md").write_text(to_markdown(t), encoding="utf-8")
            (out / "tables" / f"{t.name}.tex").write_text(to_latex(t), encoding="utf-8")
        for f in s.figures:
            (out / "figures" / f"{f.name}.png").write_bytes(f.png)
    for name, frame in csvs.items():
        frame.to_csv(out / "tables" / f"{name}.csv", index=False)
    (out / "report.md").write_text(to_report_md(doc), encoding="utf-8")
    page = out / "index.html"
    page.write_text(to_index_html(doc), encoding="utf-8")
    return page


def main(argv=None) -> int:
    opts = parse_args(argv)
    clock = Clock()
    try:
        doc, csvs = build(opts, clock)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, BadOption) else 1
    except (DBAPIError, pd.errors.DatabaseError) as e:  # a `runs` table not ours, a lost connection
        # pandas wraps SQLAlchemy's error in its own, with the whole statement: show the cause's.
        cause = e.__cause__ if isinstance(e, pd.errors.DatabaseError) and e.__cause__ else e
        print(f"error: cannot read the results database: {one_line(cause, with_type=False)}",
              file=sys.stderr)
        return 1
    try:
        page = write(doc, csvs, opts.out)
    except OSError as e:
        print(f"error: cannot write the report to {str(opts.out)!r}: {e.strerror or e}", file=sys.stderr)
        return 1
    clock("write files")
    if opts.timings:
        for step, seconds in clock.steps.items():
            print(f"  {step:<28} {seconds:6.2f} s")
    figures = sum(len(s.figures) for s in doc.sections)
    tables = sum(len(s.tables) for s in doc.sections)
    print(f"report: {tables} tables, {figures} figures -> {page} "
          f"({page.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - clock.start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
