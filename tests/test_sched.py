"""Learning-rate schedules: their shape against formulas written out here, per-iteration stepping
in a real run, and bad settings as one-line errors."""

import math

import pytest
import torch
from conftest import assert_user_error, query

from bench.errors import UserError
from bench.sched import build_scheduler, check_scheduler

CYCLIC = {"cycles": 1, "warmup": 0.3, "start": 0.5, "end": 1 / 3}


def lrs(name, total, lr=0.6, **settings):
    """The lr of each of `total` optimizer steps under schedule `name`."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(name, opt, total, **settings)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def course_sched(pos, start=0.3, peak=0.6, end=0.2, warmup=0.3):
    """The fast.ai course's combine_scheds([0.3, 0.7], [sched_cos(0.3, 0.6), sched_cos(0.6, 0.2)])
    at position pos in [0, 1), written as the course writes it: start + (1 + cos(pi * (1 - p))) *
    (end - start) / 2 on each piece."""
    def sched_cos(a, b, p):
        return a + (1 + math.cos(math.pi * (1 - p))) * (b - a) / 2
    if pos < warmup:
        return sched_cos(start, peak, pos / warmup)
    return sched_cos(peak, end, (pos - warmup) / (1 - warmup))


def test_constant_leaves_the_lr_alone():
    assert lrs("constant", 7) == [0.6] * 7


def test_cyclic_is_the_course_schedule_stepped_per_iteration():
    total = 200
    got = lrs("cyclic", total, lr=0.6, **{**CYCLIC, "end": 0.2 / 0.6})
    want = [course_sched(i / total) for i in range(total)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert max(got) == pytest.approx(0.6) and got.index(max(got)) == 60  # the peak at 30%


def test_cyclic_cycles_repeat_the_shape():
    one = lrs("cyclic", 50, **CYCLIC)
    two = lrs("cyclic", 100, **{**CYCLIC, "cycles": 2})
    assert two[:50] == pytest.approx(one) and two[50:] == pytest.approx(one)


def test_onecycle_runs_from_lr_over_div_to_the_peak_and_down():
    total, lr = 100, 0.01
    settings = {"pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e4,
                "cycle_momentum": True, "base_momentum": 0.85, "max_momentum": 0.95}
    got = lrs("onecycle", total, lr=lr, **settings)
    assert got[0] == pytest.approx(lr / 25)
    peak = round(0.25 * total) - 1  # torch: the rise ends at step pct_start * total - 1
    assert got.index(max(got)) == peak and max(got) == pytest.approx(lr)
    # cosine annealing (Smith & Topin): halfway down the lr is halfway between peak and floor
    floor = lr / 25 / 1e4
    mid = peak + (total - 1 - peak) // 2
    assert got[mid] == pytest.approx((lr + floor) / 2, rel=0.05)
    assert got[-1] == pytest.approx(floor, rel=0.1)
    assert all(a <= b for a, b in zip(got[:peak], got[1:peak + 1], strict=True))
    assert all(a >= b for a, b in zip(got[peak:-1], got[peak + 1:], strict=True))


@pytest.mark.parametrize(("name", "settings", "message"), [
    ("cyclic", {**CYCLIC, "warmup": 1.5}, "sched.warmup=1.5 is not allowed"),
    ("cyclic", {**CYCLIC, "cycles": 0}, "sched.cycles=0 is not a positive integer"),
    ("onecycle", {"pct_start": 0.0}, "sched.pct_start=0.0 is not allowed"),
    ("onecycle", {"div_factor": -1}, "sched.div_factor=-1 is not a positive number"),
    ("onecycle", {"base_momentum": 0.99, "max_momentum": 0.9}, "base_momentum <= max_momentum"),
    ("constant", {"warmup": 0.3}, "unknown setting sched.warmup for sched 'constant'"),
    ("step", {}, "unknown sched 'step' (allowed: constant, cyclic, onecycle)"),
])
def test_bad_settings_name_the_value_and_the_allowed_ones(name, settings, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_scheduler(name, **settings)


def test_more_cycles_than_steps_is_an_error():
    with pytest.raises(UserError, match=r"sched.cycles=5 is more than the run's 4 optimizer steps"):
        lrs("cyclic", 4, **{**CYCLIC, "cycles": 5})


def test_a_run_steps_the_schedule_every_iteration_and_records_the_epoch_mean(bench, tmp_path):
    # 256 images at bs 64: 4 steps per epoch, 3 epochs, 12 steps in all
    bench("sched=cyclic", "lr=0.01", "epochs=3", "bs=64", "dataset.train_subset=256", check_rc=0)
    rows = query(tmp_path / "bench.db",
                 "select epoch, value from metrics where split='train' and name='lr' order by epoch")
    want = [course_sched(i / 12, start=0.005, peak=0.01, end=0.00333) for i in range(12)]
    assert [e for e, _ in rows] == [1, 2, 3]
    for (_, got), e in zip(rows, range(3), strict=True):
        assert got == pytest.approx(sum(want[4 * e:4 * e + 4]) / 4, rel=1e-9)


def test_schedules_are_for_single_model_tasks(bench):
    assert_user_error(bench("task=gan", "sched=onecycle"),
                      "sched 'onecycle' is not supported by task gan (allowed: constant)")
    assert_user_error(bench("sched=warmup"), "unknown sched 'warmup'")
