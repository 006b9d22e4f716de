"""What a job and a sweep tell the reader, the divergence rule, and a refused command's cleanup:
the pieces of bench.run and the sweeper, called directly (no training)."""

import math
import os
import re
import time

import pytest
from conftest import compose_config
from hydra._internal.grammar.utils import escape_special_characters
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from bench import cli, run
from bench.config_hash import config_hash
from bench.divergence import DivergenceRule
from bench.errors import UserError
from hydra_plugins.normbench_sweeper import summary
from runners import job_log
from runners.validate import check_diverge

# --- divergence ---------------------------------------------------------------------------------

def losses(**named):
    return {("train", k): v for k, v in named.items()}


def test_a_loss_that_is_not_finite_diverges_whatever_the_settings():
    rule = DivergenceRule("classify", factor=None, max_loss=None)
    assert rule(1, losses(loss=2.3)) is None
    assert rule(2, losses(loss=math.nan)) == "train loss became nan at epoch 2 (rule: not finite)"
    assert DivergenceRule("gan", None, None)(1, losses(d_loss=1.0, g_loss=-math.inf)) == (
        "train g_loss became -inf at epoch 1 (rule: not finite)")


def test_the_factor_rule_compares_with_the_first_epoch():
    rule = DivergenceRule("classify", factor="auto", max_loss=None)  # auto: 100 for classify
    assert rule(1, losses(loss=2.0)) is None
    assert rule(2, losses(loss=0.5)) is None
    assert rule(3, losses(loss=199.0)) is None  # 99.5 x 2.0: under 100 x
    assert rule(4, losses(loss=201.0)) == ("train loss 201 at epoch 4 is more than diverge.factor=100 "
                                           "times its epoch-1 value 2 (rule: factor)")
    rule = DivergenceRule("classify", factor=0, max_loss=None)  # 0: off
    assert rule(1, losses(loss=2.0)) is None and rule(2, losses(loss=2e9)) is None


def test_the_gans_rising_g_loss_is_not_divergence():
    # The losses of gan_discriminator_norm_cpu's BN job, epochs 1, 2, 5, 10, 19 (measured here): D wins and
    # g_loss rises 3.8x. auto gives the GAN 1000x, so that is far from the limit.
    rule = DivergenceRule("gan", factor="auto", max_loss=1e4)
    for epoch, (d, g) in enumerate([(0.4363, 2.29), (0.02591, 4.554), (0.003306, 6.428),
                                    (0.001171, 7.526), (0.0002806, 8.766)], start=1):
        assert rule(epoch, losses(d_loss=d, g_loss=g)) is None
    # Its GN job: d_loss falls 390x to epoch 8, then rises 930x from there; 2.4x its epoch-1 value.
    gn = DivergenceRule("gan", factor="auto", max_loss=1e4)
    for epoch, d in ((1, 0.3424), (8, 0.0008782), (12, 0.8224)):
        assert gn(epoch, losses(d_loss=d, g_loss=5.0)) is None
    assert rule(6, losses(d_loss=0.5, g_loss=2291.0)) == (
        "train g_loss 2291 at epoch 6 is more than diverge.factor=1000 times its epoch-1 value 2.29 "
        "(rule: factor)")


def test_max_loss_catches_a_run_that_blew_up_in_its_first_epoch():
    # lr=1e12 SGD on BN (measured here): 1.077e23 at epoch 1, 1.167e12 at epoch 2, test acc 0.1.
    # Falling from a blown-up first epoch: the factor rule alone would call it completed.
    assert DivergenceRule("classify", "auto", None)(1, losses(loss=1.077e23)) is None
    rule = DivergenceRule("classify", "auto", 1e4)
    assert rule(1, losses(loss=1.077e23)) == (
        "train loss 1.077e+23 at epoch 1 is above diverge.max_loss=10000 (rule: max_loss)")


def test_test_losses_are_not_watched():
    rule = DivergenceRule("classify", "auto", 1e4)
    assert rule(1, {("train", "loss"): 2.0, ("test_batchstats", "loss"): math.inf,
                    ("test", "loss"): 1e9, ("train", "acc"): 1e9}) is None


