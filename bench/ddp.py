"""Data-parallel training pieces on torch.distributed, with plain arguments (no config).

A data-parallel run is `world` processes (replicas), each holding the whole model and training
on its own share of every global batch; DistributedDataParallel averages the gradients, so every
replica takes the same optimizer step. What happens to batch-statistics layers is the point of
the exercise: `bn` normalizes over each replica's share (per-replica statistics), `sync_bn`
(`bench.norm_zoo.sync_bn`) over the global batch.

- `Replica`: this process's rank and the world size; `rendezvous` joins the process group (gloo on
  the CPU, NCCL on CUDA) through a TCP store on 127.0.0.1:port that rank 0 opens.
- `share`: rank r's part of a global batch: the r-th of `world` equal slices, so the replicas
  together see exactly the batch one process would see, and disjoint shares of every epoch.
- `reconcile_buffers`: before evaluation, every replica's floating-point buffers (BN's running
  mean and variance) become their mean over the replicas ("average"), or stay rank 0's
  ("broadcast": DistributedDataParallel's own `broadcast_buffers=True`, which copies rank 0's
  buffers to the others before every forward).
- `COMM`: wall time with a collective of the training step in flight (the gradient all-reduce of
  DDP's buckets, sync_bn's statistics), summed per epoch as `train/comm_s`.
"""

import datetime
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

HOST = "127.0.0.1"  # replicas started by this suite run on one machine (`runners.replicas`)
BUFFER_MODES = ("average", "broadcast")


@dataclass(frozen=True)
class Replica:
    rank: int
    world: int

    @property
    def leader(self) -> bool:
        """Rank 0: the replica that evaluates, logs and writes the database."""
        return self.rank == 0


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a TCP server could listen on host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port the OS reports free (bound and released at once: another program could take it
    before the store does, which `rendezvous` then reports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rendezvous(replica: Replica, port: int, device: torch.device, timeout_s: float,
               host: str = HOST) -> None:
    """Join the default process group: rank 0 listens on host:port, the others connect. A
    collective that waits longer than `timeout_s` raises (a replica hangs or died)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives and broadcast_object_list use it
    store = dist.TCPStore(host, port, replica.world, is_master=replica.leader, timeout=timeout,
                          wait_for_workers=False)
    dist.init_process_group(backend_for(device), store=store, rank=replica.rank,
                            world_size=replica.world, timeout=timeout)


def rendezvous_env(replica: Replica, device: torch.device, timeout_s: float) -> None:
    """Join the default process group where an outside launcher started the replicas and set
    MASTER_ADDR and MASTER_PORT (torchrun; submitit's tasks, `runners.replicas.launched`)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method="env://", rank=replica.rank,
                            world_size=replica.world, timeout=timeout)


def decide(replica: Replica, word: str | None = None) -> str:
    """Rank 0's word to the others before training ('train' or 'skip'); every rank returns it."""
    box = [word]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share(x: torch.Tensor, replica: Replica) -> torch.Tensor:
    """Rank r's slice of a global batch x (its length divisible by the world size)."""
    b = len(x) // replica.world
    return x[replica.rank * b:(replica.rank + 1) * b]


@torch.no_grad()
def reconcile_buffers(module: torch.nn.Module, mode: str, world: int) -> None:
    """Make every replica's floating-point buffers equal before evaluation: their mean over the
    replicas ('average'), or nothing to do ('broadcast': DDP already copied rank 0's at the last
    forward, and only rank 0 evaluates). Integer buffers (BN's batch counter) agree anyway.

    Averaging BN's running variances leaves out the spread of the replicas' running means
    (Var of a union = mean of the variances + variance of the means): at 2 replicas on
    Fashion-MNIST that part is a per-replica estimate's noise, O(1/b) for b samples per replica.
    """
    if mode == "broadcast" or world == 1:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in bufs])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for b in bufs:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


