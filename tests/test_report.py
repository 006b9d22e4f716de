"""`python -m analysis.report` end to end on small databases built with ResultsDB."""

import base64
import contextlib
import io
import math
import re
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_db_cli import read_only, snapshot

from analysis import browser_check, panels, plots, report
from analysis.distance import distance_ratio
from analysis.tables import BATCHSTATS_RULE
from db import ResultsDB

CHROMIUM = Path("/usr/bin/chromium")


def _run(db: ResultsDB, task: str, model: str, norm: str, bs: int, seed: int, curve: list[dict]) -> int:
    cfg = {"task": {"name": task}, "norm": {"name": norm}, "bs": bs, "seed": seed}
    run_id = db.start_run(task=task, dataset="digits", model=model, norm=norm, bs=bs, lr=1e-3,
                          seed=seed, epochs=len(curve), config=cfg, config_hash=f"{task}{norm}{bs}{seed}")
    for epoch, metrics in enumerate(curve, start=1):
        db.log_epoch(run_id, epoch, metrics)
    db.finish(run_id, "completed")
    return run_id


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """Three tasks: a classifier, an autoencoder (mse) and a GAN (fid every 2nd epoch,
    uniformity in 'train'); none vs bn at two batch sizes, two seeds."""
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "bench.db"
    mse = {}
    with ResultsDB(f"sqlite:///{path}") as db:
        for norm in ("none", "bn"):
            for bs in (8, 128):
                for seed in (0, 1):
                    k = (norm == "bn") + seed / 10
                    # BN runs also have the PreciseBN and batch-statistics splits (bench.bn_eval):
                    # PreciseBN 0.02 + seed / 1000 above EMA in every run
                    curve = []
                    for e in range(3):
                        acc = 0.5 + k / 10 + e / 10
                        curve.append({("test", "acc"): acc, ("test", "loss"): 1 - e / 10 - k / 20,
                                      ("train", "time_s"): 1.0 + bs / 100})
                        if norm == "bn":
                            curve[-1].update({("test_precise", "acc"): acc + 0.02 + seed / 1000,
                                              ("test_batchstats", "acc"): 0.4})
                    _run(db, "classify", "convnet", norm, bs, seed, curve)
                    m = [v + 0.0015 * (norm == "bn") + seed * 1e-4 for v in (0.006, 0.005)]
                    mse.setdefault((norm, bs), []).append(m[-1])
                    _run(db, "autoencode", "ae", norm, bs, seed, [{("test", "mse"): v} for v in m])
                    _run(db, "gan", "dcgan", norm, bs, seed,
                         [{("train", "d_uniformity"): 0.9 - e / 10 - k / 10, ("test", "g_loss"): 1.0,
                           **({("test", "cfid"): 50 - 10 * e - k} if e % 2 else {})} for e in range(4)])
    out = tmp / "out"
    assert report.main(["--db", f"sqlite:///{path}", "--out", str(out)]) == 0
    return out, mse


def test_report_files_tables_and_embedded_images(small_report):
    out, _ = small_report
    html = (out / "index.html").read_text()
    md = (out / "report.md").read_text()
    tables = sorted(p.stem for p in (out / "tables").glob("*.md"))
    assert len(tables) == 10  # final, vs none, time for each of the 3 tasks; classify's BN modes
    for stem in tables:
        assert (out / "tables" / f"{stem}.tex").read_text().startswith("% ")
        assert f'id="{stem}"' in html  # every table is in the page
    for name in ("final_metrics", "comparisons", "time_cost", "runs_not_averaged", "bn_modes"):
        assert (out / "tables" / f"{name}.csv").exists()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    figures = sorted((out / "figures").glob("*.png"))
    assert len(images) == len(figures) >= 12
    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 100
    assert not re.search(r'(src|href)="(https?:|//)', html)  # nothing fetched from elsewhere
    # every table scrolls in its own box when it is wider than the window (the page never does)
    assert html.count("<table") == html.count('<div class="table-scroll"><table>') >= 10
    ids = re.findall(r' id="([^"]+)"', html)
    assert len(ids) == len(set(ids)) and all(f'href="#{i}"' in html for i in ids)
    assert all(f"figures/{f.name}" in md for f in figures)
    assert "task classify / dataset digits / model convnet" in md


