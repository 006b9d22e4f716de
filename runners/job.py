"""A job's life, in one place, and what the database says at each point:

1. checks (nothing written): bad config, missing dataset, unopenable database -> `UserError`;
   `bench.run` reports it as one line and removes the folders Hydra made for the command;
2. the data is loaded and the task's `prepare` runs (the GAN metrics' classifier): a `UserError`
   here still writes no run;
3. the job claims its config hash (`runners.resume`, `db.claims`): a config completed or
   diverged, or live in another job, is skipped; an interrupted run of it (killed, SIGTERM,
   Ctrl-C, a scheduler's requeue) is reopened and continues from its checkpoint
   (`bench.checkpoint`); else the run's row is written as 'running' just before training;
4. while it trains, a thread writes its heartbeat every `db.heartbeat.every_s` seconds, and
   at the end of every epoch its metrics are written, then its checkpoint (`checkpoint.every`);
5. the heartbeat stops, and the status becomes 'completed', 'diverged' (a training loss went
   NaN/inf, or broke a `diverge` rule: `bench.divergence`; the sweep goes on) or 'failed' with
   the error (an exception, Ctrl-C or SIGTERM; the other jobs of a sweep still run).
A job killed with SIGKILL cannot write: the next sweep on that host marks its run 'failed' (its
process is gone), and so does the next sweep on any host, or `python -m db mark-stale`, once its
heartbeat is older than `db.heartbeat.stale_after_s`; rerunning the command then resumes it.

A sweep runs steps 1-2 for every job before the first one starts (`prepare_sweep`), so a bad
value in the last job loses no work, each dataset is loaded (downloaded, cached) by one process,
and each task's `prepare` is done once; every job then runs `run_job`, which finds those cached.

What a job logs: one line naming it (its label, the database's run id, its settings, device and
threads), one short line per epoch (the full metrics at DEBUG level and in the database), and how
it ended.
"""

import logging
import socket
import time

from omegaconf import DictConfig, OmegaConf

from bench.divergence import DivergenceRule
from bench.errors import Diverged, UserError, one_line
from runners.interrupts import failure_kind, requeue_note, requeued, sigterm_as_exception
from runners.job_log import describe, epoch_line
from runners.validate import check_config

# torch, the datasets and the database are imported inside the functions: a mistyped value is
# then reported in well under a second instead of after torch's ~3 s import.

log = logging.getLogger("bench")


# --- Steps 1-2 for a whole sweep ---------------------------------------------------------------

def _dataset_key(cfg: DictConfig) -> tuple:
    ds = cfg.dataset
    return (ds.name, ds.image_size, str(sorted(ds.get("options", {}).items())), cfg.data_root,
            ds.download)


def prepare_sweep(jobs: list[tuple[DictConfig, str]]) -> tuple[list[str], set[str]]:
    """Steps 1-2 for every (config, name) of a sweep before any job starts: each job checked
    (the error names the job), each distinct dataset loaded once (download and uint8 cache),
    each distinct task `prepare` done once, each database opened (schema created) and the runs a
    killed process left 'running' marked failed: on this host by process id, on any host once
    their heartbeat is older than `db.heartbeat.stale_after_s`. Returns (dataset names, db URLs)."""
    from bench.data import load_dataset
    from bench.runtime import pick_device, set_threads
    from db import ResultsDB
    from runners import RUNNERS
    from runners.config import load_data

    datasets, prepares, urls = {}, {}, set()
    silent_after = {}  # url -> db.heartbeat.stale_after_s, the longest of the jobs writing there
    for cfg, name in jobs:
        try:
            check_config(cfg)
        except UserError as e:
            raise UserError(f"{e} [job: {name}]") from None
        datasets[_dataset_key(cfg)] = cfg
        urls.add(cfg.db.url)
        silent_after[cfg.db.url] = max(silent_after.get(cfg.db.url, 0), cfg.db.heartbeat.stale_after_s)
        prepares[OmegaConf.to_yaml({k: cfg[k] for k in ("task", "dataset", "data_root",
                                                         "device")})] = cfg
    for cfg in datasets.values():  # the whole dataset: its cache serves every subset
        ds = cfg.dataset
        load_dataset(ds.name, cfg.data_root, download=ds.download, image_size=ds.image_size,
                     **ds.get("options", {}))
    for cfg in prepares.values():
        # The job's own thread count, as a single run's prepare has (`run_job`): the GAN metrics'
        # classifier trained with the sweeping process's default threads differed from a single
        # run's by 2e-7 in cis_real (2 threads vs 1), so a sweep's numbers depended on its launcher.
        set_threads(cfg.threads)
        RUNNERS[cfg.task.name].prepare(cfg, load_data(cfg), pick_device(cfg.device))
    for url in urls:
        with ResultsDB(url) as db:
            if stale := db.mark_stale_runs():
                log.warning("marked %d runs failed that a killed process left running: %s",
                            len(stale), stale)
            if silent := db.mark_silent_runs(silent_after[url], f"a sweep on {socket.gethostname()}"):
                log.warning("marked %d runs failed whose heartbeat stopped over %g s ago "
                            "(db.heartbeat.stale_after_s; a process on another host died?): %s",
                            len(silent), silent_after[url], [run_id for run_id, _ in silent])
    return sorted({cfg.dataset.name for cfg in datasets.values()}), urls


