"""The entry point: `python -m bench.run [-m] key=value ...` trains one run per job.

A job's life, and what the database says at each point:
1. checks (nothing written): bad config, missing dataset, unopenable database -> one-line error;
2. the run's row is written as 'running' just before training starts;
3. metrics are written at the end of every epoch;
4. the status becomes 'completed', 'diverged' (a loss went NaN/inf; the sweep goes on) or
   'failed' with the error (an exception, Ctrl-C or SIGTERM; the other jobs of a sweep still run).
A job killed with SIGKILL cannot write; the next sweep on that host marks its run 'failed'.
"""

import logging
import math
import signal
import sys
import threading
from contextlib import contextmanager

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bench.errors import Diverged, UserError
from bench.validate import CONF_DIR, check_overrides

# torch, the datasets and the database are imported inside run_job: a mistyped group option is
# then reported in well under a second instead of after torch's ~3 s import.

log = logging.getLogger("bench")


class Terminated(BaseException):
    """SIGTERM turned into an exception, so the run's row is closed before the process ends."""


def _on_sigterm(signum, frame):
    raise Terminated("terminated by SIGTERM")


@contextmanager
def sigterm_as_exception():
    """Within the block, SIGTERM raises `Terminated` (only possible in the main thread: with
    joblib's threading backend the job runs elsewhere and keeps the default handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def parallel_jobs() -> int:
    """How many jobs run at once: the joblib launcher's n_jobs, else 1."""
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return 1
    n = launcher.get("n_jobs", 1) if launcher is not None else 1
    return n if isinstance(n, int) and n > 0 else 1


def open_results(url: str):
    from db import ResultsDB

    return ResultsDB(url)


def run_job(cfg: DictConfig) -> int | None:
    """Train the run `cfg` describes; return its row id (None when skipped as already done)."""
    from bench.validate import check_config

    check_config(cfg)  # before torch's import where it can (a mistyped value: one line, fast)
    from bench.runtime import pick_device, seed_everything, set_threads
    from bench.train import data_from_config

    device = pick_device(cfg.device)
    threads = set_threads(cfg.threads, parallel_jobs())
    seed_everything(cfg.seed)
    data = data_from_config(cfg)
    with open_results(cfg.db.url) as db:
        return _record_run(cfg, data, device, threads, db)


def _record_run(cfg: DictConfig, data, device, threads: int, db) -> int | None:
    """Steps 2-4 of a job's life (see the module docstring) for a checked config and its data."""
    from bench.runtime import config_hash
    from runners import RUNNERS

    ds = cfg.dataset
    config = OmegaConf.to_container(cfg, resolve=True)
    digest = config_hash(config)
    if cfg.resume and (done := db.find_completed(digest)) is not None:
        log.info("skipped: run %d already completed this config (resume=false to run again)", done)
        return None
    prepare = getattr(RUNNERS[cfg.task.name], "prepare", None)
    if prepare is not None:  # e.g. the GAN metrics' classifier: if it fails, no run is written
        prepare(cfg, data, device)
    try:
        out_dir = HydraConfig.get().runtime.output_dir
    except ValueError:
        out_dir = None
    run_id = db.start_run(task=cfg.task.name, dataset=ds.name, model=cfg.model.name,
                          norm=cfg.norm.name, bs=cfg.bs, lr=cfg.lr, seed=cfg.seed,
                          epochs=cfg.epochs, config=config, config_hash=digest,
                          output_dir=out_dir, device=str(device), threads=threads)
    log.info("run %d: %s %s/%s norm=%s bs=%d lr=%g seed=%d on %s (%d threads)", run_id,
             cfg.task.name, ds.name, cfg.model.name, cfg.norm.name, cfg.bs, cfg.lr, cfg.seed,
             device, threads)

    def log_epoch(epoch: int, metrics: dict, artifacts: dict[str, str] | None = None) -> None:
        db.log_epoch(run_id, epoch, metrics)
        for kind, path in (artifacts or {}).items():
            db.add_artifact(run_id, kind, path)
        log.info("run %d epoch %d/%d  %s", run_id, epoch, cfg.epochs, "  ".join(
            f"{s}/{n} {v:.4g}" for (s, n), v in metrics.items()))
        for (split, name), v in metrics.items():
            # Training losses only: a test-time loss can be inf (say, BN with batch statistics
            # at test time) without the training having diverged.
            if split == "train" and name.endswith("loss") and not math.isfinite(v):
                raise Diverged(f"{split} {name} became {v} at epoch {epoch}")

    try:
        with sigterm_as_exception():
            RUNNERS[cfg.task.name].run(cfg, data, device, log_epoch)
    except Diverged as e:
        db.finish(run_id, "diverged", str(e))
        log.warning("run %d diverged: %s", run_id, e)
        return run_id
    except BaseException as e:
        db.finish(run_id, "failed", one_line(e))
        log.error("run %d failed: %s", run_id, one_line(e))
        raise
    db.finish(run_id, "completed")
    return run_id


def fail(e: UserError):
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


# An absolute path: a relative one is resolved as a Python module when bench.run is imported
# rather than run as __main__ (as the tests do).
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    try:
        run_job(cfg)
    except UserError as e:
        fail(e)


def main() -> None:
    try:
        check_overrides(sys.argv[1:])
    except UserError as e:
        fail(e)
    hydra_main()


if __name__ == "__main__":
    main()
