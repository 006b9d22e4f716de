"""sync_bn against nn.BatchNorm2d on the whole batch, with two real gloo processes on this machine,
and the data-parallel pieces of `bench.ddp` (buffers reconciled, each replica's share, sums).

One spawn of 2 processes (4.1 s on 2 cores, measured, most of it starting them) runs every distributed
case and saves what it computed; the tests compare that with references computed here, in one
process, by torch's own nn.BatchNorm2d.
"""

import copy
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import randomize
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench import ddp
from bench.norm_zoo.sync_bn import global_batch_norm
from bench.norms import make_norm
from bench.precise_bn import stat_layers, update_bn_stats

WORLD, PER_REPLICA, C = 2, 8, 4
# (result key, norm, dtype) of the single-layer cases each replica runs
CASES = [("sync_bn64", "sync_bn", torch.float64), ("sync_bn32", "sync_bn", torch.float32),
         ("bn", "bn", torch.float32)]


def data(dtype, seed=0, shape=(WORLD * PER_REPLICA, C, 5, 3)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3 + 1).to(dtype), torch.randn(shape, generator=g).to(dtype)


def tiny_net():
    with torch.random.fork_rng():
        torch.manual_seed(2)
        return nn.Sequential(nn.Conv2d(3, C, 3, padding=1), make_norm("sync_bn", momentum=0.2)(C),
                             nn.ReLU(), nn.Flatten(), nn.Linear(C * 6 * 6, 5))


def step_batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(WORLD * PER_REPLICA, 3, 6, 6, generator=g) * 2 + 0.5
    return x, torch.randint(0, 5, (WORLD * PER_REPLICA,), generator=g)


def forward_backward(layer, x, g):
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * g).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": layer.weight.grad, "b_grad": layer.bias.grad,
            "running_mean": layer.running_mean.clone(), "running_var": layer.running_var.clone(),
            "batches": layer.num_batches_tracked.clone(), "eval_y": layer.eval()(x.detach())}


