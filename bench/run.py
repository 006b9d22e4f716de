"""The entry point: `python -m bench.run [-m] key=value ...` trains one run per job.

A job's life, and what the database says at each point:
1. checks (nothing written): bad config, missing dataset, unopenable database -> one-line error,
   and the folders Hydra made for this command are removed again (`remove_hydra_leftovers`);
2. the run's row is written as 'running' just before training starts;
3. metrics are written at the end of every epoch;
4. the status becomes 'completed', 'diverged' (a training loss went NaN/inf, or grew past
   `diverge.factor` times its first value; the sweep goes on) or 'failed' with the error (an
   exception, Ctrl-C or SIGTERM; the other jobs of a sweep still run).
A job killed with SIGKILL cannot write; the next sweep on that host marks its run 'failed'.

What a job logs: one line naming it (Hydra's job number, its place in the sweep, the database's
run id, its settings, device and threads), one short line per epoch (the full metrics at DEBUG
level and in the database), and how it ended. A single run ends with a one-line summary; a sweep's
summary is the sweeper's (hydra_plugins/normbench_sweeper).
"""

import logging
import re
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench.divergence import DivergenceRule, train_losses
from bench.errors import Diverged, UserError
from bench.validate import CONF_DIR, check_overrides

# torch, the datasets and the database are imported inside run_job: a mistyped group option is
# then reported in well under a second instead of after torch's ~3 s import.

log = logging.getLogger("bench")

# When this command started: a folder it may remove holds only files written since (main() sets it).
STARTED = time.time()
# The sweeper passes the sweep's job count to every job under this key of `hydra.job.env_set`,
# the one per-job setting both Hydra launchers carry into the job (loky workers included).
SWEEP_JOBS_KEY = "NORMBENCH_SWEEP_JOBS"
DEFAULT_DB_URL = "sqlite:///results/bench.db"  # conf/config.yaml's, the one `make report` reads


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


def shown_url(url: str) -> str:
    """The URL as a log line may show it: any password replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def next_command(url: str) -> str:
    """What to run after the results are in (a hidden password is for the user to fill in)."""
    command = f"python -m analysis.report --db {shown_url(url)}"
    return f"make report (or {command})" if url == DEFAULT_DB_URL else command


def unescape(override: str) -> str:
    """`db.url=sqlite\\:///x` -> `db.url=sqlite:///x`: Hydra backslash-escapes the characters of
    its override grammar (`\\()[]{}:=, `) when it expands a sweep; the user typed them plain."""
    return re.sub(r"\\(.)", r"\1", override)


# --- What a job logs ---------------------------------------------------------------------------

def job_label() -> str:
    """'job #3 (4 of 12)' in a sweep: Hydra's job number (its folder under multirun/) and its
    place in the sweep; '' for a single run."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return ""
    if hc.mode != RunMode.MULTIRUN:
        return ""
    total = hc.job.env_set.get(SWEEP_JOBS_KEY)
    return f"job #{hc.job.num} ({hc.job.num + 1} of {total})" if total else f"job #{hc.job.num}"


# Keys `describe` already shows, and db.url, which the sweep's first and last lines name.
DESCRIBED = ("task", "dataset", "model", "norm", "bs", "lr", "seed", "epochs", "device", "threads",
             "db.url")


