"""`python -m analysis.report` end to end on small databases built with ResultsDB."""

import base64
import io
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis import report
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


def test_command_line_error_in_a_fresh_process(tmp_path):
    path = tmp_path / "cli.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        _run(db, "classify", "convnet", "bn", 8, 0, [{("test", "acc"): 0.5}])
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--db", f"sqlite:///{path}",
                           "--norm", "ln"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no runs match norm=ln")
    assert "Traceback" not in proc.stderr and not (tmp_path / "reports").exists()


@pytest.mark.slow  # two fresh processes (~5 s of imports) and Chromium (~3-15 s)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_report_command_renders_in_headless_chromium(tmp_path):
    path = tmp_path / "bench.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        for norm in ("none", "bn"):
            for seed in (0, 1):
                _run(db, "classify", "convnet", norm, 8, seed,
                     [{("test", "acc"): 0.5 + e / 10 + seed / 50} for e in range(3)])
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--db", f"sqlite:///{path}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "reports" / "index.html"  # the default --out
    assert "report:" in proc.stdout and page.exists()
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, "-m", "analysis.browser_check", str(page),
                           "--screenshot", str(shot)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Image.open(shot).size == (1280, 4000)


def test_browser_check_fails_loudly_without_chromium(small_report, tmp_path):
    out, _ = small_report
    proc = subprocess.run([sys.executable, "-m", "analysis.browser_check", str(out / "index.html"),
                           "--chromium", str(tmp_path / "no-chromium")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "not found" in proc.stderr and "apt-get install" in proc.stderr
