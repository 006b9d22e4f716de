"""Copying one shard's runs into a target database, inside the target's transaction
(`python -m db merge`, db/merge.py, runs it once per shard).

A run's identity across databases is `runs.uid`. A run without one (written before schema version
2, in a file brought up to date since) is identified by (host, pid, started_at, config_hash): one
process starts its runs one after another, and started_at has microseconds. Ids are the target's
own: a copied run gets a new id, and its metrics and artifacts follow it.

- A run the target lacks is copied, with its metrics and artifacts.
- A run the target has gets the metric rows it lacks, and takes the shard's columns and artifact
  paths unless the shard's copy is behind (`_progress`), so a stale copy merged after a newer one
  changes nothing. A copy of a later attempt (a resumed run: `db.claims`, whose metrics after its
  checkpoint `ResultsDB.rewind` removed) replaces the run's metrics and artifacts; one of an
  earlier attempt changes nothing.
- A metric the target has with another value is an error (`UserError`): metrics are written
  once, so these are two different runs with one identity.
So copying a shard again adds and changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, insert, inspect, select, update

from bench.errors import UserError
from db.schema import Artifact, Metric, Run

RUNS, METRICS, ARTIFACTS = Run.__table__, Metric.__table__, Artifact.__table__
FALLBACK_KEY = ("host", "pid", "started_at", "config_hash")  # identity of a run without uid
EARLIEST = datetime.min.replace(tzinfo=UTC)


def _progress(run) -> tuple:
    """How far a copy of a run has got: its attempts (a requeue continues in the same row), then
    its last heartbeat (every epoch), then whether it ended (`finish` and `mark_stale_runs` leave
    the heartbeat as it was)."""
    return (run.get("attempts") or 1, run.get("heartbeat_at") or EARLIEST,
            run.get("ended_at") is not None)


def _label(run) -> str:
    return run.get("uid") or " ".join(f"{k}={run[k]}" for k in FALLBACK_KEY)


def _find(dst, run):
    """The target's copy of `run` (a mapping of runs columns), or None."""
    if run.get("uid"):
        where = [RUNS.c.uid == run["uid"]]
    else:
        where = [RUNS.c.uid.is_(None), *(RUNS.c[k] == run[k] for k in FALLBACK_KEY)]
    found = dst.execute(select(RUNS).where(*where).order_by(RUNS.c.id).limit(1)).mappings().first()
    return None if found is None else dict(found)


def _rows(conn, run_id: int) -> tuple[dict, dict]:
    """({(epoch, split, name): value}, {kind: path}) of run `run_id`."""
    m, a = METRICS.c, ARTIFACTS.c
    metrics = {(e, s, n): v for e, s, n, v in conn.execute(
        select(m.epoch, m.split, m.name, m.value).where(m.run_id == run_id))}
    return metrics, dict(conn.execute(select(a.kind, a.path).where(a.run_id == run_id)).all())


def _update(dst, run: dict, have: dict, metrics: dict, artifacts: dict) -> tuple[bool, list]:
    """Bring the target's copy `have` of `run` up to date; (changed, metric rows to insert)."""
    run_id, attempt, have_attempt = have["id"], run.get("attempts") or 1, have.get("attempts") or 1
    if attempt < have_attempt:
        return False, []  # an earlier attempt's copy: the target has the restarted run
    ahead = _progress(run) >= _progress(have)
    diff = {k: v for k, v in run.items() if have[k] != v} if ahead else {}
    if diff:
        dst.execute(update(RUNS).where(RUNS.c.id == run_id).values(diff))
    if attempt > have_attempt:  # a later attempt: `ResultsDB.rewind` may have removed rows
        dst.execute(delete(METRICS).where(METRICS.c.run_id == run_id))
        dst.execute(delete(ARTIFACTS).where(ARTIFACTS.c.run_id == run_id))
    have_metrics, have_artifacts = _rows(dst, run_id) if attempt == have_attempt else ({}, {})
    for key, value in metrics.items():
        if key in have_metrics and have_metrics[key] != value:
            raise UserError(f"run {_label(run)} has {key[1]}/{key[2]} = {value} at epoch {key[0]} "
                            f"here but {have_metrics[key]} in the target (metrics are written once: "
                            "two runs with one identity?)")
    changed = bool(diff) or attempt > have_attempt
    for kind, path in artifacts.items():
        if kind not in have_artifacts:
            dst.execute(insert(ARTIFACTS).values(run_id=run_id, kind=kind, path=path))
            changed = True
        elif have_artifacts[kind] != path and ahead:
            dst.execute(update(ARTIFACTS).where(ARTIFACTS.c.run_id == run_id,
                                                ARTIFACTS.c.kind == kind).values(path=path))
            changed = True
    return changed, [k for k in metrics if k not in have_metrics]


def merge_shard(src, dst) -> tuple[int, int, int]:
    """Copy the runs of `src` (a connection to a shard) into `dst` (a connection to the target,
    in a transaction): (runs added, runs updated, metric rows added)."""
    present = {c["name"] for c in inspect(src).get_columns("runs")}
    columns = [c for c in RUNS.columns if c.name != "id" and c.name in present]
    added = updated = metric_rows = 0
    for shard_run in src.execute(select(RUNS.c.id, *columns).order_by(RUNS.c.id)).mappings().all():
        # Times read back aware and in UTC from either backend (db.schema.UtcDateTime), so a copy
        # from one to the other keeps the instant.
        run = {c.name: shard_run[c.name] for c in columns}
        metrics, artifacts = _rows(src, shard_run["id"])
        have = _find(dst, run)
        if have is None:
            run_id = dst.execute(insert(RUNS).values(run)).inserted_primary_key[0]
            if artifacts:
                dst.execute(insert(ARTIFACTS), [dict(run_id=run_id, kind=k, path=p)
                                                for k, p in artifacts.items()])
            new = list(metrics)
            added += 1
        else:
            run_id = have["id"]
            changed, new = _update(dst, run, have, metrics, artifacts)
            updated += int(changed or bool(new))
        if new:
            dst.execute(insert(METRICS), [dict(run_id=run_id, epoch=e, split=s, name=n,
                                               value=metrics[e, s, n]) for e, s, n in new])
        metric_rows += len(new)
    return added, updated, metric_rows
