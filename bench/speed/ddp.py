"""What data parallelism and synchronized BN cost per training step.

For each per-replica batch b: ms per training step (Adam, cross-entropy, the classify task's
step) of the model with `bn` in one process at the global batch 2b (all threads), and at
`--replicas` replicas under DistributedDataParallel (gloo on the CPU, NCCL on CUDA when there are
enough GPUs; one thread each on the CPU) with `bn` (per-replica statistics) and with `sync_bn`
(statistics over the global batch), plus the time a collective was in flight per step
(`bench.ddp.COMM`). Each figure is the mean ± std over `--repeats` timed blocks of `--steps`
steps after warm-up; the ratios are against the one-process `bn` step measured in the same run.

    python -m bench.speed.ddp [--per 2 4 8 32] [--replicas 2] [--model convnet] [--device cpu]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench import ddp
from bench.launchers import usable_cores
from bench.models import build_model
from bench.norms import make_norm

SHAPE = (1, 28, 10)  # Fashion-MNIST: channels, size, classes


def _steps(model_name: str, norm: str, b: int, device, replica=None, buffers="average"):
    """A training step on one fixed random batch of b images (this replica's share)."""
    c, size, classes = SHAPE
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=c, num_classes=classes, image_size=size,
                        norm_layer=make_norm(norm)).to(device)
    net = ddp.wrap(model, buffers, device) if replica is not None else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(b, c, size, size, device=device)
    y = torch.randint(0, classes, (b,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, steps: int, repeats: int, warmup: int = 5) -> list[float]:
    """ms per step in each of `repeats` blocks of `steps` steps."""
    for _ in range(warmup):
        step()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1000 / steps)
    return out


def _replica(i: int, world: int, port: int, args, device_name: str, results) -> None:
    rank = i  # start_processes numbers them from 0: rank 0 is a child too, the parent waits
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
    ddp.rendezvous(ddp.Replica(rank, world), port, device, timeout_s=300)
    try:
        for b in args.per:
            for norm in ("bn", "sync_bn"):
                step = _steps(args.model, norm, b, device, ddp.Replica(rank, world))
                ddp.COMM.take()
                ms = time_steps(step, device, args.steps, args.repeats)
                comm = ddp.COMM.take() * 1000 / (args.steps * (args.repeats + 5))
                if rank == 0:
                    results.put((b, norm, ms, comm))
    finally:
        ddp.leave()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per", type=int, nargs="+", default=[2, 4, 8, 32], help="samples per replica")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--model", default="convnet")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    world = args.replicas
    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise SystemExit(f"--replicas {world} needs {world} GPUs; {torch.cuda.device_count()} here")
    print(f"{args.model} on {device} (torch {torch.__version__}, {usable_cores()} cores), "
          f"{world} replicas via {ddp.backend_for(device)}; ms per step, mean ± std over "
          f"{args.repeats} blocks of {args.steps} steps")
    one = {}
    for b in args.per:
        one[b] = time_steps(_steps(args.model, "bn", b * world, device), device, args.steps,
                            args.repeats)
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    torch.multiprocessing.start_processes(
        _replica, args=(world, ddp.free_port(), args, str(device), results), nprocs=world,
        start_method="spawn", join=True)
    got = {}
    while not results.empty():
        b, norm, ms, comm = results.get()
        got[b, norm] = (ms, comm)

    def fmt(ms):
        return f"{statistics.mean(ms):7.2f} ± {statistics.stdev(ms):5.2f}"

    print(f"{'per replica':>11} {'global':>6} | {'1 process bn':>15} | {'DDP bn':>15} "
          f"{'comm':>6} | {'DDP sync_bn':>15} {'comm':>6} | sync_bn/bn  DDP bn/1 process")
    for b in args.per:
        (bn, c_bn), (sync, c_sync) = got[b, "bn"], got[b, "sync_bn"]
        print(f"{b:>11} {b * world:>6} | {fmt(one[b])} | {fmt(bn)} {c_bn:6.2f} | {fmt(sync)} "
              f"{c_sync:6.2f} | {statistics.mean(sync) / statistics.mean(bn):10.2f}  "
              f"{statistics.mean(bn) / statistics.mean(one[b]):14.2f}")


if __name__ == "__main__":
    main()
