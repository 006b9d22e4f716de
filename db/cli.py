"""`python -m db`: the results database from a terminal (runs, show, query, export).

Every command opens the database with `db.engine.open_readonly`: read-only at the connection
level, never creating or changing anything, so `python -m db query "DELETE FROM runs"` fails
inside the database, whatever the SQL says. The exception is `merge` (db/merge.py), which reads
its shards that way and writes only the database named by --into, and `mark-stale`
(db/mark_stale.py), which marks dead runs failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bench.errors import UserError, squash
from db.engine import open_readonly, reader_error
from db.mark_stale import add_parser as add_mark_stale
from db.mark_stale import mark_stale
from db.merge import merge
from db.views import FINAL_SELECT

DEFAULT_URL = "sqlite:///results/bench.db"  # the training command's db.url (conf/config.yaml)
RUN_LIST = ("id", "status", "task", "dataset", "model", "norm", "bs", "lr", "seed", "epochs_done",
            "epochs", "duration_s", "started_at", "error")


def _where(args) -> tuple[str, dict]:
    terms, params = ["1 = 1"], {}
    for column in ("status", "task", "dataset", "model", "norm"):
        values = [v for item in getattr(args, column, None) or [] for v in item.split(",") if v]
        if values:
            names = [f"{column}{i}" for i in range(len(values))]
            terms.append(f"r.{column} IN ({', '.join(':' + n for n in names)})")
            params.update(zip(names, values, strict=True))
    return " AND ".join(terms), params


def _fmt(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return squash(v)


def print_table(columns, rows, out) -> None:
    """Columns aligned to their widest value; long text cut at 60 characters."""
    cells = [[_fmt(v)[:60] for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    for row in [list(columns), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def cmd_runs(args, conn, out) -> None:
    where, params = _where(args)
    limit = f" LIMIT {int(args.limit)}" if args.limit > 0 else ""
    sql = f"SELECT {', '.join(RUN_LIST)} FROM runs AS r WHERE {where} ORDER BY id DESC{limit}"
    rows = conn.execute(text(sql), params).all()[::-1]
    total = conn.execute(text(f"SELECT COUNT(*) FROM runs AS r WHERE {where}"), params).scalar()
    print_table(RUN_LIST, rows, out)
    print(f"{len(rows)} of {total} matching runs" + (" (--limit 0 for all)" if len(rows) < total else ""),
          file=out)


def cmd_show(args, conn, out) -> None:
    run = conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": args.run_id}).mappings().first()
    if run is None:
        raise UserError(f"no run with id {args.run_id}")
    for key, value in run.items():
        if key not in ("config", "versions"):
            print(f"{key:<14}{_fmt(value)}", file=out)
    if run.get("versions"):  # NULL in rows written before the column existed
        print("versions", file=out)
        for package, version in json.loads(run["versions"]).items():
            print(f"  {package:<14}{version}", file=out)
    config = run["config"] if isinstance(run["config"], dict) else json.loads(run["config"])
    print("config\n  " + json.dumps(config, indent=2).replace("\n", "\n  "), file=out)
    metrics = conn.execute(text("SELECT epoch, split, name, value FROM metrics WHERE run_id = :id "
                                "ORDER BY epoch, split, name"), {"id": args.run_id}).all()
    names = sorted({(s, n) for _, s, n, _ in metrics}, key=lambda p: (p[0] != "test", p))
    table: dict[int, dict] = {}
    for epoch, split, name, value in metrics:
        table.setdefault(epoch, {})[(split, name)] = float("nan") if value is None else value
    print(f"\nmetrics ({len(metrics)} values; nan = NULL)", file=out)
    print_table(["epoch", *(f"{s}/{n}" for s, n in names)],
                [[e, *(row.get(p, "") for p in names)] for e, row in table.items()], out)


def cmd_query(args, conn, out) -> None:
    result = conn.exec_driver_sql(args.sql)
    if not result.returns_rows:
        print("(no rows)", file=out)
        return
    if args.csv:
        writer = csv.writer(out)
        writer.writerow(result.keys())
        writer.writerows(result)
    else:
        print_table(list(result.keys()), result.all(), out)


EXPORTS = {
    "runs": "SELECT r.* FROM runs AS r WHERE {where} ORDER BY r.id",
    "metrics": "SELECT m.* FROM metrics AS m JOIN runs AS r ON r.id = m.run_id WHERE {where} "
               "ORDER BY m.run_id, m.epoch, m.split, m.name",
    # The view's SELECT rather than the view: works on a database written before views existed.
    "final": "SELECT f.* FROM (" + FINAL_SELECT + ") AS f JOIN runs AS r ON r.id = f.run_id "
             "WHERE {where} ORDER BY f.run_id, f.split, f.name",
}


def cmd_export(args, conn, out) -> None:
    where, params = _where(args)
    result = conn.execution_options(stream_results=True).execute(
        text(EXPORTS[args.what].format(where=where)), params)
    target = open(args.out, "w", newline="", encoding="utf-8") if args.out else out  # noqa: SIM115
    try:
        writer = csv.writer(target)
        writer.writerow(result.keys())
        for row in result:
            writer.writerow(json.dumps(v) if isinstance(v, dict) else v for v in row)
    finally:
        if args.out:
            target.close()


class OneLineParser(argparse.ArgumentParser):
    """argparse with its mistakes on one line, as every other error of the suite: `error: ...`
    and exit status 2 (argparse's own status for bad usage), not the usage block, which `--help`
    still prints. Subcommands' parsers are made of the same class (add_subparsers' default)."""

    def error(self, message: str):
        named = "allowed:" in message or "choose from" in message  # the allowed values are named
        self.exit(2, f"error: {message}" + ("" if named else f" (try `{self.prog} --help`)") + "\n")


def whole_number(what: str, minimum: int):
    """An argparse `type`: an int >= `minimum`, else one line naming what is allowed."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed (allowed: {what})")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=DEFAULT_URL, help="database URL (default: %(default)s)")
    filters = argparse.ArgumentParser(add_help=False)
    for column in ("status", "task", "dataset", "model", "norm"):
        filters.add_argument(f"--{column}", action="append", metavar="NAME",
                             help=f"only runs with this {column} (repeat or comma-separate)")
    p = OneLineParser(prog="python -m db", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs = sub.add_parser("runs", parents=[common, filters], help="list runs, newest last")
    runs.add_argument("--limit", type=whole_number("a whole number >= 0; 0 for all", 0), default=50,
                      help="newest N runs; 0 for all (default: 50)")
    show = sub.add_parser("show", parents=[common], help="one run: its columns, config and metrics")
    show.add_argument("run_id", type=whole_number("a run id, a whole number >= 1", 1), metavar="RUN_ID")
    query = sub.add_parser("query", parents=[common], help="run one read-only SQL statement")
    query.add_argument("sql", metavar="SQL")
    query.add_argument("--csv", action="store_true", help="CSV instead of aligned columns")
    export = sub.add_parser("export", parents=[common, filters], help="CSV of runs, metrics or final metrics")
    export.add_argument("what", choices=sorted(EXPORTS), help="runs, metrics (every epoch) or final "
                        "(each metric's last epoch, as the run_final view)")
    export.add_argument("--out", "-o", metavar="FILE", help="write here instead of standard output")
    merge = sub.add_parser("merge", help="copy the runs of per-job databases (shards) into one; "
                           "writes only --into")
    merge.add_argument("shards", nargs="+", metavar="SHARD", help="an SQLite file or a database URL")
    merge.add_argument("--into", required=True, metavar="URL", help="the database to merge into "
                       "(created if missing), e.g. sqlite:///results/bench.db")
    add_mark_stale(sub, common, whole_number("a whole number of seconds >= 1", 1))
    return p


COMMANDS = {"runs": cmd_runs, "show": cmd_show, "query": cmd_query, "export": cmd_export}


def main(argv=None, out=None) -> int:
    args = parser().parse_args(argv)
    out = out or sys.stdout
    try:
        if args.command == "merge":  # writes only --into: db/merge.py
            merge(args.shards, args.into, out)
            return 0
        if args.command == "mark-stale":  # writes: db/mark_stale.py
            mark_stale(args.db, args.after, out)
            return 0
        engine = open_readonly(args.db)
        with engine.connect() as conn:
            COMMANDS[args.command](args, conn, out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DBAPIError as e:
        print(f"error: {reader_error(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # the reader went away (`| head`): db/__main__.py exits quietly
    except OSError as e:  # --out in a missing directory, ...
        print(f"error: {e.strerror or e}: {getattr(e, 'filename', '')}", file=sys.stderr)
        return 1
    return 0
