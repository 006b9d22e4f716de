"""The autoencoder post's distance ratio between two norms: sqrt(mse_a) / sqrt(mse_b).

The post treats the square root of the final test MSE as a distance from the target and reports
sqrt(0.007543) / sqrt(0.005948) = 1.126 for BN against no norm: reconstructions 12.6% further
away with BN. Here mse is the mean, over the completed runs of a norm that match the filters,
of the test MSE at each run's last logged epoch (several seeds average their MSEs before the
square root). The runs compared must differ only in norm and seed: filters that leave runs of
different datasets, models, batch sizes, learning rates or epochs are an error naming the column,
so a ratio never mixes two experiments. Plain SQL on the `runs` table and the `run_final` view's
SELECT, read through `db.engine.open_readonly`: it creates and changes nothing.

    >>> distance_ratio("sqlite:///results/bench.db", "bn", "none", dataset="cifar10", bs=128)
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from analysis.load import runs_columns
from analysis.stats import sqrt_mse_ratio
from db.engine import open_readonly
from db.views import FINAL_SELECT

# Columns a comparison must hold fixed (besides norm and seed), and the filters accepted.
FIXED = ("task", "dataset", "model", "bs", "lr", "epochs")

# The final value of each run is run_final's (db/views.py): the metric at the last epoch it was
# logged. Its SELECT rather than the view, which a reader does not create on a file without it.
_QUERY = """SELECT r.id, r.{columns}, f.value
FROM (""" + FINAL_SELECT + """) AS f JOIN runs AS r ON r.id = f.run_id
WHERE r.status = 'completed' AND r.norm = :norm AND f.split = :split AND f.name = :metric{filters}"""


def final_values(engine: Engine, norm: str, *, split: str = "test", metric: str = "mse",
                 **filters) -> list[dict]:
    """{'id', *FIXED, 'value'} of each completed run of `norm` matching `filters` (column = value)."""
    unknown = sorted(set(filters) - set(FIXED) - {"seed"})
    if unknown:
        raise ValueError(f"unknown filter {unknown[0]!r} (allowed: {', '.join(FIXED)}, seed)")
    where = "".join(f" AND r.{col} = :f_{col}" for col, v in filters.items() if v is not None)
    sql = _QUERY.format(columns=", r.".join(FIXED), filters=where)
    params = {"norm": norm, "split": split, "metric": metric,
              **{f"f_{c}": v for c, v in filters.items() if v is not None}}
    with engine.connect() as conn:
        if not runs_columns(conn):  # a file no writer has opened: no runs
            return []
        return [dict(row._mapping) for row in conn.execute(text(sql), params)]


def distance_ratio(db: str | Engine, norm_a: str, norm_b: str, *, task: str = "autoencode",
                   split: str = "test", metric: str = "mse", **filters) -> float:
    """sqrt(mean final `metric` of norm_a) / sqrt(that of norm_b), over completed runs.

    db: an SQLAlchemy URL (opened read-only; a `bench.errors.UserError` if there is no
    database there) or engine. filters: any of dataset, model, bs, lr, epochs, seed
    (None: any). Raises ValueError when a norm has no matching run, a value is NULL (NaN) or
    negative, or the matching runs differ in a column of `FIXED`.
    """
    engine = open_readonly(db) if isinstance(db, str) else db
    try:
        rows = {n: final_values(engine, n, split=split, metric=metric, task=task, **filters)
                for n in (norm_a, norm_b)}
    finally:
        if isinstance(db, str):
            engine.dispose()
    for n, found in rows.items():
        if not found:
            raise ValueError(f"no completed {task} run with norm {n!r} and a {split}/{metric} "
                             f"value matches {filters or 'the filters'}")
        if any(r["value"] is None or r["value"] < 0 for r in found):
            raise ValueError(f"a run of norm {n!r} has a NULL (NaN) or negative {split}/{metric}")
    every = rows[norm_a] + rows[norm_b]
    for col in FIXED:
        values = sorted({r[col] for r in every}, key=str)
        if len(values) > 1:
            raise ValueError(f"the matching runs differ in {col} ({', '.join(map(str, values))}): "
                             f"pass {col}=... to compare one experiment")
    mse = {n: sum(r["value"] for r in found) / len(found) for n, found in rows.items()}
    if mse[norm_b] == 0:
        raise ValueError(f"norm {norm_b!r} has {split}/{metric} 0: the ratio is undefined")
    return float(sqrt_mse_ratio(mse[norm_a], mse[norm_b]))