def test_autoencoder_distance_ratio_and_gan_curves(small_report):
    out, mse = small_report
    comp = pd.read_csv(out / "tables" / "comparisons.csv")
    md = (out / "tables" / "autoencode-digits-ae_vs_none.md").read_text()
    for bs in (8, 128):
        want = math.sqrt(statistics.mean(mse["bn", bs])) / math.sqrt(statistics.mean(mse["none", bs]))
        [row] = comp[(comp.task == "autoencode") & (comp.bs == bs)].itertuples()
        assert row.ratio == pytest.approx(want, rel=1e-12)
        assert f"| {want:.3f} |" in md
    assert "distance ratio" in md
    assert "ratio" not in (out / "tables" / "classify-digits-convnet_vs_none.md").read_text()
    assert (out / "figures" / "gan-digits-dcgan_gan.png").exists()
    html = (out / "index.html").read_text()
    assert "GAN: uniformity and FID over epochs" in html
    csv = pd.read_csv(out / "tables" / "final_metrics.csv")
    fid = csv[(csv.task == "gan") & (csv.name == "cfid") & (csv.norm == "bn") & (csv.bs == 8)]
    assert fid["mean"].item() == pytest.approx(statistics.mean([50 - 30 - 1, 50 - 30 - 1.1]))  # epoch 3


