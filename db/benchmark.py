"""`python -m db.benchmark`: metric rows written per second by parallel writers, SQLite vs
PostgreSQL, measured side by side in one run.

Each of --writers processes opens its own `ResultsDB`, as a sweep's jobs do, starts a run and
writes --epochs x --metrics values with `log_epoch`: one short transaction per epoch, as a real run
does. The clock runs from the moment every writer is ready (a barrier: starting the processes,
opening the database and creating its schema are not timed) to the last writer's last commit.
Each repeat writes into a new database: an SQLite file (WAL, `db.engine`'s settings) and a
PostgreSQL database the script creates and drops; the two alternate, --repeats times each.

    python -m db.benchmark [--writers 8] [--epochs 200] [--metrics 20] [--repeats 3]
                           [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--dir DIR]

--pg is a database to connect to for CREATE DATABASE (`--pg ''`: SQLite only); --dir keeps the
SQLite files there (default: a temporary directory, removed).
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.cli import OneLineParser, whole_number
from db.engine import open_readonly
from db.store import ResultsDB

WAIT_S = 300  # a writer that is not ready or done by then has failed


def _writer(url: str, seed: int, epochs: int, metrics: int, ready, done) -> None:
    try:
        with ResultsDB(url) as db:
            run_id = db.start_run(task="classify", dataset="synthetic", model="convnet", norm="bn",
                                  bs=128, lr=1e-3, seed=seed, epochs=epochs, config={},
                                  config_hash=f"{seed:064x}")
            names = [("test", f"metric_{j}") for j in range(metrics)]
            ready.wait(WAIT_S)
            for epoch in range(1, epochs + 1):
                db.log_epoch(run_id, epoch, {key: epoch + j / 100 for j, key in enumerate(names)})
        done.put(None)
    except BaseException as e:  # reported by the parent, which would otherwise wait on the barrier
        ready.abort()
        done.put(f"{type(e).__name__}: {e}")


def write_rate(url: str, writers: int, epochs: int, metrics: int) -> tuple[float, int]:
    """(seconds, metric rows counted in the database afterwards) for `writers` processes writing
    into `url` at once."""
    ctx = multiprocessing.get_context("spawn")  # a fresh process per writer, as a sweep's jobs
    ready, done = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, i, epochs, metrics, ready, done))
             for i in range(writers)]
    for p in procs:
        p.start()
    answers, seconds = [], None
    try:
        ready.wait(WAIT_S)
        t0 = time.perf_counter()
        answers = [done.get(timeout=WAIT_S) for _ in procs]
        seconds = time.perf_counter() - t0
    except (threading.BrokenBarrierError, queue.Empty):
        pass  # a writer failed (it broke the barrier) or hangs: what it said is in `done`
    finally:
        for p in procs:
            p.join(WAIT_S)
    while seconds is None and len(answers) < len(procs):
        try:
            answers.append(done.get(timeout=1))
        except queue.Empty:
            break
    errors = [a for a in answers if a is not None]
    if errors or seconds is None:
        raise SystemExit(f"error: a writer failed: {errors[0] if errors else f'no answer in {WAIT_S} s'}")
    engine = open_readonly(url)
    try:
        with engine.connect() as conn:
            counted = conn.scalar(text("SELECT COUNT(*) FROM metrics"))
    finally:
        engine.dispose()
    return seconds, counted


class PostgresDatabases:
    """New databases on the server of `admin_url`, each dropped by `drop_all`."""

    def __init__(self, admin_url: str):
        self.admin = create_engine(make_url(admin_url).set(drivername="postgresql+psycopg"),
                                   isolation_level="AUTOCOMMIT")
        self.made: list[str] = []
        with self.admin.connect() as conn:  # fails here, before any work, if the server is away
            conn.execute(text("SELECT 1"))

    def new(self) -> str:
        name = f"normbench_bench_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        self.made.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.made:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        self.admin.dispose()


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:,.0f} rows/s (n=1)"
    return f"{statistics.mean(values):,.0f} ± {statistics.stdev(values):,.0f} rows/s (n={len(values)})"


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    p = OneLineParser(prog="python -m db.benchmark", description=__doc__.split("\n")[0])
    count = whole_number("an integer >= 1", 1)
    p.add_argument("--writers", type=count, default=8, help="parallel writer processes (8)")
    p.add_argument("--epochs", type=count, default=200, help="log_epoch calls per writer (200)")
    p.add_argument("--metrics", type=count, default=20, help="metric rows per call (20)")
    p.add_argument("--repeats", type=count, default=3, help="measurements per backend (3)")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="a PostgreSQL database to create the benchmark's databases from; '' to skip")
    p.add_argument("--dir", type=Path, help="keep the SQLite files here (default: removed)")
    args = p.parse_args(argv)
    rows = args.writers * args.epochs * args.metrics
    print(f"{args.writers} writers x {args.epochs} epochs x {args.metrics} metrics = {rows} metric "
          f"rows per repeat, one transaction per epoch", file=out)
    pg = None
    if args.pg:
        try:
            pg = PostgresDatabases(args.pg)
        except Exception as e:  # any failure to connect: measure SQLite alone
            print(f"postgresql: not measured ({type(e).__name__}: {str(e).splitlines()[0]})", file=out)
    rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(1, args.repeats + 1):
                urls = {"sqlite": f"sqlite:///{folder / f'writers_{i}.db'}"}
                if pg is not None:
                    urls["postgresql"] = pg.new()
                for kind, url in urls.items():
                    seconds, counted = write_rate(url, args.writers, args.epochs, args.metrics)
                    rates[kind].append(rows / seconds)
                    print(f"{kind:<10} repeat {i}: {rows} rows in {seconds:.2f} s = "
                          f"{rows / seconds:,.0f} rows/s (counted in the database: {counted})",
                          file=out)
            for kind, values in rates.items():
                if values:
                    print(f"{kind:<10} {mean_std(values)}", file=out)
            if rates["postgresql"]:
                # Per repeat: the two ran back to back, so load from other processes, which moves
                # both, cancels more in the ratio than in either rate.
                ratios = [p / s for p, s in zip(rates["postgresql"], rates["sqlite"], strict=True)]
                spread = f" ± {statistics.stdev(ratios):.2f}" if len(ratios) > 1 else ""
                print(f"ratio postgresql/sqlite: {statistics.mean(ratios):.2f}{spread} "
                      f"(n={len(ratios)} repeats)", file=out)
        finally:
            if pg is not None:
                pg.drop_all()
                print(f"postgresql: dropped {', '.join(pg.made)}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
