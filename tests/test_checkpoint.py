"""Checkpoints (bench/checkpoint.py): what the file holds, RNG states restored, and bad files:
truncated, another config's, strict, no space left while saving."""

import errno
import os
import random
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import query, run_bench

from bench.checkpoint import global_rng_state, set_global_rng_state

ARGS = ["threads=1", "dataset.train_subset=256", "bs=32", "epochs=2", "norm=bn",
        "sched=onecycle", "checkpoint.keep=true"]
CURVE = ("select epoch, split, name, value from metrics where run_id = ? "
         "and name not in ('time_s', 'images_per_s') order by epoch, split, name")


def test_global_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.randn()  # numpy's cached second Gaussian is part of its state
    torch.save(global_rng_state(), tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    set_global_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    """A folder with a completed run, its checkpoint kept (made once for the module)."""
    cwd = tmp_path_factory.mktemp("completed")
    run_bench(cwd, *ARGS, check_rc=0)
    return cwd


def completed_then_interrupted(tmp_path, completed):
    """A copy of `completed` with its row made to look killed after its last epoch: the rerun
    resumes it. Returns (db path, checkpoint path, the run's metrics)."""
    shutil.copytree(completed, tmp_path, dirs_exist_ok=True)
    db = tmp_path / "bench.db"
    (path,) = (tmp_path / "checkpoints").rglob("*.pt")
    query(db, "update runs set status = 'failed', failure = 'killed'")
    return db, path, query(db, CURVE, 1)


def test_the_checkpoint_loads_weights_only_and_holds_the_whole_training_state(tmp_path, completed):
    db, path, _ = completed_then_interrupted(tmp_path, completed)
    (uid, digest), = query(db, "select uid, config_hash from runs")
    assert path == tmp_path / "checkpoints" / digest / f"{uid}.pt"
    state = torch.load(path, weights_only=True)
    steps = 2 * 256 // 32  # epochs x full batches per epoch
    assert state["epoch"] == 2 and state["config_hash"] == digest
    model = state["parts"]["model"]
    tracked = [v for k, v in model.items() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(v) == steps for v in tracked)  # BN's counter: one per step
    assert any(k.endswith("running_var") for k in model)
    assert state["parts"]["sched"]["last_epoch"] == steps  # onecycle, stepped per step
    assert {s["step"].item() for s in state["parts"]["optimizer"]["state"].values()} == {steps}
    assert set(state["generators"]) == {"data"} and set(state["rng"]) >= {"torch", "numpy", "python"}


@pytest.mark.parametrize("damage", ["truncated", "another config"])
def test_an_unusable_checkpoint_is_moved_aside_and_the_run_starts_over(tmp_path, completed, damage):
    db, path, before = completed_then_interrupted(tmp_path, completed)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        state = torch.load(path, weights_only=True)
        torch.save({**state, "config_hash": "0" * 64}, path)
    out = run_bench(tmp_path, *ARGS, check_rc=0)
    text = out.stdout + out.stderr
    assert re.search(rf"checkpoint {re.escape(str(path))} is unusable \(.*\): moved to "
                     rf"{re.escape(path.name)}\.corrupt-\d{{8}}T\d{{6}}; the run starts over", text)
    assert "training starts over at epoch 1" in text
    assert len(list(path.parent.glob("*.corrupt-*"))) == 1  # the old file kept aside
    assert query(db, "select status, attempts from runs") == [("completed", 2)]
    assert query(db, CURVE, 1) == before  # trained again from epoch 1: the same numbers


def test_strict_fails_cleanly_on_an_unusable_checkpoint_and_keeps_it(tmp_path, completed):
    db, path, before = completed_then_interrupted(tmp_path, completed)
    path.write_bytes(b"not a checkpoint")
    out = run_bench(tmp_path, *ARGS, "checkpoint.strict=true", check_rc=2)
    assert out.stderr.strip().startswith("error: checkpoint ") and "checkpoint.strict=true" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert path.read_bytes() == b"not a checkpoint"
    assert query(db, "select status, failure from runs") == [("failed", "checkpoint")]
    assert query(db, CURVE, 1) == before  # nothing stored lost


def test_no_space_left_while_saving_keeps_the_previous_checkpoint_and_the_run_goes_on(
        tmp_path, monkeypatch):
    real_replace, calls = os.replace, []

    def replace(src, dst):  # the first checkpoint saves, every later one finds the disk full
        if "checkpoints" in str(dst):
            calls.append(dst)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    out = run_bench(tmp_path, *ARGS, "epochs=3", check_rc=0)
    assert "could not save the checkpoint of epoch 2" in out.stdout + out.stderr
    (path,) = [p for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()]  # no temp file
    assert torch.load(path, weights_only=True)["epoch"] == 1
    db = tmp_path / "bench.db"
    assert query(db, "select status, epochs_done from runs") == [("completed", 3)]
    assert query(db, "pragma integrity_check") == [("ok",)]