def test_bn_modes_side_by_side_with_the_paired_difference(small_report):
    out, _ = small_report
    md = (out / "tables" / "classify-digits-convnet_bn_modes.md").read_text()
    rows = [r for r in md.splitlines() if r.startswith("| 8 |") or r.startswith("| 128 |")]
    assert len(rows) == 2  # bn only (none has no statistics layers), one row per bs
    for row in rows:
        cols = [c.strip() for c in row.strip("|").split("|")]
        # bs, lr, metric, EMA, PreciseBN, batch stats, diff, CI, p
        assert cols[2] == "acc" and cols[5] == "0.4 ± 0 (2)" and cols[6] == "+0.0205"
    csv = pd.read_csv(out / "tables" / "bn_modes.csv")
    assert set(csv["norm"]) == {"bn"} and csv["diff"].tolist() == pytest.approx([0.0205, 0.0205])
    # How the batch-statistics split batches the test set (bench/bn_eval.py), under the table.
    rule = ("Batch statistics (`test_batchstats`): BN in train mode on the test set in batches of the "
            "training batch size (the whole test set when it is smaller), in one fixed shuffled order "
            "that is the same for every run; the last batch is filled up with images from the start of "
            "that order, which are not scored again. All three columns score every test image exactly once.")
    assert BATCHSTATS_RULE == rule and rule in md.replace("\n", " ")
    assert rule.replace("`", "") in (out / "index.html").read_text().replace("`", "")


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the plots draw, kept open instead of saved as PNG bytes."""
    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    yield figures
    for fig in figures:
        plt.close(fig)


def _visible(fig):
    fig.canvas.draw()
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _ticks(ax, axis: str) -> list[str]:
    """The tick labels drawn on one axis (shown, and within the axis' view)."""
    low, high = sorted(getattr(ax, f"get_{axis}lim")())
    k = 0 if axis == "x" else 1
    return [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")()
            if t.get_visible() and t.get_text() and low <= t.get_position()[k] <= high]


def test_panels_without_runs_are_left_out(drawn):
    # Runs of 2 epochs at bs 8 and 128, runs of 1 epoch at bs 8 only: 3 panels with data, not 4.
    cells = [("epochs=2", "bs=8"), ("epochs=2", "bs=128"), ("epochs=1", "bs=8")]
    frame = pd.DataFrame([dict(row=r, col=c, norm="bn", run_id=k, epoch=e, value=0.5 + e / 10)
                          for k, (r, c) in enumerate(cells) for e in range(1, 3 if r == "epochs=2" else 2)])
    plots.line_grid(frame, plots.palette(["bn"]), "test acc", "curve", "Learning curves")
    [fig] = drawn
    shown = _visible(fig)
    assert len(shown) == len(cells) and all(ax.lines for ax in shown)
    # Each column named once, over its top panel; x ticks under the lowest panel of each column,
    # which for bs=128 is in the top row (the panel under it has no runs and is not drawn).
    top8, bottom8, only128 = (next(ax for ax in shown if ax.get_title() == t) for t in ("bs=8", "", "bs=128"))
    assert _ticks(top8, "x") == []
    assert _ticks(bottom8, "x") == _ticks(only128, "x") == ["1", "2"]


def test_heatmaps_share_one_colour_scale_per_metric_with_a_colorbar(drawn):
    values = {("lr=0.01", "test acc"): {("bn", 8): 0.968, ("none", 8): 0.970, ("bn", 128): 0.972},
              ("lr=0.001", "test acc"): {("bn", 8): 0.977, ("none", 8): 0.975},
              ("lr=0.01", "test loss"): {("bn", 8): 0.10, ("none", 8): 0.30},
              ("lr=0.001", "test loss"): {("bn", 8): 0.20, ("none", 8): 0.25}}
    summary = pd.DataFrame([dict(row=r, col=c, norm=n, bs=b, mean=v, std=0.0, n=3)
                            for (r, c), cell in values.items() for (n, b), v in cell.items()])
    plots.heatmap(summary, ["none", "bn"], {"test acc": "max", "test loss": "min"}, "heat", "Heatmap")
    [fig] = drawn
    images = [im for ax in _visible(fig) for im in ax.get_images()]
    assert len(images) == 4 and all(im.colorbar is not None for im in images)
    scale = {"test acc": (0.968, 0.977), "test loss": (0.10, 0.30)}  # min and max over both panels
    for ax in _visible(fig):
        for im in ax.get_images():
            metric = "test acc" if np.nanmax(im.get_array()) > 0.5 else "test loss"
            assert im.get_clim() == pytest.approx(scale[metric])
            assert im.get_cmap().name == ("viridis" if metric == "test acc" else "viridis_r")


def test_axes_read_in_plain_numbers(drawn):
    runs = pd.DataFrame([dict(row="", norm=n, bs=b, duration_s=s * (1 + seed / 10))
                         for n, scale in (("bn", 1), ("gn", 3)) for b, s in ((2, 300 * scale), (8, 60),
                                                                             (32, 6), (128, 2))
                         for seed in range(2)])
    plots.time_cost(runs, plots.palette(["bn", "gn"]), "time", "Time")
    summary = pd.DataFrame([dict(row="", col="test acc", norm="bn", bs=b, mean=0.9, std=0.01, n=2)
                            for b in (2, 8, 32, 128)])
    plots.final_vs_bs(summary, plots.palette(["bn"]), "vs_bs", "Against bs")
    time_fig, bs_fig = drawn
    [ax] = _visible(time_fig)
    # bars: the arithmetic mean of each (bs, norm), in bs order, bn's bars first
    means = [statistics.mean(runs.loc[(runs.norm == n) & (runs.bs == b), "duration_s"])
             for n in ("bn", "gn") for b in (2, 8, 32, 128)]
    assert [bar.get_height() for bar in ax.patches] == pytest.approx(means)
    seconds = _ticks(ax, "y")
    assert ax.get_yscale() == "log" and len(seconds) >= 4
    assert all(re.fullmatch(r"\d+(\.\d+)?", t) for t in seconds), seconds  # "20", not "2×10^1"
    assert [float(t) for t in seconds] == sorted(ax.get_yticks()[[
        ax.get_ylim()[0] <= v <= ax.get_ylim()[1] for v in ax.get_yticks()]])
    low, high = ax.get_ylim()
    assert low <= min(runs["duration_s"]) / 2 + 1e-9 and high > max(runs["duration_s"])  # bars fit
    [ax] = _visible(bs_fig)
    assert _ticks(ax, "x") == ["2", "8", "32", "128"]


def test_figures_fill_the_page_with_text_of_at_least_tick_size(drawn):
    summary = pd.DataFrame([dict(row="lr=0.01", col=f"test m{k}", norm=n, bs=b, mean=0.9 + k / 100, std=0.01,
                                 n=2) for k in range(5) for n in ("bn", "none") for b in (8, 128)])
    plots.final_vs_bs(summary, plots.palette(["none", "bn"]), "vs_bs", "Against bs")
    plots.heatmap(summary, ["none", "bn"], {}, "heat", "Heatmap")
    for fig in drawn:
        fig.canvas.draw()
        # 1,200 px: index.html's content width at a 1,300 px window (document.py's CSS)
        assert fig.get_size_inches()[0] * fig.dpi == pytest.approx(1200)
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()
                 and (t.axes is None or t.axes.get_visible())]
        assert len(texts) > 40 and min(t.get_fontsize() for t in texts) >= panels.TICK_PT
        assert len(_visible(fig)) == 5  # five metrics wrapped over two lines, none hidden
    assert panels.TEXT_PX * 768 / 1200 >= 10.5  # 800 px window: 768 px of content


