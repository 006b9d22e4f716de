"""One job as `ddp.replicas` processes: data-parallel training of a single-model task.

The job's own process is rank 0: it has claimed the run's row, writes the heartbeat, evaluates,
logs every epoch and saves the checkpoint, exactly as a one-process job does (`runners.job`).
It starts ranks 1..N-1 with torch.multiprocessing (spawn: a fresh interpreter each, so no CUDA
or thread-pool state is inherited), which load the dataset from its cache, report 'ready' and join
the process group (`bench.ddp.rendezvous`: gloo on the CPU, NCCL on CUDA, one GPU per rank).
Then all train together (`runners.single_model.train`); the others never touch the database.

Replicas can also be started by an outside launcher, one process each, the same command in
every one: torchrun (`torchrun --nproc-per-node 2 -m bench.run ddp.replicas=2 ...`, which sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or submitit, where SLURM (or
submitit_local) starts `hydra.launcher.tasks_per_node` tasks of one job (`launched`). Then no
process spawns: rank 0 runs the job as above and tells the others whether to train
(`bench.ddp.decide`: a config already completed is skipped by all), and the others (`follow`)
train without a database.

A replica that dies ends the run within `ddp.timeout_s` (gloo notices a closed connection at
once; a hung replica is the collective's timeout): rank 0 raises `ReplicaFailed` with the dead
replica's own error, the job marks the run failed with it, and the remaining replicas are
stopped. Rank 0 dying (killed) closes its connections: the others fail and exit.
"""

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from bench import ddp
from bench.checks import fail
from bench.errors import UserError, one_line
from runners.interrupts import ReplicaFailed

READY_GRACE_S = 5  # after an error in rank 0: how long the others get to report theirs


