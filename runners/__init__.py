"""Tasks by short name. Each runner module has the same three functions:

- `check(cfg)`: raise `UserError` for a config the task cannot run (called on the meta device,
  before any work, for every job of a sweep);
- `prepare(cfg, data, device)`: what must exist before the run's row is written (the GAN
  metrics' classifier is trained or found there; the other tasks need nothing); a `UserError`
  from it writes no run. A sweep calls it once per task and dataset before its first job;
- `run(cfg, data, device, log_epoch, checkpoint=None)`: train and evaluate, calling
  `log_epoch(epoch, metrics)` once per epoch with `{(split, name): value}` (and
  `artifacts={kind: path}` for files the run wrote, e.g. the GAN's sample grid). `checkpoint`
  (`bench.checkpoint.Checkpoint`, or None for none): the runner names what it trains with
  `checkpoint.attach(...)`, which restores a resumed run's state and tells the first epoch. The
  caller (`runners.job`) owns the database row and the run's status; `log_epoch` raises
  `Diverged` when a training loss breaks a divergence rule.

`RUNNERS` maps each name of `TASKS` to its module. It is made on first use: the runners import
torch (~3 s), and a config error found before that (`runners.validate`) is reported in well
under a second.
"""

import importlib

TASKS = ("classify", "autoencode", "gan")  # module names under runners/ (conf/task/*.yaml)


def __getattr__(name: str):
    if name == "RUNNERS":
        return {task: importlib.import_module(f"runners.{task}") for task in TASKS}
    raise AttributeError(f"module 'runners' has no attribute {name!r}")
