"""Tasks by short name. Each runner module has the same two functions:

- `check(cfg)`: raise `UserError` for a config the task cannot run (called on the meta device,
  before any work, for every job of a sweep);
- `run(cfg, data, device, log_epoch)`: train and evaluate, calling `log_epoch(epoch, metrics)`
  once per epoch with `{(split, name): value}`. The caller owns the database row and the run's
  status; `log_epoch` raises `Diverged` when a loss stops being finite.
"""

from runners import classify

RUNNERS = {
    "classify": classify,
}