# --- A job: steps 1-5 --------------------------------------------------------------------------

def run_job(cfg: DictConfig, *, label: str = "", overrides: str = "", parallel_jobs: int = 1,
            output_dir: str | None = None, launcher: str = "basic",
            scheduler_job_id: str | None = None) -> dict:
    """Train the run `cfg` describes; return {'run_id', 'status'} (status 'skipped' with the
    completed run's id when resume finds this config done). label: 'job #3 (4 of 12)' in a
    sweep; overrides: for the first line; parallel_jobs: jobs running at once (threads=auto);
    output_dir: the job's folder; launcher and scheduler_job_id (`bench.launchers`): recorded
    with the run, and a requeued job continues the row of its earlier attempt."""
    check_config(cfg)  # before torch's import where it can (a mistyped value: one line, fast)
    from bench.config_hash import config_hash
    from bench.heartbeat import Heartbeat
    from bench.runtime import pick_device, seed_everything, set_threads
    from db import ResultsDB
    from runners import RUNNERS
    from runners.config import load_data
    from runners.replicas import check_launched, dismiss, follow, launched
    from runners.resume import claim_run

    device = pick_device(cfg.device)
    # Each replica of a data-parallel run (ddp.replicas) is a process with this many threads.
    threads = set_threads(cfg.threads, parallel_jobs * cfg.ddp.replicas)
    if (outside := launched()) is not None:  # one of replicas that torchrun or submitit started
        check_launched(cfg, outside)
        if outside.rank > 0:
            return follow(cfg, outside, threads)
    seed_everything(cfg.seed)
    data = load_data(cfg)
    runner = RUNNERS[cfg.task.name]
    config = OmegaConf.to_container(cfg, resolve=True)
    digest = config_hash(config)
    what = describe(cfg, device, threads, overrides)
    with ResultsDB(cfg.db.url) as db:
        if cfg.resume and (done := db.find_completed(digest)) is not None:  # before prepare: fast
            log.info("%sskipped: run id %d already completed this config (resume=false to run "
                     "again): %s", f"{label}: " if label else "", done, what)
            dismiss(cfg, device)
            return {"run_id": done, "status": "skipped"}
        runner.prepare(cfg, data, device)  # a UserError here writes no run
        run_id, attempt, checkpoint, skip = claim_run(
            db, cfg, config, digest, output_dir=output_dir, device=str(device), threads=threads,
            launcher=launcher, scheduler_job_id=scheduler_job_id)
        if skip is not None:
            log.info("%sskipped: %s: %s", f"{label}: " if label else "", skip["why"], what)
            dismiss(cfg, device)
            return skip
        if attempt > 1:
            what += f"; attempt {attempt}: {checkpoint.resumed}, " + (
                f"training continues after epoch {checkpoint.epoch} from its checkpoint"
                if checkpoint.epoch
                else "training starts over at epoch 1 (no usable checkpoint)")
        log.info("%srun id %d: %s", f"{label} = " if label else "", run_id, what)
        diverged = DivergenceRule(cfg.task.name, cfg.diverge.factor, cfg.diverge.max_loss)
        epochs_done = checkpoint.epoch

        def log_epoch(epoch: int, metrics: dict, artifacts: dict[str, str] | None = None) -> None:
            nonlocal epochs_done
            db.log_epoch(run_id, epoch, metrics)
            epochs_done = max(epochs_done, epoch)
            for kind, path in (artifacts or {}).items():
                db.add_artifact(run_id, kind, path)
            if (line := epoch_line(metrics)) is not None:
                log.info("run id %d epoch %d/%d: %s", run_id, epoch, cfg.epochs, line)
            log.debug("run id %d epoch %d/%d, all metrics: %s", run_id, epoch, cfg.epochs,
                      "  ".join(f"{s}/{n} {v:.4g}" for (s, n), v in metrics.items()))
            if (why := diverged(epoch, metrics)) is not None:
                raise Diverged(why)
            if checkpoint.due(epoch, cfg.epochs):  # after the metrics: `ResultsDB.rewind`
                checkpoint.save(epoch)

        t0 = time.perf_counter()
        try:
            # Leaving the block stops the heartbeat (joined) before the final status is written.
            with Heartbeat(lambda: db.beat(run_id), cfg.db.heartbeat.every_s,
                           name=f"heartbeat of run id {run_id}"), sigterm_as_exception(launcher):
                runner.run(cfg, data, device, log_epoch, checkpoint)
        except Diverged as e:
            db.finish(run_id, "diverged", str(e))
            if not cfg.checkpoint.keep:
                checkpoint.remove()
            log.warning("run id %d diverged: %s", run_id, e)
            return {"run_id": run_id, "status": "diverged", "error": str(e)}
        except BaseException as e:
            if requeued(e, launcher):  # submitit's exit: one line here, no traceback anywhere
                note = requeue_note(epochs_done, cfg.epochs, attempt)
                db.finish(run_id, "failed", note, failure="requeued")
                log.warning("run id %d: %s", run_id, note)
            else:
                db.finish(run_id, "failed", one_line(e), failure=failure_kind(e, launcher))
                log.error("run id %d failed: %s", run_id, one_line(e))
            raise
        db.finish(run_id, "completed")
        if not cfg.checkpoint.keep:
            checkpoint.remove()
        return {"run_id": run_id, "status": "completed", "seconds": time.perf_counter() - t0}