def test_command_line_error_in_a_fresh_process(tmp_path):
    path = tmp_path / "cli.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        _run(db, "classify", "convnet", "bn", 8, 0, [{("test", "acc"): 0.5}])
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--db", f"sqlite:///{path}",
                           "--norm", "ln"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no runs match norm=ln")
    assert "Traceback" not in proc.stderr and not (tmp_path / "reports").exists()


@pytest.mark.slow  # two fresh processes (~5 s of imports) and Chromium three times (~3-15 s each)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_report_command_renders_in_headless_chromium(tmp_path):
    # Tables wider than either window: twelve metrics side by side, and a failed run's long error.
    path = tmp_path / "bench.db"
    names = [f"metric_with_a_long_name_{k}" for k in range(12)]
    with ResultsDB(f"sqlite:///{path}") as db:
        for norm in ("none", "bn"):
            for seed in (0, 1):
                curve = [{("test", "acc"): 0.5 + e / 10 + seed / 50,
                          **{("test", n): e + seed / 3 for n in names}} for e in range(3)]
                _run(db, "classify", "convnet", norm, 8, seed, curve)
        run_id = db.start_run(task="classify", dataset="digits", model="convnet", norm="bn", bs=8, lr=1e-3,
                              seed=5, epochs=3, config={}, config_hash="failed")
        db.finish(run_id, "failed", "RuntimeError: " + "a long error message without a break " * 4)
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--db", f"sqlite:///{path}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "reports" / "index.html"  # the default --out
    assert "report:" in proc.stdout and page.exists()
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, "-m", "analysis.browser_check", str(page),
                           "--screenshot", str(shot)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for width, least in ((1300, 11), (800, 10.5)):
        assert Image.open(tmp_path / f"shot-{width}.png").size == (width, browser_check.HEIGHT)
        [line] = [row for row in proc.stdout.splitlines() if f" at {width} px:" in row]
        # the page is exactly as wide as the window; the figures' smallest text in screen pixels
        assert f"page {width} px wide in {width}," in line and line.endswith("-> ok"), line
        assert float(re.search(r"smallest text ([\d.]+) px", line).group(1)) >= least, line
    # The same page with the tables' scroll boxes switched off runs off the right edge: the check
    # sees what a reader would, and the tables really are wider than the window.
    broken = tmp_path / "broken.html"
    html = page.read_text()
    assert ".table-scroll { max-width: 100%; overflow-x: auto;" in html
    broken.write_text(html.replace(".table-scroll { max-width: 100%; overflow-x: auto;",
                                   ".table-scroll { overflow-x: visible;"))
    seen = browser_check.look(broken, 1300, tmp_path / "broken.png")
    assert seen.client_width == 1300 and seen.overflow > 0
    assert any(name.startswith(("td", "th")) for name in seen.wider), seen.wider


