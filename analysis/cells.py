"""Which runs belong together: a cell is one setting of everything that was swept, seeds aside.

The swept settings are read off the data, not a list: every runs column and every key of the
flattened config JSON (`optim.name`, `norm.groups`, `model.width`, ...) that takes more than one
value among the selected runs, minus seed and bookkeeping. A key that varies only because the
identity columns vary (GroupNorm's `norm.groups` exists only where norm == 'gn'; a per-norm eps
default) adds no cell and is left out, so tables do not grow a column of constants.
"""

from __future__ import annotations

import json
import numbers

import pandas as pd

from bench.config_hash import BOOKKEEPING_KEYS as HASH_IGNORED
from bench.config_hash import LATER_SETTINGS, as_before

# Always part of a cell, even when constant: the report's sections are (task, dataset, model),
# its blocks are norms, and the Replacing BatchNorm post's tables always show bs and lr.
IDENTITY = ("task", "dataset", "model", "norm", "bs", "lr")
SECTION = ("task", "dataset", "model")
# Config keys that repeat a runs column (the column is used instead).
ALIASES = {"task.name": "task", "dataset.name": "dataset", "model.name": "model",
           "norm.name": "norm", "bs": "bs", "lr": "lr", "seed": "seed", "epochs": "epochs"}
# How a run was executed or recorded, not what was trained: the keys the config hash ignores
# (bench/config_hash.py, the one list) plus the seed (part of the hash, but it tells runs of one
# cell apart instead of making a cell), Hydra's own node, and whether a dataset may be downloaded.
BOOKKEEPING_ROOTS = ("seed", "hydra", *HASH_IGNORED)
BOOKKEEPING_NESTED = ("dataset.download",)  # full keys below a root that is kept


def is_bookkeeping(key: str) -> bool:
    root = key.split(".")[0]
    leaf = key.split(".")[-1]
    return (root in BOOKKEEPING_ROOTS or key in BOOKKEEPING_NESTED or "output" in leaf
            or leaf.endswith("_dir") or leaf == "dir")


def flatten(config: dict, prefix: str = "") -> dict:
    """{'optim': {'name': 'adam'}} -> {'optim.name': 'adam'}; lists become JSON text (hashable)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def _tidy(column: pd.Series) -> pd.Series:
    """Numbers as float64 (sortable, 1e-3 == 0.001), anything else as text; missing stays NaN."""
    present = column.dropna()
    if len(present) and all(isinstance(v, numbers.Number) and not isinstance(v, bool) for v in present):
        return column.astype("float64")
    return column.map(lambda v: v if v is None or v != v else str(v)).astype("object")


def settings_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the identity columns, epochs, and every non-bookkeeping config key."""
    # As the hash sees each config: a later setting at its old value is left out (bench.config_hash)
    flat = pd.DataFrame([flatten(as_before(c)) for c in runs["config"]], index=runs.index)
    columns = {*IDENTITY, "epochs"}  # a config that repeats a column under its plain name
    flat = flat[[k for k in flat.columns if k not in ALIASES and k not in columns and not is_bookkeeping(k)]]
    # A later setting is a column once some run moved it (ddp.replicas=2, agc.clipping, a Fixup
    # model.residual); the other runs then show the old value. Its dependents (ddp.buffers,
    # agc.eps) are columns only where they varied among the runs that moved it.
    for key, before, dependents in LATER_SETTINGS:
        if key not in flat.columns:
            continue
        flat[key] = flat[key].fillna(before)
        moved = flat[key] != before
        for dep in dependents:
            if dep in flat.columns and flat.loc[moved, dep].nunique() < 2:
                flat = flat.drop(columns=dep)
    flat = flat.apply(_tidy) if len(flat.columns) else flat
    return pd.concat([runs[[*IDENTITY, "epochs"]], flat], axis=1)


def swept(table: pd.DataFrame) -> list[str]:
    """The cell keys: IDENTITY plus every other setting that varies independently of them."""
    keys = list(IDENTITY)
    for key in ["epochs", *sorted(k for k in table.columns if k not in IDENTITY and k != "epochs")]:
        if table[key].nunique(dropna=False) < 2:
            continue
        if table.groupby(keys, dropna=False)[key].nunique(dropna=False).max() < 2:
            continue  # determined by the keys already chosen: no new cell
        keys.append(key)
    return keys


def fixed(table: pd.DataFrame) -> dict:
    """Settings with one value across every selected run (shown in the report's header)."""
    return {k: table[k].iloc[0] for k in table.columns
            if k not in IDENTITY and table[k].nunique(dropna=False) == 1 and table[k].notna().all()}


def label(values: dict) -> str:
    """'lr=0.001, model.width=16' for a plot title or a file name stem."""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items()) or "all runs"


def fmt_value(v) -> str:
    """A setting as people write it: 128 not 128.0, 0.001 not 1e-03; missing as '–'."""
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:g}"
    return str(v)


def sort_cells(frame: pd.DataFrame, keys: list[str], norm_order: list[str]) -> pd.DataFrame:
    """Rows ordered by section, then `norm_order`, then the other keys (numbers numerically)."""
    rank = {n: i for i, n in enumerate(norm_order)}

    def key(col: pd.Series) -> pd.Series:
        return col.map(rank) if col.name == "norm" else col

    return frame.sort_values(list(keys), key=key, na_position="last", kind="stable")


def norm_order(norms, baseline: str) -> list[str]:
    """The baseline first, then the other norms by name."""
    norms = sorted(set(norms))
    return ([baseline] if baseline in norms else []) + [n for n in norms if n != baseline]


def select(frame: pd.DataFrame, where: dict) -> pd.DataFrame:
    """The rows of `frame` whose columns hold the values `where` names."""
    mask = pd.Series(True, index=frame.index)
    for k, v in where.items():
        mask &= frame[k] == v
    return frame[mask]
