"""Tasks by short name. Each runner module has the same two functions:

- `check(cfg)`: raise `UserError` for a config the task cannot run (called on the meta device,
  before any work, for every job of a sweep);
- `run(cfg, data, device, log_epoch)`: train and evaluate, calling `log_epoch(epoch, metrics)`
  once per epoch with `{(split, name): value}` (and `artifacts={kind: path}` for files the run
  wrote, e.g. the GAN's sample grid). The caller owns the database row and the run's status;
  `log_epoch` raises `Diverged` when a loss (a metric whose name ends in "loss") stops being
  finite.

and may have a third:

- `prepare(cfg, data, device)`: work that must succeed before the run's row is written (the GAN
  metrics' classifier is trained or found there); a `UserError` from it writes no run.
"""

from runners import autoencode, classify, gan

RUNNERS = {
    "classify": classify,
    "autoencode": autoencode,
    "gan": gan,
}
