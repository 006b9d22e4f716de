"""Hydra's basic sweeper, plus the sweep's preparation before the first job starts, and a summary.

It lives in `hydra_plugins` because Hydra only instantiates sweepers from that namespace: this is
Hydra glue, and the work is `runners.job.prepare_sweep`'s. In the step where Hydra already
composes every job's config, it hands them all to `prepare_sweep` (every job checked, so `bs=2,0`
fails at once with one line instead of after the first job's hours of training; each dataset
loaded and each task's `prepare` done once, by this process, before the parallel jobs; each
database opened and its stale runs marked).

Around the launch:
- each job is told the sweep's job count, so its first line reads "job #3 (4 of 12)";
- Hydra's own per-job launch line ("#3 : norm=bn db.url=sqlite\\:///...") is dropped: it shows
  the overrides backslash-escaped, and each job's first line shows them as typed instead;
- the sweep ends with a summary counted from the jobs' returns (`bench.run.hydra_main` returns
  each job's status; a job that raised is 'failed'): completed, diverged, failed, skipped, where
  the results are and the next command. It must be here: a job that raises ends the multirun
  before Hydra's `Callback.on_multirun_end`, and under the joblib launcher jobs run in worker
  processes, so only this process sees every job.
- a command refused before any job ran leaves no multirun/ folder behind;
- SIGTERM or Ctrl-C to the sweep, a signal to one joblib worker, and a worker that dies each end
  in one line with every run's row final (`stops.py`); each job is told the sweep's pid, which
  joblib's workers watch (bench/parent_watch.py); `${launch_id:}` gives each command its own
  folder (`folders.py`).

It also takes `grids`: a list of sub-grids, each a `params`-style mapping, for an experiment that
is not one Cartesian product (the Replacing BatchNorm post runs GroupNorm with 4 groups on cnn4
but 32 on resnet18, and BN with eps 0.1 beside its other norms). Each grid is `params` updated by
the grid's keys and then by the command line's, expanded like `params`; the jobs of all grids run
in order, each distinct job once. The sweeper's config is `hydra/sweeper: normbench` (registered
below).
"""

import logging
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict, read_write

from hydra_plugins.normbench_sweeper import folders, stops  # noqa: F401 (folders: ${launch_id:})

log = logging.getLogger("bench")

# The loggers of the launchers (basic, joblib, submitit_local and submitit_slurm), which log
# "\t#N : overrides" per job.
LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher",
                    "hydra_plugins.hydra_joblib_launcher._core",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher")
HYDRA_JOB_LINE = re.compile(r"\s*#\d+ : ")


@dataclass
class ValidatingSweeperConf:
    _target_: str = "hydra_plugins.normbench_sweeper.ValidatingSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    grids: list[dict[str, str]] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="normbench", node=ValidatingSweeperConf,
                             provider="normbench")


def grid_jobs(params: dict | None, grids: list[dict], arguments: list[str],
              parser: OverridesParser | None = None) -> list[list[str]]:
    """Every job's overrides: each grid is `params` updated by the grid and then by `arguments`
    (the command line), expanded as Hydra's basic sweeper expands `params`; duplicates dropped."""
    parser = parser or OverridesParser.create()
    jobs, seen = [], set()
    for grid in grids:
        conf = [f"{k}={v}" for k, v in {**(params or {}), **grid}.items()] + list(arguments)
        for job in BasicSweeper.split_arguments(parser.parse_overrides(conf), None)[0]:
            if tuple(job) not in seen:
                seen.add(tuple(job))
                jobs.append(job)
    return jobs