def job_overrides() -> str:
    """This job's other command-line overrides, as the user typed them."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return ""
    return " ".join(unescape(o) for o in overrides if o.split("=", 1)[0].lstrip("+~") not in DESCRIBED)


def describe(cfg: DictConfig, device, threads: int) -> str:
    """The settings a reader needs to tell jobs apart, the device and the thread count (CPU
    results are reproducible only at the same thread count: runs.threads)."""
    ds = cfg.dataset
    text = (f"{cfg.task.name} {ds.name}/{cfg.model.name} norm={cfg.norm.name} bs={cfg.bs} "
            f"lr={cfg.lr:g} seed={cfg.seed} epochs={cfg.epochs} on {device}, "
            f"{threads} thread{'s' if threads != 1 else ''}")
    overrides = job_overrides()
    return f"{text} [{overrides}]" if overrides else text


# The test metrics the INFO line shows: each task's headline numbers (classify loss and acc,
# autoencode loss = mse, the GAN's cfid); everything else is at DEBUG and in the database.
MAIN_TEST_METRICS = ("loss", "acc", "cfid")


def epoch_line(metrics: dict) -> str | None:
    """'train loss 0.4123 | test loss 0.3012 acc 0.9011 | 12.3 s', None when nothing main."""
    train = " ".join(f"{n} {v:.4g}" for n, v in train_losses(metrics).items())
    test = " ".join(f"{n} {metrics['test', n]:.4g}" for n in MAIN_TEST_METRICS
                    if ("test", n) in metrics)
    if not (train or test):
        return None
    parts = [f"train {train}" if train else "", f"test {test}" if test else ""]
    seconds = sum(metrics.get((s, "time_s"), 0.0) for s in ("train", "test"))
    if seconds:
        parts.append(f"{seconds:.1f} s")
    return " | ".join(p for p in parts if p)


# --- A job -------------------------------------------------------------------------------------

def run_job(cfg: DictConfig) -> dict:
    """Train the run `cfg` describes; return {'run_id', 'status'} (status 'skipped' with the
    completed run's id when resume finds this config done)."""
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


def _record_run(cfg: DictConfig, data, device, threads: int, db) -> dict:
    """Steps 2-4 of a job's life (see the module docstring) for a checked config and its data."""
    from bench.runtime import config_hash
    from runners import RUNNERS

    ds = cfg.dataset
    config = OmegaConf.to_container(cfg, resolve=True)
    digest = config_hash(config)
    label = job_label()
    if cfg.resume and (done := db.find_completed(digest)) is not None:
        log.info("%sskipped: run id %d already completed this config (resume=false to run again): "
                 "%s", f"{label}: " if label else "", done, describe(cfg, device, threads))
        return {"run_id": done, "status": "skipped"}
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
    log.info("%srun id %d: %s", f"{label} = " if label else "", run_id,
             describe(cfg, device, threads))
    diverged = DivergenceRule(cfg.task.name, cfg.diverge.factor, cfg.diverge.max_loss)

    def log_epoch(epoch: int, metrics: dict, artifacts: dict[str, str] | None = None) -> None:
        db.log_epoch(run_id, epoch, metrics)
        for kind, path in (artifacts or {}).items():
            db.add_artifact(run_id, kind, path)
        line = epoch_line(metrics)
        if line is not None:
            log.info("run id %d epoch %d/%d: %s", run_id, epoch, cfg.epochs, line)
        log.debug("run id %d epoch %d/%d, all metrics: %s", run_id, epoch, cfg.epochs, "  ".join(
            f"{s}/{n} {v:.4g}" for (s, n), v in metrics.items()))
        if (why := diverged(epoch, metrics)) is not None:
            raise Diverged(why)

    t0 = time.perf_counter()
    try:
        with sigterm_as_exception():
            RUNNERS[cfg.task.name].run(cfg, data, device, log_epoch)
    except Diverged as e:
        db.finish(run_id, "diverged", str(e))
        log.warning("run id %d diverged: %s", run_id, e)
        return {"run_id": run_id, "status": "diverged", "error": str(e)}
    except BaseException as e:
        db.finish(run_id, "failed", one_line(e))
        log.error("run id %d failed: %s", run_id, one_line(e))
        raise
    db.finish(run_id, "completed")
    return {"run_id": run_id, "status": "completed", "seconds": time.perf_counter() - t0}


def single_run_summary(result: dict, url: str) -> str:
    """The last line of a run without -m."""
    if result["status"] == "skipped":
        what = f"nothing to do: run id {result['run_id']} already completed this config"
    elif result["status"] == "diverged":
        what = f"run id {result['run_id']} diverged ({result['error']})"
    else:
        what = f"run id {result['run_id']} completed in {result['seconds']:.1f} s"
    return f"{what}; results in {shown_url(url)}; next: {next_command(url)}"


# --- A refused command -------------------------------------------------------------------------

# What Hydra writes into a folder before our checks run: a job's `.hydra/` (config.yaml,
# hydra.yaml, overrides.yaml) and log file (`<job name>.log`), a sweep's multirun.yaml.
HYDRA_FILES = re.compile(r"(\.hydra/(config|hydra|overrides)\.yaml|[^/]+\.log|multirun\.yaml)")


def _only_hydra_files(folder: Path) -> bool:
    """True when `folder` holds nothing but Hydra's own files, all written by this command."""
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if p.is_dir():
            if rel != ".hydra":
                return False
        # 10 ms of slack for file systems whose timestamps lag the clock slightly.
        elif not HYDRA_FILES.fullmatch(rel) or p.stat().st_mtime < STARTED - 0.01:
            return False
    return True


def remove_hydra_leftovers(*folders) -> None:
    """Remove each folder that holds only what Hydra wrote for this command, then each parent
    that is left empty or Hydra's alone (outputs/DATE/TIME, outputs/DATE, outputs), stopping at
    the working directory and at the first folder that holds anything else."""
    cwd = Path.cwd().resolve()
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder).resolve()
        while folder.is_dir() and folder != cwd and _only_hydra_files(folder):
            shutil.rmtree(folder)
            if cwd not in folder.parents:  # outside the working directory: the folder only
                break
            folder = folder.parent


def _job_dir() -> str | None:
    try:
        return OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
    except ValueError:
        return None


def fail(e: UserError, *created):
    """A user's mistake: one line, exit 2, and no folder left behind (`created`: folders Hydra
    made for this command besides the running job's own)."""
    remove_hydra_leftovers(_job_dir(), *created)
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


# An absolute path: a relative one is resolved as a Python module when bench.run is imported
# rather than run as __main__ (as the tests do).
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> dict:
    try:
        result = run_job(cfg)
    except UserError as e:
        fail(e)
    if HydraConfig.get().mode == RunMode.RUN:
        log.info(single_run_summary(result, cfg.db.url))
    return result  # the sweeper counts the sweep's outcomes from these


def main() -> None:
    global STARTED
    STARTED = time.time()
    # Also before --help and --hydra-help, which compose the config too: `--help norm=foo`
    # then gets this one line instead of Hydra's composition error.
    try:
        check_overrides(sys.argv[1:])
    except UserError as e:
        fail(e)
    hydra_main()


if __name__ == "__main__":
    main()
