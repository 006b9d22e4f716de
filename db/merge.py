"""`python -m db merge SHARD... --into URL`: copy per-job databases (shards) into one.

Why shards: SQLite's locks need a local file system ("WAL does not work over a network
filesystem", https://www.sqlite.org/wal.html), and not every cluster has a database server. So
each job can write its own file on node-local disk (`db.url='sqlite:////tmp/shards/job_${hydra:
job.num}.db'`), copied back when it ends and merged here.

Each shard is merged in one transaction of the target (`db.copy_runs.merge_shard`, which says how a
run is identified and updated): a failure leaves the target as it was, and the shards before it
stay merged. Merging a shard again adds and changes nothing.

Refused before anything is written, one line each: a shard that is missing or not a normbench
database, a shard of another schema version than this code's (merge does not mix them; the
message says how to upgrade), the target among the shards, a target that is another kind of
database or of a newer version. Shards are opened with `open_readonly` (one on a read-only file
system merges, and none is ever changed), the target with `open_engine` (schema created, brought
to the current version).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from bench.errors import UserError, one_line
from db.copy_runs import merge_shard
from db.engine import open_engine, open_readonly, parse_url, schema_version
from db.schema import SCHEMA_VERSION


def shard_url(shard: str) -> str:
    """A shard as given: a database URL, or the path of an SQLite file (what a shell glob gives)."""
    return shard if "://" in shard else f"sqlite:///{shard}"


def _place(url: str) -> str:
    """Where a URL's data lives, the same for two spellings of one file or database."""
    parsed = parse_url(url)
    kind = parsed.get_backend_name()
    if kind == "sqlite":
        return "sqlite:" + os.path.realpath(parsed.database or "")
    return parsed.set(drivername=kind, password=None, port=parsed.port or 5432).render_as_string()


def _open_shard(shard: str):
    url = shard_url(shard)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise UserError(f"shard {shard!r}: no such file (allowed: an SQLite file or a database URL)")
    try:
        engine = open_readonly(url)
    except UserError as e:  # 'file is not a database', a server that does not answer, ...
        raise UserError(f"shard {shard!r}: {e}") from None
    with engine.connect() as conn:
        version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return engine
    engine.dispose()
    if version is None:
        raise UserError(f"shard {shard!r} is not a normbench database (it has no runs table)")
    if version > SCHEMA_VERSION:
        raise UserError(f"shard {shard!r} has schema version {version}, newer than this code's "
                        f"{SCHEMA_VERSION}: update normbench to merge it")
    raise UserError(
        f"shard {shard!r} has schema version {version} and this code writes {SCHEMA_VERSION} (merge "
        f"does not mix versions): upgrade the shard first, which only adds nullable columns and "
        f"tables (db/migrations), e.g. python -c \"from db.engine import open_engine; "
        f"open_engine('{shard_url(shard)}')\"")


def _check_target(into: str) -> None:
    """Refuse a target that is not ours to write: another kind of database, or a newer version."""
    parsed = parse_url(into)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return  # a new file, which open_engine creates (or refuses with its own message)
    engine = open_readonly(into)
    try:
        with engine.connect() as conn:
            version, tables = schema_version(conn), inspect(conn).get_table_names()
    finally:
        engine.dispose()
    if version is None and tables:
        raise UserError(f"--into {into!r} is not a normbench database (it has tables but no runs "
                        "table): merge into a normbench database or a new file")
    if version is not None and version > SCHEMA_VERSION:
        raise UserError(f"--into {into!r} has schema version {version}, newer than this code's "
                        f"{SCHEMA_VERSION}: update normbench to merge into it")


def counts_line(what: str, counts) -> str:
    return f"{what}: {counts[0]} runs added, {counts[1]} updated, {counts[2]} metric rows added"


def merge(shards: list[str], into: str, out=None) -> tuple[int, int, int]:
    """Merge each shard (a path or URL) into the database `into`, printing one line per shard
    and a total; returns the total (runs added, runs updated, metric rows added)."""
    out = out or sys.stdout
    for shard in shards:
        if _place(shard_url(shard)) == _place(into):
            raise UserError(f"--into {into!r} is the shard {shard!r} itself (allowed: a database "
                            "that is none of the shards)")
    engines = []
    try:
        for shard in shards:  # every shard checked before the target is opened and written
            engines.append(_open_shard(shard))
        _check_target(into)
        target = open_engine(into)
        try:
            total = (0, 0, 0)
            for i, (shard, engine) in enumerate(zip(shards, engines, strict=True)):
                with engine.connect() as src, target.begin() as dst:
                    try:
                        counts = merge_shard(src, dst)
                    except (UserError, DBAPIError) as e:  # rolled back by target.begin()
                        before = ", the shards before it were" if i else ""
                        raise UserError(f"shard {shard!r}: {one_line(e, with_type=False)}; nothing "
                                        f"of this shard was merged{before}") from None
                print(counts_line(f"shard {shard}", counts), file=out)
                total = tuple(a + b for a, b in zip(total, counts, strict=True))
            shown = parse_url(into).render_as_string(hide_password=True)
            print(counts_line(f"total of {len(shards)} shards into {shown}", total), file=out)
            return total
        finally:
            target.dispose()
    finally:
        for engine in engines:
            engine.dispose()
