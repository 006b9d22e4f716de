"""Exact resume: a run killed with a real SIGKILL and rerun ends with exactly the metrics of a
run never interrupted (every epoch's, not close: equal), in the same row, no metric written
twice. The reference is the same command run once to the end in another folder and database."""

import random
import sqlite3

import pytest
from conftest import kill_at_epoch, query, run_bench, start_bench

# Timing metrics differ between any two runs; every other value must be bit-equal.
CURVE = ("select epoch, split, name, value from metrics where run_id = ? "
         "and name not in ('time_s', 'images_per_s') order by epoch, split, name")
BASE = ["threads=1", "dataset.train_subset=256", "epochs=4"]
TASKS = {
    # BN with a non-constant lr schedule (onecycle: per-step lr changes, its state must resume).
    "classify": ["task=classify", "model=convnet", "norm=bn", "bs=32", "sched=onecycle"],
    "autoencode": ["task=autoencode", "norm=bn", "bs=32", "model.width=8", "sched=cyclic"],
    # The GAN: two models, two optimizers, the metrics' generator; BN in D and G.
    "gan": ["task=gan", "norm=bn", "bs=32", "model.nf=8", "model.ngf=8", "task.eval_samples=64",
            "task.kid_subsets=5", "task.uniformity_batches=2", "task.features.epochs=3",
            "task.features.bs=16", "task.features.lr=3e-3", "dataset.train_subset=128"],
}


def curve(db, run_id=1):
    return query(db, CURVE, run_id)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """task -> the uninterrupted run's metrics, each task run once to the end."""
    made = {}

    def get(task):
        if task not in made:
            cwd = tmp_path_factory.mktemp(f"ref_{task}")
            run_bench(cwd, *BASE, *TASKS[task], check_rc=0)
            made[task] = curve(cwd / "bench.db")
        return made[task]
    return get


@pytest.mark.slow  # the fast suite's sweep test below covers classify and gan
@pytest.mark.parametrize("task", list(TASKS))
def test_a_run_killed_at_a_random_point_resumes_to_exactly_the_uninterrupted_metrics(
        tmp_path, reference, task):
    args = [*BASE, *TASKS[task]]
    rng = random.Random(task)  # a random point, the same one every time the test runs
    epoch, delay = rng.randint(1, 2), rng.uniform(0, 0.05)
    proc = start_bench(tmp_path, *args)
    assert kill_at_epoch(proc, tmp_path / "bench.db", epoch, delay), "ended before the kill"
    db = tmp_path / "bench.db"
    assert query(db, "select status from runs") == [("running",)]  # nobody could mark it
    first = {e for e, *_ in curve(db)}
    assert max(first) >= epoch

    proc = run_bench(tmp_path, *args, check_rc=0)
    assert "continues after epoch" in proc.stderr + proc.stdout
    assert query(db, "pragma integrity_check") == [("ok",)]
    assert query(db, "select id, status, attempts, epochs_done, failure from runs") == [
        (1, "completed", 2, 4, None)]
    assert curve(db) == reference(task)  # every epoch, exactly
    # the checkpoint went away with checkpoint.keep=false
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))


@pytest.mark.slow
def test_metrics_written_after_the_last_checkpoint_are_replaced_not_duplicated(tmp_path, reference):
    """A kill between an epoch's metrics and its checkpoint: simulated by removing the newest
    checkpoint's epoch (checkpoint.every=2 leaves epoch 3's metrics without a checkpoint)."""
    args = [*BASE, *TASKS["classify"], "checkpoint.every=2"]
    proc = start_bench(tmp_path, *args)
    db = tmp_path / "bench.db"
    assert kill_at_epoch(proc, db, 3), "ended before the kill"
    assert max(e for e, *_ in curve(db)) == 3  # epoch 3 written, its checkpoint not (every=2)
    out = run_bench(tmp_path, *args, check_rc=0)
    assert "continues after epoch 2" in out.stderr + out.stdout
    assert curve(db) == reference("classify")
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from (select run_id, epoch, split, name from metrics "
                           "group by 1, 2, 3, 4 having count(*) > 1)").fetchone() == (0,)


# --- Done when: sweeps killed at random points and rerun end as an uninterrupted sweep ---------

