"""Hydra's basic sweeper, plus a check of every job before the first one starts.

It lives in `hydra_plugins` because Hydra only instantiates sweepers from that namespace. What it
adds to `BasicSweeper`, in the step where Hydra already composes every job's config:
- `bench.validate.check_config` on each job, so `bs=2,0` fails at once with one line instead of
  after the first job's hours of training;
- each distinct dataset is loaded once here, so its download and uint8 cache are made by one
  process and the parallel jobs only read the cache;
- the results database is opened once (schema created, one clear error for a bad URL), and runs
  that a killed process left 'running' on this host are marked failed.
"""

import logging
from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger("bench")


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from bench.errors import UserError
        from bench.run import fail, open_results
        from bench.validate import check_config

        # Composing each job is what Hydra's own check does; a composition error propagates from
        # here exactly as it would from there.
        loader = self.hydra_context.config_loader
        datasets, urls = {}, set()
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
            for (_, _, _, root, _), ds in datasets.items():
                _prepare_dataset(ds, root)
            for url in urls:
                stale = open_results(url).mark_stale_runs()
                if stale:
                    log.warning("marked %d runs failed that a killed process left running: %s",
                                len(stale), stale)
        except UserError as e:
            fail(e)
        log.info("checked %d jobs; datasets ready: %s", len(batch),
                 ", ".join(sorted({k[0] for k in datasets})))


def _prepare_dataset(ds, root) -> None:
    from bench.data import load_dataset

    load_dataset(ds.name, root, download=ds.download, image_size=ds.image_size,
                 **ds.get("options", {}))
