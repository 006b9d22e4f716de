"""The entry point: `python -m bench.run [-m] key=value ...` trains one run per job.

This module is the Hydra glue of one job: it reads what only Hydra knows (the job's number and
place in the sweep, its overrides as typed, its folder, the launcher and its parallelism) and
hands the config, with plain values, to `runners.job.run_job`, which owns a job's life and
documents what the database says at each step. A user's mistake is one line and exit 2
(`bench.cli.fail`); SIGTERM or Ctrl-C is one line and exit 143 or 130. A job in a joblib worker
watches the sweep's process and stops when it dies (`bench.parent_watch`). A single run ends
with a one-line summary; a sweep's summary is the sweeper's (hydra_plugins/normbench_sweeper).
"""

import logging
import os
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench import cli, parent_watch
from bench.errors import UserError, one_line
from bench.launchers import jobs_at_once, scheduler_job_id, usable_cores
from hydra_plugins.normbench_sweeper import stops
from runners.overrides import check_overrides
from runners.validate import CONF_DIR

log = logging.getLogger("bench")


def _hydra(multirun: bool = False):
    """This job's Hydra config; None outside Hydra (a test calling these directly), and, with
    `multirun`, for a single run too."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return None if multirun and hc.mode != RunMode.MULTIRUN else hc


def launcher_name() -> str:
    """The launcher that started this job (`hydra/launcher=NAME`); 'basic' for a run without -m,
    which Hydra runs in this process whatever the launcher."""
    hc = _hydra(multirun=True)
    return (hc.runtime.choices.get("hydra/launcher") if hc else None) or "basic"


def batch_jobs() -> int:
    """How many jobs Hydra launched together with this one, this one included: its batch of the
    sweep (`hydra.sweeper.max_batch_size` jobs at a time, the rest in the last; the whole
    sweep when unset), as the sweeper splits it. 1 for a single run."""
    if (hc := _hydra(multirun=True)) is None:
        return 1
    total = int(hc.job.env_set.get(cli.SWEEP_JOBS_KEY, 1))
    size = OmegaConf.select(hc, "sweeper.max_batch_size") or total
    return max(1, min(size, total - hc.job.num // size * size))


def parallel_jobs() -> int:
    """How many jobs run on this machine at once, this one included (`threads=auto` divides
    the cores among them): `bench.launchers.jobs_at_once` for this launcher and batch."""
    if (hc := _hydra()) is None:
        return 1
    return jobs_at_once(launcher_name(), batch_jobs(), usable_cores(),
                        OmegaConf.select(hc, "launcher.n_jobs"))


def job_label() -> str:
    """'job #3 (4 of 12)' in a sweep: Hydra's job number (its folder under multirun/) and its
    place in the sweep; '' for a single run."""
    if (hc := _hydra(multirun=True)) is None:
        return ""
    total = hc.job.env_set.get(cli.SWEEP_JOBS_KEY)
    return f"job #{hc.job.num} ({hc.job.num + 1} of {total})" if total else f"job #{hc.job.num}"


def job_overrides() -> str:
    """This job's other command-line overrides (not in `runners.job_log.DESCRIBED`), as typed."""
    from runners.job_log import DESCRIBED

    if (hc := _hydra()) is None:
        return ""
    return " ".join(cli.unescape(o) for o in hc.overrides.task
                    if o.split("=", 1)[0].lstrip("+~") not in DESCRIBED)


def sweep_pid() -> int | None:
    """The sweep's main process, which the sweeper passes to every job."""
    pid = hc.job.env_set.get(parent_watch.SWEEP_PID_KEY) if (hc := _hydra()) else None
    return int(pid) if pid else None


def output_dir() -> str | None:
    return hc.runtime.output_dir if (hc := _hydra()) else None


def single_run_summary(result: dict, url: str) -> str:
    """The last line of a run without -m."""
    if result["status"] == "replica":  # rank 1.. of replicas torchrun or submitit started
        done = "trained" if result["word"] == "train" else "skipped"
        return f"replica {result['rank']}: done ({done}); rank 0 logs and writes the run"
    if result["status"] == "skipped":
        # why: already completed, diverged (a result), or running elsewhere (runners.resume)
        why = result.get("why") or f"run id {result['run_id']} already completed this config"
        what = f"nothing to do: {why}"
    elif result["status"] == "diverged":
        what = f"run id {result['run_id']} diverged ({result['error']})"
    else:
        what = f"run id {result['run_id']} completed in {result['seconds']:.1f} s"
    return f"{what}; results in {cli.shown_url(url)}; next: {cli.next_command(url)}"


# An absolute path: a relative one is resolved as a Python module when bench.run is imported
# rather than run as __main__ (as the tests do).
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> dict:
    from runners.interrupts import Terminated
    from runners.job import run_job

    # A loky worker outlives the sweep's process unless it watches it (bench/parent_watch.py).
    # submitit's jobs are meant to outlive it: its local controller "is expected to survive the
    # end of the python session" (submitit/local/local.py), as SLURM jobs do.
    in_worker = launcher_name() == "joblib" and parent_watch.start(sweep_pid() or os.getpid())
    try:
        with parent_watch.job():
            result = run_job(cfg, label=job_label(), overrides=job_overrides(),
                             parallel_jobs=parallel_jobs(), output_dir=output_dir(),
                             launcher=launcher_name(), scheduler_job_id=scheduler_job_id())
    except UserError as e:
        cli.fail(e)
    except parent_watch.ParentDied:  # run_job closed its row and logged why; nobody waits
        logging.shutdown()
        os._exit(1)
    except (Terminated, KeyboardInterrupt) as e:
        if in_worker:  # a signal to this worker: this job ends, the sweep's others go on
            raise parent_watch.Stopped(one_line(e, with_type=False)) from None
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep's own process: the sweeper ends the sweep in one line
        log.error("stopped by %s (a started run is closed as 'failed'); rerun the same command "
                  "to continue", stops.SIGNALS[stops.exit_code(e) - 128])
        raise SystemExit(stops.exit_code(e)) from None  # one line: no traceback for a signal
    if HydraConfig.get().mode == RunMode.RUN:
        log.info(single_run_summary(result, cfg.db.url))
    return result  # the sweeper counts the sweep's outcomes from these


def main() -> None:
    cli.STARTED = time.time()
    # Also before --help and --hydra-help, which compose the config too: `--help norm=foo`
    # then gets this one line instead of Hydra's composition error.
    try:
        check_overrides(sys.argv[1:])
    except UserError as e:
        cli.fail(e)
    hydra_main()


if __name__ == "__main__":
    main()