def test_browser_check_fails_loudly_without_chromium(small_report, tmp_path):
    out, _ = small_report
    proc = subprocess.run([sys.executable, "-m", "analysis.browser_check", str(out / "index.html"),
                           "--chromium", str(tmp_path / "no-chromium")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "not found" in proc.stderr and "apt-get install" in proc.stderr


# Final test MSE of autoencoder runs by (norm, seed): the report and distance_ratio read them back.
AE_MSE = {("bn", 0): 0.0075, ("bn", 1): 0.007586, ("none", 0): 0.0059, ("none", 1): 0.005996}


def _autoencoder_db(path: Path) -> float:
    """bn and none, two seeds each, written by ResultsDB; returns their distance ratio, by hand."""
    with ResultsDB(f"sqlite:///{path}") as db:
        for (norm, seed), mse in AE_MSE.items():
            curve = [{("test", "mse"): mse + 0.001}, {("test", "mse"): mse}]
            _run(db, "autoencode", "ae", norm, 8, seed, curve)

    def mean(norm):
        return statistics.mean(v for (n, _), v in AE_MSE.items() if n == norm)

    return math.sqrt(mean("bn")) / math.sqrt(mean("none"))


def _sql(path: Path, query: str) -> list:
    with contextlib.closing(sqlite3.connect(path)) as conn:  # closed: it would keep -wal and -shm
        return conn.execute(query).fetchall()


def _mse_ratio(out: Path) -> float:
    comp = pd.read_csv(out / "tables" / "comparisons.csv")
    [ratio] = comp.loc[comp["name"] == "mse", "ratio"]
    return ratio


def test_report_and_distance_ratio_read_a_read_only_database(tmp_path):
    path = tmp_path / "archive" / "bench.db"
    path.parent.mkdir()
    want = _autoencoder_db(path)
    before = snapshot(path)
    with read_only(path):
        proc = subprocess.run([sys.executable, "-m", "analysis.report", "--db", f"sqlite:///{path}",
                               "--out", str(tmp_path / "out")], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert distance_ratio(f"sqlite:///{path}", "bn", "none") == pytest.approx(want, rel=1e-12)
        assert snapshot(path) == before
    assert snapshot(path) == before
    assert _sql(path, "PRAGMA journal_mode") == [("wal",)]
    assert _mse_ratio(tmp_path / "out") == pytest.approx(want, rel=1e-12)


def _older_release(path: Path) -> None:
    # A file as a release before the views, the index and the added columns wrote it.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for sql in ("DROP VIEW run_summary", "DROP VIEW run_final", "DROP INDEX ix_metrics_split_name",
                    "ALTER TABLE runs DROP COLUMN threads", "ALTER TABLE runs DROP COLUMN versions",
                    "DROP INDEX ix_runs_uid", "ALTER TABLE runs DROP COLUMN uid",
                    "ALTER TABLE runs DROP COLUMN launcher", "ALTER TABLE runs DROP COLUMN scheduler_job_id",
                    "ALTER TABLE runs DROP COLUMN attempts", "DROP TABLE schema_info"):
            conn.execute(sql)


def _rollback_journal(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchall() == [("delete",)]


@pytest.mark.parametrize("state", ["closed", "a writer has it open", "rollback journal", "older release"])
def test_reading_a_writable_database_changes_nothing_in_or_beside_it(tmp_path, state):
    path = tmp_path / "db" / "bench.db"
    path.parent.mkdir()
    want = _autoencoder_db(path)
    writer = None
    if state == "a writer has it open":  # its pooled connection keeps the -wal and -shm
        writer = ResultsDB(f"sqlite:///{path}")
        run_id = writer.start_run(task="classify", dataset="digits", model="convnet", norm="bn", bs=8,
                                  lr=1e-3, seed=0, epochs=1, config={}, config_hash="w")
        assert (path.parent / "bench.db-wal").exists()
    elif state == "rollback journal":
        _rollback_journal(path)
    elif state == "older release":
        _older_release(path)
    schema = _sql(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    before = snapshot(path)
    url = f"sqlite:///{path}"
    assert report.main(["--db", url, "--out", str(tmp_path / "out")]) == 0
    assert distance_ratio(url, "bn", "none") == pytest.approx(want, rel=1e-12)
    assert snapshot(path) == before
    assert _mse_ratio(tmp_path / "out") == pytest.approx(want, rel=1e-12)
    if writer is not None:  # the readers left no lock behind
        writer.log_epoch(run_id, 1, {("test", "acc"): 0.5})
        writer.finish(run_id, "completed")
        writer.close()
    assert _sql(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema


def test_a_missing_database_or_one_without_runs_is_one_line_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "nothing" / "here.db"
    assert report.main(["--db", f"sqlite:///{missing}", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"error: no results database at {str(missing)!r} (train with "
                                       "`python -m bench.run`, or pass --db URL)\n")
    assert not missing.parent.exists()
    empty, other = tmp_path / "empty.db", tmp_path / "other.db"
    empty.write_bytes(b"")  # what `touch` or an interrupted copy leaves
    with contextlib.closing(sqlite3.connect(other)) as conn:  # an SQLite file of something else
        conn.execute("CREATE TABLE notes (text)")
    for path in (empty, other):
        before = snapshot(path)
        assert report.main(["--db", f"sqlite:///{path}", "--out", str(out)]) == 1
        assert capsys.readouterr().err == (f"error: no runs in the database sqlite:///{path} "
                                           "(train some with `python -m bench.run`)\n")
        with pytest.raises(ValueError, match="no completed autoencode run with norm 'bn'"):
            distance_ratio(f"sqlite:///{path}", "bn", "none")
        assert snapshot(path) == before
    assert _sql(other, "SELECT name FROM sqlite_master") == [("notes",)]
    assert empty.read_bytes() == b"" and not out.exists()
    with contextlib.closing(sqlite3.connect(other)) as conn:  # a `runs` table that is not ours
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
    assert report.main(["--db", f"sqlite:///{other}", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the results database: no such column: r.")
    assert err.count("\n") == 1
