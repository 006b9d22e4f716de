"""What the command line shows and leaves behind, shared by the two halves of the entry point:
`bench.run` (one job) and the sweeper (`hydra_plugins.normbench_sweeper`, a whole sweep).

A refused command (a user's mistake) prints one line, exits 2 and leaves no folder behind; the
results are named with any password hidden, with the command to run next.
"""

import re
import shutil
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from bench.errors import UserError

# When this command started: a folder it may remove holds only files written since
# (`bench.run.main` sets it).
STARTED = time.time()
# The sweeper passes the sweep's job count to every job under this key of `hydra.job.env_set`,
# the one per-job setting both Hydra launchers carry into the job (loky workers included).
SWEEP_JOBS_KEY = "NORMBENCH_SWEEP_JOBS"
DEFAULT_DB_URL = "sqlite:///results/bench.db"  # conf/config.yaml's, the one `make report` reads


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


