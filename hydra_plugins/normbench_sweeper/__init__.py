"""Hydra's basic sweeper, plus a check of every job before the first one starts.

It lives in `hydra_plugins` because Hydra only instantiates sweepers from that namespace. What it
adds to `BasicSweeper`, in the step where Hydra already composes every job's config:
- `bench.validate.check_config` on each job, so `bs=2,0` fails at once with one line instead of
  after the first job's hours of training;
- each distinct dataset is loaded once here, so its download and uint8 cache are made by one
  process and the parallel jobs only read the cache; likewise a task's `prepare` step (the GAN
  metrics' classifier is trained here once, not by each parallel job, and if it cannot be
  trained the sweep stops before any job);
- the results database is opened once (schema created, one clear error for a bad URL), and runs
  that a killed process left 'running' on this host are marked failed.

It also takes `grids`: a list of sub-grids, each a `params`-style mapping, for an experiment that
is not one Cartesian product (seed 003 runs GroupNorm with 4 groups on cnn4 but 32 on resnet18,
and BN with eps 0.1 beside its other norms). Each grid is `params` updated by the grid's keys
and then by the command line's, expanded like `params`; the jobs of all grids run in order, each
distinct job once. The sweeper's config is `hydra/sweeper: normbench` (registered below).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

log = logging.getLogger("bench")


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


class ValidatingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None,
                 grids: list[dict] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = [dict(g) for g in grids or []]
        self._arguments: list[str] = []

    def sweep(self, arguments: list[str]):
        self._arguments = list(arguments)
        return super().sweep(arguments)

    def split_arguments(self, overrides, max_batch_size):  # shadows BasicSweeper's staticmethod
        if not self.grids:
            return BasicSweeper.split_arguments(overrides, max_batch_size)
        jobs = grid_jobs(self.params, self.grids, self._arguments,
                         OverridesParser.create(config_loader=self.hydra_context.config_loader))
        n = max_batch_size or len(jobs)
        return [jobs[i:i + n] for i in range(0, len(jobs), n)]

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from bench.errors import UserError
        from bench.run import fail, open_results
        from bench.validate import check_config

        # Composing each job is what Hydra's own check does; a composition error propagates from
        # here exactly as it would from there.
        loader = self.hydra_context.config_loader
        datasets, urls, prepares = {}, set(), {}
        try:
            for overrides in batch:
                cfg = loader.load_sweep_config(self.config, list(overrides))
                try:
                    check_config(cfg)
                except UserError as e:
                    raise UserError(f"{e} [job: {' '.join(overrides)}]") from None
                ds = cfg.dataset
                key = (ds.name, ds.image_size, str(sorted(ds.get("options", {}).items())),
                       cfg.data_root, ds.download)
                datasets[key] = ds
                urls.add(cfg.db.url)
                if _has_prepare(cfg):
                    prepares[OmegaConf.to_yaml({k: cfg[k] for k in ("task", "dataset", "data_root",
                                                                     "device")})] = cfg
            for (_, _, _, root, _), ds in datasets.items():
                _prepare_dataset(ds, root)
            for cfg in prepares.values():
                _prepare_job(cfg)
            for url in urls:
                stale = open_results(url).mark_stale_runs()
                if stale:
                    log.warning("marked %d runs failed that a killed process left running: %s",
                                len(stale), stale)
        except UserError as e:
            fail(e)
        log.info("checked %d jobs; datasets ready: %s", len(batch),
                 ", ".join(sorted({k[0] for k in datasets})))


def _has_prepare(cfg) -> bool:
    from runners import RUNNERS

    return getattr(RUNNERS[cfg.task.name], "prepare", None) is not None


def _prepare_job(cfg) -> None:
    """The task's `prepare` with the job's data and device, as `bench.run` calls it; the job's own
    call then finds the result cached."""
    from bench.runtime import pick_device
    from bench.train import data_from_config
    from runners import RUNNERS

    RUNNERS[cfg.task.name].prepare(cfg, data_from_config(cfg), pick_device(cfg.device))


def _prepare_dataset(ds, root) -> None:
    from bench.data import load_dataset

    load_dataset(ds.name, root, download=ds.download, image_size=ds.image_size,
                 **ds.get("options", {}))