def sweeps(norms: str, epochs: int) -> dict[str, list[str]]:
    """Two sweeps started together on one database: classify (BN, GN, ..., onecycle, a
    checkpoint every other epoch) and the GAN (`epochs` - 1 epochs)."""
    return {"classify": ["-m", *BASE, f"epochs={epochs}", "task=classify", "model=convnet",
                         f"norm={norms}", "bs=32", "sched=onecycle", "checkpoint.every=2"],
            "gan": ["-m", *BASE, f"epochs={epochs - 1}", *TASKS["gan"]]}


FAST, SLOW = sweeps("bn,gn", 3), sweeps("bn,gn,none", 4)  # 8 and 15 epochs in all
KEY = "select id, task || '/' || norm from runs"


def epochs_in_all(sweep) -> int:
    args = dict(a.split("=", 1) for a in sweep["classify"][1:])
    return (len(args["norm"].split(",")) * int(args["epochs"])
            + int(dict(a.split("=", 1) for a in sweep["gan"][1:])["epochs"]))


def sweep_curves(db):
    return {key: curve(db, run_id) for run_id, key in query(db, KEY + " where status = 'completed'")}


@pytest.fixture(scope="module")
def reference_sweeps(tmp_path_factory):
    """sweep -> each config's metrics of the sweeps run once to the end (made on first use)."""
    made = {}

    def get(sweep):
        key = str(sweep)
        if key not in made:
            cwd = tmp_path_factory.mktemp("ref_sweeps")
            for args in sweep.values():
                run_bench(cwd, *args, check_rc=0)
            made[key] = sweep_curves(cwd / "bench.db")
        return made[key]
    return get


def check_consistent(db):
    assert query(db, "pragma integrity_check") == [("ok",)]
    # at most one row per config that is not 'failed': no config trained twice
    assert query(db, "select config_hash from runs where status != 'failed' group by 1 "
                     "having count(*) > 1") == []
    # each run's metrics: every epoch up to epochs_done once, none beyond
    for run_id, done in query(db, "select id, epochs_done from runs"):
        epochs = [e for (e,) in query(db, "select distinct epoch from metrics where run_id = ? "
                                          "and epoch >= 1 order by 1", run_id)]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) <= done + 1


def kill_sweeps_and_rerun(tmp_path, sweep, reference, kills: int, seed: int):
    """Both sweeps started together, each SIGKILLed at a random point (once the database holds
    one or two epochs more than before, fewer than all, plus a random delay; the second
    sweep's at the same or the next epoch), the database checked; `kills` kills in all, then both rerun to the
    end. Returns how many kills hit a sweep still running."""
    rng, db, total, hit = random.Random(seed), tmp_path / "bench.db", epochs_in_all(sweep), 0
    for _ in range(kills // 2):
        procs = [start_bench(tmp_path, *args) for args in sweep.values()]
        rng.shuffle(procs)
        done = len(query(db, "select 1 from metrics where epoch >= 1 group by run_id, epoch")) \
            if db.exists() else 0
        first = min(done + rng.randint(1, 2), total - 1)  # small steps: 20 kills in 15 epochs
        hit += kill_at_epoch(procs[0], db, first, rng.uniform(0, 0.3))
        hit += kill_at_epoch(procs[1], db, min(first + rng.randint(0, 1), total - 1),
                             rng.uniform(0, 0.3))
        check_consistent(db)
    for args in sweep.values():  # the rerun that finishes
        run_bench(tmp_path, *args, check_rc=0)
    check_consistent(db)
    assert sorted(k for _, k in query(db, KEY)) == sorted(reference)
    assert query(db, "select distinct status from runs") == [("completed",)]
    assert sweep_curves(db) == reference
    return hit


def test_sweeps_killed_at_random_points_and_rerun_end_as_an_uninterrupted_sweep(
        tmp_path, reference_sweeps):
    kill_sweeps_and_rerun(tmp_path, FAST, reference_sweeps(FAST), kills=2, seed=12)
    assert query(tmp_path / "bench.db", "select max(attempts) from runs")[0][0] >= 2  # resumed


@pytest.mark.slow
def test_sweeps_killed_at_20_random_points_and_rerun_end_as_an_uninterrupted_sweep(
        tmp_path, reference_sweeps):
    hit = kill_sweeps_and_rerun(tmp_path, SLOW, reference_sweeps(SLOW), kills=20, seed=20)
    resumes = query(tmp_path / "bench.db", "select sum(attempts) - count(*) from runs")[0][0]
    print(f"{hit} of 20 kills hit a live sweep; {resumes} resumes")
    assert hit >= 10 and resumes >= 5