def replica_device(device: torch.device, rank: int) -> torch.device:
    """Rank r's device: the CPU for all, or the r-th GPU after the job's own."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


def pick_port(setting) -> int:
    """`ddp.port`: a free one for 'auto'; a given one must be free (checked before the sweep by
    `runners.validate`, and again here, when the job starts)."""
    if setting == "auto":
        return ddp.free_port()
    if not ddp.port_is_free(setting):
        fail("ddp.port", setting, f"is already taken on {ddp.HOST}",
             "a free port, or auto for one the system picks")
    return setting


@dataclass(frozen=True)
class Launched:
    """This process as one replica that an outside launcher started."""
    rank: int
    world: int
    local_rank: int
    by: str  # 'torchrun' or 'submitit'


def launched() -> Launched | None:
    """The rank an outside launcher gave this process, when it started several: submitit with
    more than one task (its JobEnvironment; MASTER_ADDR and MASTER_PORT exported as
    submitit.helpers.TorchDistributedEnvironment does), or torchrun (WORLD_SIZE > 1)."""
    by = "torchrun"
    if os.environ.get("SUBMITIT_EXECUTOR"):
        from submitit import JobEnvironment

        if JobEnvironment().num_tasks > 1:
            from submitit.helpers import TorchDistributedEnvironment

            # overwrite: rank 0 asks twice (runners.job, then run_replicated); same values
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            by = "submitit"
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "RANK" not in os.environ:
        return None
    return Launched(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", "0")), by)


def check_launched(cfg: DictConfig, outside: Launched) -> None:
    if cfg.ddp.replicas != outside.world:
        raise UserError(f"ddp.replicas={cfg.ddp.replicas} does not match the {outside.world} "
                        f"processes {outside.by} started (allowed: ddp.replicas={outside.world})")


def follow(cfg: DictConfig, outside: Launched, threads: int) -> dict:
    """Ranks 1.. of a run whose replicas an outside launcher started: train with rank 0 if it
    says so; no database, no checkpoint (rank 0 gives its state)."""
    from bench.runtime import pick_device, seed_everything
    from runners import RUNNERS
    from runners.config import load_data
    from runners.single_model import train

    device = replica_device(pick_device(cfg.device), outside.local_rank)
    seed_everything(cfg.seed)
    data = load_data(cfg)
    replica = ddp.Replica(outside.rank, outside.world)
    ddp.rendezvous_env(replica, device, cfg.ddp.timeout_s)
    try:
        word = ddp.decide(replica)
        if word == "train":
            train(cfg, data, device, None, RUNNERS[cfg.task.name].OBJECTIVE, None, replica)
    finally:
        ddp.leave()
    return {"status": "replica", "run_id": None, "rank": outside.rank, "word": word,
            "threads": threads}


def dismiss(cfg: DictConfig, device: torch.device) -> None:
    """Rank 0 of launched replicas, skipping the config: the others need not train."""
    if (outside := launched()) is None or outside.rank != 0:
        return
    replica = ddp.Replica(0, outside.world)
    ddp.rendezvous_env(replica, device, cfg.ddp.timeout_s)
    try:
        ddp.decide(replica, "skip")
    finally:
        ddp.leave()


def run_replicated(cfg: DictConfig, data, device: torch.device, log_epoch, checkpoint) -> None:
    """Train cfg as cfg.ddp.replicas processes, this one rank 0 (see the module's docstring)."""
    from runners import RUNNERS
    from runners.single_model import train

    world = cfg.ddp.replicas
    if launched() is not None:  # rank 0 of replicas torchrun or submitit started
        replica = ddp.Replica(0, world)
        ddp.rendezvous_env(replica, device, cfg.ddp.timeout_s)
        try:
            ddp.decide(replica, "train")
            train(cfg, data, device, log_epoch, RUNNERS[cfg.task.name].OBJECTIVE, checkpoint,
                  replica)
        finally:
            ddp.leave()
        return
    port = pick_port(cfg.ddp.port)
    config = OmegaConf.to_container(cfg, resolve=True)  # no ${hydra:...} left for the others
    news = torch.multiprocessing.get_context("spawn").SimpleQueue()
    with _spawnable():
        procs = torch.multiprocessing.start_processes(
            _replica_main, args=(config, world, port, torch.get_num_threads(), str(device), news),
            nprocs=world - 1, join=False, start_method="spawn")
    reports: dict[int, str] = {}
    try:
        _wait_ready(procs, news, world - 1, cfg.ddp.timeout_s, reports)
        ddp.rendezvous(ddp.Replica(0, world), port, device, cfg.ddp.timeout_s)
        train(cfg, data, device, log_epoch, RUNNERS[cfg.task.name].OBJECTIVE, checkpoint,
              ddp.Replica(0, world))
    except ReplicaFailed:
        raise
    except RuntimeError as e:  # a collective's error (DistBackendError is one): who failed?
        if (failed := _failed_replica(procs, news, reports, READY_GRACE_S)) is not None:
            raise failed from e
        if "timed out" in str(e).lower():  # gloo's words for a collective past the timeout
            raise ReplicaFailed(f"a collective waited longer than ddp.timeout_s="
                                f"{cfg.ddp.timeout_s:g} s (a replica hung?): {one_line(e)}") from e
        raise
    finally:
        ddp.leave()
        _stop(procs)
    if (failed := _failed_replica(procs, news, reports, 0)) is not None:
        raise failed


@contextmanager
def _spawnable():
    """A spawned child sets the parent's default start method before it runs anything
    (multiprocessing.spawn.prepare); in a joblib (loky) worker that is 'loky', which a fresh
    interpreter does not know ("cannot find context for 'loky'", measured with Hydra's joblib
    launcher). The default is 'spawn' while the replicas start, then what it was."""
    import multiprocessing

    was = multiprocessing.get_start_method(allow_none=True)
    if was in (None, "spawn", "fork", "forkserver"):
        yield
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(was, force=True)


def _replica_main(i: int, config: dict, world: int, port: int, threads: int, device: str,
                  news) -> None:
    """Rank i+1 of a run: its own process (torch.multiprocessing)."""
    rank = i + 1
    try:
        from bench.runtime import seed_everything
        from runners import RUNNERS
        from runners.config import load_data
        from runners.single_model import train

        cfg = OmegaConf.create(config)
        torch.set_num_threads(threads)
        seed_everything(cfg.seed)
        dev = replica_device(torch.device(device), rank)
        data = load_data(cfg)
        news.put(("ready", rank, ""))
        replica = ddp.Replica(rank, world)
        ddp.rendezvous(replica, port, dev, cfg.ddp.timeout_s)
        train(cfg, data, dev, None, RUNNERS[cfg.task.name].OBJECTIVE, None, replica)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal: rank 0 reports it
        os._exit(1)
    except BaseException as e:
        news.put(("error", rank, one_line(e)))
        os._exit(1)
    finally:
        ddp.leave()


def _drain(news, reports: dict[int, str]) -> set[int]:
    ready = set()
    while not news.empty():
        kind, rank, text = news.get()
        if kind == "ready":
            ready.add(rank)
        else:
            reports.setdefault(rank, text)
    return ready


def _wait_ready(procs, news, n: int, timeout_s: float, reports: dict[int, str]) -> None:
    """Until the n other replicas have loaded their data; one that fails first ends the wait."""
    ready, deadline = set(), time.monotonic() + timeout_s
    while len(ready) < n:
        ready |= _drain(news, reports)
        if (failed := _failed_replica(procs, news, reports, 0)) is not None:
            raise failed
        if time.monotonic() > deadline:
            raise ReplicaFailed(f"replicas {sorted(set(range(1, n + 1)) - ready)} were not ready "
                                f"after ddp.timeout_s={timeout_s:g} s")
        time.sleep(0.02)


def _failed_replica(procs, news, reports: dict[int, str], grace_s: float) -> ReplicaFailed | None:
    """ReplicaFailed('replica 1 of 2 died: <its error>') for the first replica that exited with
    an error (waiting up to grace_s for one to), None when none did."""
    deadline = time.monotonic() + grace_s
    while True:
        _drain(news, reports)
        for i, p in enumerate(procs.processes):
            if p.exitcode not in (None, 0):
                rank = i + 1
                text, killed = reports.get(rank), p.exitcode < 0 and rank not in reports
                if text is None:
                    text = (f"killed by {signal.Signals(-p.exitcode).name}" if p.exitcode < 0
                            else f"exit code {p.exitcode} (its own error, if any, is on stderr above)")
                return ReplicaFailed(f"replica {rank} of {len(procs.processes) + 1} died: {text}",
                                     killed=killed)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _stop(procs, wait_s: float = 10) -> None:
    """The other replicas' end: they exit on their own after the last epoch or once rank 0's
    connections close; any still there after wait_s is killed."""
    deadline = time.monotonic() + wait_s
    for p in procs.processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs.processes:
        if p.is_alive():
            p.kill()
            p.join(5)