@pytest.mark.parametrize(("overrides", "message"), [
    (["diverge.factor=0.5"], "diverge.factor=0.5 is not allowed (allowed: auto, a number >= 1, or 0 "
                             "or null to turn the rule off)"),
    (["diverge.factor=abc"], "diverge.factor='abc' is not allowed"),
    (["diverge.factor=true"], "diverge.factor=True is not allowed"),
    (["diverge.factor=nan"], "diverge.factor=nan is not allowed"),
    (["diverge.max_loss=-1"], "diverge.max_loss=-1 is not allowed (allowed: a positive number, or 0 "
                              "or null to turn the rule off)"),
])
def test_bad_divergence_settings_are_one_line_errors(overrides, message):
    with pytest.raises(UserError) as e:
        check_diverge(compose_config(*overrides))
    assert message in str(e.value)


@pytest.mark.parametrize("overrides", [[], ["diverge.factor=1"], ["diverge.factor=250"],
                                       ["diverge.factor=null", "diverge.max_loss=null"],
                                       ["diverge.factor=0", "diverge.max_loss=0"]])
def test_good_divergence_settings_pass(overrides):
    check_diverge(compose_config(*overrides))


def test_the_divergence_settings_are_part_of_the_config_hash():
    # They decide whether a run ends 'diverged' or goes on: not bookkeeping.
    def digest(*overrides):
        return config_hash(OmegaConf.to_container(compose_config(*overrides), resolve=True))
    assert digest() != digest("diverge.factor=1000")
    assert digest() != digest("diverge.max_loss=null")
    assert digest() == digest("diverge.factor=auto")


# --- log lines ----------------------------------------------------------------------------------

CLASSIFY_EPOCH = {("train", "loss"): 0.41234, ("train", "acc"): 0.9, ("train", "lr"): 1e-3,
                  ("train", "time_s"): 10.0, ("train", "images_per_s"): 143.7,
                  ("test", "loss"): 0.30123, ("test", "acc"): 0.90111, ("test", "time_s"): 2.25,
                  ("test_precise", "loss"): 0.3, ("test_precise", "acc"): 0.9,
                  ("test_batchstats", "loss"): 0.31, ("test_batchstats", "acc"): 0.89}


def test_the_epoch_line_shows_the_main_metrics_only():
    assert job_log.epoch_line(CLASSIFY_EPOCH) == "train loss 0.4123 | test loss 0.3012 acc 0.9011 | 12.2 s"
    gan = {("train", "d_loss"): 0.02591, ("train", "g_loss"): 4.554, ("train", "d_acc_real"): 1.0,
           ("train", "time_s"): 4.5, ("test", "cfid"): 42.03, ("test", "ckid"): 1.6,
           ("test_precise", "cfid"): 43.5, ("test", "time_s"): 3.2}
    assert job_log.epoch_line(gan) == "train d_loss 0.02591 g_loss 4.554 | test cfid 42.03 | 7.7 s"
    autoencode = {("train", "loss"): 0.08, ("train", "mse"): 0.08, ("test", "loss"): 0.0802,
                  ("test", "mse"): 0.0802}
    assert job_log.epoch_line(autoencode) == "train loss 0.08 | test loss 0.0802"
    # The GAN's epoch 0 (scores of the real images, before training): nothing main, DEBUG only.
    assert job_log.epoch_line({("test", "cis_real"): 6.7, ("test", "classifier_acc"): 0.97}) is None


@pytest.mark.parametrize("text", ["sqlite:///results/bench.db", "sqlite:////tmp/a b/x.db",
                                  "postgresql://u:p@host:5432/db", "a=b,c", "[1, 2]", "f(x)"])
def test_unescape_undoes_hydras_escaping(text):
    escaped = escape_special_characters(text)
    assert cli.unescape(f"db.url={escaped}") == f"db.url={text}"


def test_the_url_shown_hides_the_password_and_the_next_command_fits_the_database():
    assert cli.shown_url("postgresql://bench:s3cret@db.example:5432/runs") == (
        "postgresql://bench:***@db.example:5432/runs")
    assert cli.next_command("sqlite:///results/bench.db") == (
        "make report (or python -m analysis.report --db sqlite:///results/bench.db)")
    assert cli.next_command("postgresql://bench:s3cret@h/runs") == (
        "python -m analysis.report --db postgresql://bench:***@h/runs")