def _worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        share = slice(rank * PER_REPLICA, (rank + 1) * PER_REPLICA)
        res = {}
        for key, norm, dtype in CASES:
            x, g = data(dtype)
            layer = randomize(make_norm(norm, momentum=0.3)(C)).to(dtype)
            res[key] = forward_backward(layer, x[share], g[share])
        # A training step under DistributedDataParallel (which refuses nn.SyncBatchNorm on the CPU):
        # each replica's loss is the mean over its 8 samples, DDP averages the gradients.
        net = DistributedDataParallel(tiny_net())
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        xb, yb = step_batch()
        nn.functional.cross_entropy(net(xb[share]), yb[share]).backward()
        opt.step()
        res["step"] = copy.deepcopy(net.module.state_dict())
        # gradcheck of the synchronized formula through the real all_reduce, over a group of one.
        groups = [dist.new_group([r]) for r in range(WORLD)]
        x, _ = data(torch.float64, seed=4 + rank, shape=(3, 2, 2, 2))
        w, b = torch.randn(2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
        args = [t.requires_grad_() for t in (x, w, b)]
        res["gradcheck"] = torch.autograd.gradcheck(
            lambda *a: global_batch_norm(*a, eps=1e-3, group=groups[rank])[0], args)
        res["ddp"] = ddp_pieces(ddp.Replica(rank, WORLD))
        torch.save(res, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def ddp_pieces(replica):
    results = {}
    for mode in ddp.BUFFER_MODES:
        layer = nn.BatchNorm2d(3)
        layer.running_mean.fill_(replica.rank + 1.0)  # rank 0: 1, rank 1: 2
        layer.running_var.fill_(4.0 * (replica.rank + 1))
        layer.num_batches_tracked.fill_(7)
        ddp.reconcile_buffers(layer, mode, WORLD)
        results[mode] = {k: v.clone() for k, v in layer.state_dict().items()}
    results["share"] = ddp.share(torch.arange(8.0).reshape(8, 1), replica)
    results["sum"] = ddp.add_up(torch.tensor([replica.rank + 1.0, 10.0]))
    results["word"] = ddp.decide(replica, "train" if replica.leader else None)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_replicas(out):
    """Every rank's results of `_worker`; the processes are joined (killed after 60 s)."""
    ctx = mp.start_processes(_worker, args=(free_port(), out), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 60
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail("the gloo replicas did not finish within 60 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert not any(p.is_alive() for p in ctx.processes)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def reference(layer, x, g):
    return forward_backward(randomize(layer), x, g)


def test_two_gloo_replicas_against_one_process_batchnorm(tmp_path):
    # One test, so that pytest-xdist never spreads the checks over workers that each spawn.
    replicas = run_replicas(tmp_path)
    check_sync_bn_is_batchnorm_on_the_whole_batch(replicas, "sync_bn64", torch.float64, 1e-10)
    check_sync_bn_is_batchnorm_on_the_whole_batch(replicas, "sync_bn32", torch.float32, 1e-5)
    check_bn_normalizes_each_share_by_its_own_statistics(replicas)
    check_a_ddp_training_step_with_sync_bn_is_one_process_bn_on_the_global_batch(replicas)
    # torch.autograd.gradcheck (finite differences, float64) of global_batch_norm through the real
    # all_reduce over a group of one process (two replicas are checked against BN's gradient above)
    assert all(r["gradcheck"] for r in replicas)
    check_buffers_are_averaged_or_left_as_rank_0s_and_each_replica_gets_its_share(replicas)


def check_buffers_are_averaged_or_left_as_rank_0s_and_each_replica_gets_its_share(replicas):
    r0, r1 = (r["ddp"] for r in replicas)
    for r in (r0, r1):
        assert torch.equal(r["average"]["running_mean"], torch.full((3,), 1.5))
        assert torch.equal(r["average"]["running_var"], torch.full((3,), 6.0))
        assert int(r["average"]["num_batches_tracked"]) == 7
        assert torch.equal(r["sum"], torch.tensor([3.0, 20.0]))
        assert r["word"] == "train"  # rank 0's, at every rank
    assert torch.equal(r0["broadcast"]["running_mean"], torch.full((3,), 1.0))  # untouched
    assert torch.equal(r1["broadcast"]["running_mean"], torch.full((3,), 2.0))
    assert torch.equal(torch.cat([r0["share"], r1["share"]]), torch.arange(8.0).reshape(8, 1))


def check_sync_bn_is_batchnorm_on_the_whole_batch(replicas, name, dtype, tol):
    x, g = data(dtype)
    ref = reference(nn.BatchNorm2d(C, momentum=0.3).to(dtype), x, g)
    ranks = [r[name] for r in replicas]
    for key in ("y", "x_grad", "eval_y"):  # each replica holds its share of the batch
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), ref[key], rtol=tol, atol=tol)
    for key in ("w_grad", "b_grad"):  # DDP would sum these over replicas
        torch.testing.assert_close(sum(r[key] for r in ranks), ref[key], rtol=tol, atol=tol)
    for r in ranks:  # every replica keeps the global batch's running statistics
        for key in ("running_mean", "running_var", "batches"):
            torch.testing.assert_close(r[key], ref[key], rtol=tol, atol=tol)


def check_bn_normalizes_each_share_by_its_own_statistics(replicas):
    x, g = data(torch.float32)
    for rank, r in enumerate(replicas):
        share = slice(rank * PER_REPLICA, (rank + 1) * PER_REPLICA)
        ref = reference(nn.BatchNorm2d(C, momentum=0.3), x[share], g[share])
        for key in ("y", "x_grad", "w_grad", "running_mean", "running_var"):
            torch.testing.assert_close(r["bn"][key], ref[key], rtol=1e-5, atol=1e-5)
    # the two references differ by more than the tolerance: per-replica is not global BN
    assert (replicas[0]["bn"]["y"] - replicas[0]["sync_bn32"]["y"]).abs().max() > 1e-2


def check_a_ddp_training_step_with_sync_bn_is_one_process_bn_on_the_global_batch(replicas):
    net = tiny_net()
    net[1] = nn.BatchNorm2d(C, momentum=0.2)
    net.load_state_dict(tiny_net().state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    xb, yb = step_batch()
    nn.functional.cross_entropy(net(xb), yb).backward()
    opt.step()
    before = tiny_net().state_dict()
    for r in replicas:
        for key, value in net.state_dict().items():
            torch.testing.assert_close(r["step"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert (net[0].weight - before["0.weight"]).abs().max() > 1e-3  # the step moved the weights


def test_one_process_without_a_group_is_batchnorm_exactly():
    assert not dist.is_initialized()
    x, g = data(torch.float32)
    ours = reference(make_norm("sync_bn", momentum=0.3)(C), x, g)
    ref = reference(nn.BatchNorm2d(C, momentum=0.3), x, g)
    for key, value in ref.items():
        assert torch.equal(ours[key], value), key


def test_precise_bn_and_the_bn_eval_modes_treat_it_as_bn():
    x, _ = data(torch.float32)
    ours, ref = make_norm("sync_bn")(C), nn.BatchNorm2d(C)
    assert stat_layers(nn.Sequential(ours)) == [ours]
    assert update_bn_stats(ours, [x[:8], x[8:]], 16) == update_bn_stats(ref, [x[:8], x[8:]], 16) == 16
    assert torch.equal(ours.running_mean, ref.running_mean) and torch.equal(ours.running_var, ref.running_var)
    torch.testing.assert_close(ours.running_mean, x.double().mean((0, 2, 3)).float())
