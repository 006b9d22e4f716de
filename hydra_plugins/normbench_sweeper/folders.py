"""`${launch_id:}`: what makes a command's output folder its own (conf/config.yaml's `hydra:`).

Hydra's default folder is the start time to the second, so two sweeps started in the same second
shared `multirun/DATE/TIME/` and interleaved their logs in one `run.log`. The id adds the
command's process id (unique among the processes alive on a host) and two random bytes (for
hosts that share a file system). Cached (`use_cache`): one value per command, and Hydra copies
the cache into each job's config (`OmegaConf.copy_cache` in `load_sweep_config`), so joblib's
and submitit's job processes resolve the same folder as the sweep's process.
"""

import os
import secrets

from omegaconf import OmegaConf


def launch_id() -> str:
    return f"{os.getpid()}-{secrets.token_hex(2)}"


if not OmegaConf.has_resolver("launch_id"):
    OmegaConf.register_new_resolver("launch_id", launch_id, use_cache=True)