def job_return(num, status, value=None):
    r = JobReturn()
    r.status, r._return_value = status, value
    r.hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": num}}})
    return r


def test_the_sweep_summary_counts_each_outcome():
    returns = [job_return(0, JobStatus.COMPLETED, {"run_id": 4, "status": "completed"}),
               job_return(1, JobStatus.COMPLETED, {"run_id": 5, "status": "diverged"}),
               job_return(2, JobStatus.FAILED, RuntimeError("boom")),
               job_return(3, JobStatus.COMPLETED, {"run_id": 1, "status": "skipped"}),
               job_return(4, JobStatus.COMPLETED, {"run_id": 6, "status": "completed"})]
    assert summary(returns, 7, {"postgresql://u:pw@h/db"}) == [
        "sweep done, 7 jobs: 2 completed, 1 diverged (run id 5), 1 failed (job #2), "
        "1 skipped (already completed: resume), 2 not started (the sweep stopped at a failed "
        "batch); results in postgresql://u:***@h/db",
        "next: python -m analysis.report --db postgresql://u:***@h/db"]


def test_a_single_run_ends_with_one_summary_line():
    url = "sqlite:///results/bench.db"
    assert run.single_run_summary({"run_id": 3, "status": "completed", "seconds": 12.34}, url) == (
        "run id 3 completed in 12.3 s; results in sqlite:///results/bench.db; next: make report "
        "(or python -m analysis.report --db sqlite:///results/bench.db)")
    assert run.single_run_summary({"run_id": 2, "status": "skipped"}, url).startswith(
        "nothing to do: run id 2 already completed this config; results in")


# --- a refused command leaves no folder ---------------------------------------------------------

def hydra_job_dir(path):
    """What Hydra writes into a job's folder before our checks run."""
    (path / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (path / ".hydra" / name).write_text("{}\n")
    (path / "run.log").write_text("")
    return path


def test_leftovers_are_removed_up_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "STARTED", time.time() - 1)
    job = hydra_job_dir(tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    sweep = tmp_path / "multirun" / "2026-01-01" / "10-00-01"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    cli.remove_hydra_leftovers(job, sweep)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_folder_with_anything_else_or_older_files_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "STARTED", time.time() - 1)
    earlier = hydra_job_dir(tmp_path / "outputs" / "2026-01-01" / "09-00-00")  # another command's
    old = time.time() - 3600
    for p in earlier.rglob("*"):
        os.utime(p, (old, old))
    ours = hydra_job_dir(tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    mixed = hydra_job_dir(tmp_path / "outputs" / "2026-01-02" / "10-00-00")
    (mixed / "samples.png").write_bytes(b"")
    cli.remove_hydra_leftovers(earlier, ours, mixed)
    assert earlier.is_dir() and mixed.is_dir() and not ours.exists()
    assert (tmp_path / "outputs" / "2026-01-01").is_dir()  # still holds the earlier run


def test_a_folder_outside_the_working_directory_goes_but_not_its_parents(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(cli, "STARTED", time.time() - 1)
    job = hydra_job_dir(tmp_path / "elsewhere" / "job")
    cli.remove_hydra_leftovers(job)
    assert not job.exists() and (tmp_path / "elsewhere").is_dir()


# --- the job's first line ------------------------------------------------------------------------

def test_the_job_line_names_settings_threads_and_other_overrides(monkeypatch):
    cfg = compose_config("dataset=digits", "epochs=3", "norm=gn", "bs=32", "optim=sgd")
    assert job_log.describe(cfg, "cpu", 1, "optim=sgd dataset.train_subset=256") == (
        "classify digits/convnet norm=gn bs=32 lr=0.001 seed=0 epochs=3 on cpu, 1 thread "
        "[optim=sgd dataset.train_subset=256]")
    assert re.search(r"on cuda:0, 8 threads \[", job_log.describe(cfg, "cuda:0", 8, "optim=sgd"))
