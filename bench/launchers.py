"""What a job learns from the launcher and scheduler that started it: which launcher it was, the
scheduler's id for the job, and how many cores it may use and shares with how many jobs.

Plain values and the process environment only (no Hydra, no torch): `bench.run` reads the
launcher's settings from Hydra's config, and `runners.job.run_job` records what these functions
return (runs.launcher, runs.scheduler_job_id, runs.threads).
"""

import importlib.util
import os

from bench.checks import require_name
from bench.errors import UserError, choices

# `hydra/launcher=NAME`: the launchers this suite supports, with the plugin module and the pip
# package that provide each one (Hydra's own basic launcher needs none).
LAUNCHERS = {
    "basic": None,  # one job after another, in this process
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}
SUBMITIT = ("submitit_local", "submitit_slurm")


def check_launcher(name: str) -> str:
    """`name` is a launcher of `LAUNCHERS` whose plugin is installed, else a one-line UserError."""
    require_name("hydra/launcher", name, LAUNCHERS)
    if LAUNCHERS[name] is not None and importlib.util.find_spec(LAUNCHERS[name][0]) is None:
        installed = [n for n, p in LAUNCHERS.items() if p is None or importlib.util.find_spec(p[0])]
        raise UserError(f"hydra/launcher '{name}' is not installed (pip install "
                        f"{LAUNCHERS[name][1]}; installed: {choices(installed)})")
    return name


def scheduler_job_id() -> str | None:
    """The scheduler's id of this job: submitit's (`submitit.JobEnvironment().job_id`: SLURM's
    job id, ARRAYJOB_TASK for an array task, or the local job's controller pid) inside a
    submitit job; SLURM's own variables in a job SLURM started without submitit; else None.
    A requeued job keeps its id (SLURM's `scontrol requeue`, submitit's local controller)."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        try:
            return str(submitit.JobEnvironment().job_id)
        except (RuntimeError, KeyError):  # no submitit environment is active after all
            pass
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (taskset,
    a cgroup cpuset, SLURM's binding of --cpus-per-task), capped by SLURM_CPUS_PER_TASK for a
    cluster that allocates cores without binding them. os.cpu_count() counts the machine's."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        cores = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        cores = min(cores, int(slurm))
    return max(1, cores)


def jobs_at_once(launcher: str, batch: int, cores: int, n_jobs=None) -> int:
    """How many jobs run on this machine at once, this one included, under `launcher`, in a
    batch of `batch` jobs launched together (threads=auto gives each cores // this)."""
    batch = max(1, batch)
    if launcher == "submitit_slurm":
        return 1  # each job has its own allocation: its cores are `usable_cores()` there
    if launcher == "submitit_local":
        # LocalExecutor starts one process per job of the batch at once; unlike SLURM it has
        # no array_parallelism (submitit/local/local.py, `_submit_command` per job).
        return batch
    if launcher == "joblib":
        n = n_jobs if isinstance(n_jobs, int) and not isinstance(n_jobs, bool) else 1
        if n < 0:  # joblib's convention: -1 all cores, -2 all but one, ...
            n = cores + 1 + n
        return max(1, min(n, batch))  # 2 jobs with n_jobs=8 are 2 processes, not 8
    return 1  # basic: one job after another