class CommTimer:
    """The wall time during which at least one collective is in flight (the union of their
    intervals, so overlapping buckets are not counted twice). Collectives overlap with the
    backward pass's compute, so this bounds from above what communication adds to a step; the
    difference of step times (`train/time_s`) against `ddp.replicas=1` is what it costs.
    On CUDA the intervals end when the work is enqueued-and-done as the future reports it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open, self._since, self.seconds = 0, 0.0, 0.0

    def start(self) -> None:
        with self._lock:
            if self._open == 0:
                self._since = time.perf_counter()
            self._open += 1

    def stop(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0:
                self.seconds += time.perf_counter() - self._since

    def take(self) -> float:
        """Seconds since the last take, then zero."""
        with self._lock:
            s, self.seconds = self.seconds, 0.0
        return s


COMM = CommTimer()


def timed_allreduce_hook(timer: CommTimer = COMM):
    """A DDP communication hook doing what DDP's default does (each gradient bucket divided by
    the world size and all-reduced, asynchronously), timed by `timer`."""

    def hook(process_group, bucket):
        group = process_group if process_group is not None else dist.group.WORLD
        buf = bucket.buffer()
        buf.div_(dist.get_world_size(group))
        timer.start()
        fut = dist.all_reduce(buf, group=group, async_op=True).get_future()

        def done(f):
            timer.stop()
            return f.value()[0]

        return fut.then(done)

    return hook


class AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the replicas: forward all-reduces x, backward all-reduces the
    gradient (d/dx_r of sum_k L_k(sum_j x_j) is the sum over k of the gradients), timed by COMM.
    What torch.distributed.nn.functional.all_reduce does, which torch 2.14 marks deprecated."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        COMM.start()
        try:
            dist.all_reduce(y, group=group)
        finally:
            COMM.stop()
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone()
        COMM.start()
        try:
            dist.all_reduce(g, group=ctx.group)
        finally:
            COMM.stop()
        return g, None


# --- The training loop's steps (`runners.single_model.train`) ----------------------------------

def share_state(replica: Replica, first: int, opt, sched, gen: torch.Generator) -> int:
    """Rank 0's first epoch, optimizer, lr-schedule and data-generator state (a resumed run's,
    from its checkpoint) given to every replica, so all continue as one; returns the first epoch.
    The weights and buffers are DistributedDataParallel's to copy (`wrap`)."""
    state = [(first, opt.state_dict(), None if sched is None else sched.state_dict(),
              gen.get_state())] if replica.leader else [None]
    dist.broadcast_object_list(state, src=0)
    first, opt_state, sched_state, gen_state = state[0]
    if not replica.leader:
        opt.load_state_dict(opt_state)
        if sched is not None:
            sched.load_state_dict(sched_state)
        gen.set_state(gen_state)
    return first


def wrap(model: torch.nn.Module, buffers: str, device: torch.device):
    """`model` in DistributedDataParallel (which copies rank 0's weights and buffers to every
    replica), its gradient all-reduce timed by COMM. buffers='broadcast' keeps DDP's default of
    copying rank 0's buffers before every forward; 'average' lets each replica keep its own
    running statistics until `reconcile_buffers`."""
    from torch.nn.parallel import DistributedDataParallel

    # forward_sync_buffers is torch 2.14's name for broadcast_buffers (deprecated there); the
    # weights and buffers are copied from rank 0 at construction either way.
    net = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=buffers == "broadcast")
    net.register_comm_hook(None, timed_allreduce_hook())
    return net


def add_up(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the replicas (the epoch's train sums)."""
    t = t.clone()
    dist.all_reduce(t)
    return t


def carry_on(device: torch.device) -> bool:
    """For ranks other than 0, after an epoch: wait for rank 0's word (`leading`)."""
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


@contextmanager
def leading(device: torch.device):
    """Rank 0's epoch end (its evaluation done): the block runs (logging the epoch, which may
    raise: diverged, a database error, an interrupt), then the others hear 'go on', or 'stop'
    and the exception goes on."""
    flag = torch.ones(1, dtype=torch.int32, device=device)
    try:
        yield
    except BaseException:
        flag.zero_()
        try:
            dist.broadcast(flag, src=0)
        except Exception:  # noqa: S110 - a replica is gone: the exception that came is the news
            pass
        raise
    dist.broadcast(flag, src=0)