def as_launched(cfg, num: int):
    """`cfg`, a job's config as the sweeper composed it, with the job's number and folder set as
    every launcher sets them (its first job's index + the job's place; sweep.dir/sweep.subdir),
    and db.url resolved under them. A per-job URL (`db.url='sqlite:///shards/job_${hydra:job.num}
    .db'`) reads Hydra's config of the job, which otherwise exists only once the job runs:
    `prepare_sweep` then failed with "HydraConfig was not set" instead of opening each job's own
    database."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = num
        cfg.hydra.runtime.output_dir = os.path.abspath(os.path.join(
            OmegaConf.select(cfg, "hydra.sweep.dir"), OmegaConf.select(cfg, "hydra.sweep.subdir")))
    hydra_config, before = HydraConfig.instance(), HydraConfig.instance().cfg
    hydra_config.set_config(cfg)
    try:
        url = cfg.db.url
    finally:
        hydra_config.cfg = before
    with read_write(cfg), open_dict(cfg):
        cfg.db.url = url
    return cfg


def scheduler_gave_up(r: JobReturn) -> bool:
    """The failed job `r` was ended by submitit, not by an error of its own: timed out more
    often than `max_num_timeout` allows (`UncompletedJobError`, raised by submitit's requeue
    handler: runners/interrupts.py)."""
    return type(r._return_value).__name__ == "UncompletedJobError"


def _not_a_job_line(record: logging.LogRecord) -> bool:
    return not HYDRA_JOB_LINE.match(record.getMessage())


def quiet_hydra_job_lines() -> None:
    """Drop the launchers' per-job lines. A filter on their loggers, not a level: Hydra's
    `configure_log` runs `logging.config.dictConfig` at every launch, which keeps filters on
    loggers it does not name but would be free to reset levels."""
    for name in LAUNCHER_LOGGERS:
        logger = logging.getLogger(name)
        if _not_a_job_line not in logger.filters:
            logger.addFilter(_not_a_job_line)


def summary(returns: Sequence[JobReturn], total: int, urls: set[str]) -> list[str]:
    """The sweep's last lines: how each job ended, where the results are, what to run next."""
    from sqlalchemy.engine import make_url

    from bench.cli import DEFAULT_DB_URL, next_command, shown_url

    counts = {k: [] for k in ("completed", "diverged", "failed", "skipped", "running elsewhere")}
    for r in returns:
        if r.status == JobStatus.COMPLETED:
            value = r._return_value if isinstance(r._return_value, dict) else {}
            kind = "running elsewhere" if value.get("running_elsewhere") else value.get("status", "completed")
            counts[kind].append(f"run id {value.get('run_id')}")
        else:  # raised: no return value, and maybe no run id (see the job's log)
            counts["failed"].append(f"job #{r.hydra_cfg.hydra.job.num}")
    parts = [f"{len(counts['completed'])} completed"]
    parts += [f"{len(counts[k])} {k}" + (f" ({', '.join(counts[k])})" if counts[k] else "")
              for k in ("diverged", "failed")]
    parts.append(f"{len(counts['skipped'])} skipped" + (" (already completed: resume)"
                                                         if counts["skipped"] else ""))
    if busy := counts["running elsewhere"]:  # a live run of another sweep: db/claims.py
        parts.append(f"{len(busy)} skipped (running elsewhere: {', '.join(busy)})")
    if total > len(returns):
        parts.append(f"{total - len(returns)} not started (the sweep stopped at a failed batch)")
    urls = sorted(urls, key=lambda u: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", u)])
    where = ", ".join(shown_url(u) for u in urls)  # job_2 before job_10
    lines = [f"sweep done, {total} jobs: {', '.join(parts)}; results in {where}"]
    files = [make_url(u).database for u in urls if make_url(u).get_backend_name() == "sqlite"]
    if len(urls) > 1 and len(files) == len(urls):  # e.g. a shard per job: one database to report on
        lines.append(f"next: python -m db merge {shlex.join(files)} --into {DEFAULT_DB_URL}, "
                     "then make report")
    else:
        lines += [f"next: {next_command(u)}" for u in urls]
    return lines


class ValidatingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None,
                 grids: list[dict] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = [dict(g) for g in grids or []]
        self._arguments: list[str] = []
        self._urls: set[str] = set()

    def sweep(self, arguments: list[str]):
        """BasicSweeper.sweep's loop (Hydra 1.3), with the job count passed on, the per-job
        launch lines quieted, and the summary logged before the first failure is re-raised."""
        from bench.cli import SWEEP_JOBS_KEY, remove_hydra_leftovers
        from bench.parent_watch import SWEEP_PID_KEY, Stopped

        self._arguments = list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + self._arguments)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        total = sum(len(batch) for batch in self.overrides)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        # Every launcher composes each job from this list plus the job's own overrides.
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            self.config.hydra.overrides.hydra += [
                f"++hydra.job.env_set.{SWEEP_JOBS_KEY}={total}",
                f"++hydra.job.env_set.{SWEEP_PID_KEY}={os.getpid()}"]  # bench/parent_watch.py
        quiet_hydra_job_lines()
        returns, done = [], []
        launcher = self.config.hydra.runtime.choices.get("hydra/launcher")
        try:
            with stops.on_signals(launcher):
                while not self.is_done():
                    batch = self.get_job_batch()
                    self.validate_batch_is_legal(batch)
                    results = self.launcher.launch(batch, initial_job_idx=len(done))
                    returns.append(results)
                    done.extend(results)
                    if any(r.status != JobStatus.COMPLETED for r in results):
                        break  # as Hydra's loop, which raises the failure after this batch
        except BaseException as e:
            if (code := stops.exit_code(e)) is not None:  # its job closed its row
                log.error(stops.stopped_line(code - 128, len(done), total))
                raise SystemExit(code) from None
            if stops.worker_died(e):
                marked = stops.mark_dead_workers(self._urls)
                for line in summary(done, total, self._urls) if done else []:  # earlier batches
                    log.info(line)
                log.error("sweep stopped: a worker process died (SIGKILL? out of memory?) and "
                          "joblib stopped the others; marked their runs failed: %s; rerun the "
                          "same command to continue", marked)
                raise SystemExit(1) from None
            if not done:  # refused before any job ended
                remove_hydra_leftovers(sweep_dir)
            raise
        for line in summary(done, total, self._urls):
            log.info(line)
        gave_up = [r for r in done if r.status == JobStatus.FAILED
                   and (scheduler_gave_up(r) or isinstance(r._return_value, Stopped))]
        for r in gave_up:  # the scheduler's or a signal's doing, not a bug: one line, no traceback
            log.error("job #%d failed: %s", r.hydra_cfg.hydra.job.num, r._return_value)
        for r in done:
            if not any(r is g for g in gave_up):
                _ = r.return_value  # a failed job's exception: Hydra reports it and exits with 1
        if gave_up:
            raise SystemExit(1)
        return returns

    def split_arguments(self, overrides, max_batch_size):  # shadows BasicSweeper's staticmethod
        if not self.grids:
            return BasicSweeper.split_arguments(overrides, max_batch_size)
        jobs = grid_jobs(self.params, self.grids, self._arguments,
                         OverridesParser.create(config_loader=self.hydra_context.config_loader))
        n = max_batch_size or len(jobs)
        return [jobs[i:i + n] for i in range(0, len(jobs), n)]

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from bench.cli import fail, shown_url, unescape
        from bench.errors import UserError
        from runners.job import prepare_sweep

        # Composing each job is what Hydra's own check does; a composition error propagates from
        # here exactly as it would from there.
        loader = self.hydra_context.config_loader
        first = sum(len(b) for b in self.overrides[:self.batch_index - 1])  # jobs launched before
        jobs = [(as_launched(loader.load_sweep_config(self.config, list(overrides)), first + i),
                 " ".join(unescape(o) for o in overrides)) for i, overrides in enumerate(batch)]
        try:
            datasets, urls = prepare_sweep(jobs)
        except UserError as e:
            fail(e, self.config.hydra.sweep.dir)
        self._urls |= urls
        log.info("checked %d jobs; datasets ready: %s; results database: %s", len(batch),
                 ", ".join(datasets), ", ".join(sorted(shown_url(u) for u in urls)))
