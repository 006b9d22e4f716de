"""Bad settings that used to reach training (a traceback, or a run that trains something
meaningless) are one-line `UserError`s from `check_config`, before any work: the key, the bad value
and the allowed range, in the one format of `bench.checks`. The ranges asserted here are the ones
a researcher expects from the literature: Adam's betas in [0, 1) (Kingma & Ba 2015), heavy-ball
momentum in [0, 1), BN momentum in [0, 1] in PyTorch's convention, numpy's seed range."""

import pytest
from conftest import assert_user_error, compose_config

from bench.errors import UserError
from bench.models import MODEL_TASKS
from bench.norms import NORMS, norm_options
from runners.validate import MIN_IMAGE_SIZE, check_config

DIGITS = ["dataset=digits"]  # a 1-channel 32 px dataset that is always on disk

NORM_MOMENTUM = "0 <= x <= 1, or null for a cumulative average"
CASES = [
    # (overrides, the key=value the message starts with, what it says is allowed)
    # -- the list
    (["optim=sgd", "optim.momentum=-1"], "optim.momentum=-1", "0 <= x < 1"),
    (["optim=adam", "optim.betas=[2,0.999]"], "optim.betas[0]=2", "0 <= x < 1"),
    (["optim=adam", "optim.eps=-1"], "optim.eps=-1", "> 0"),
    (["optim=adam", "optim.weight_decay=-1"], "optim.weight_decay=-1", ">= 0"),
    (["norm=bn", "norm.momentum=2"], "norm.momentum=2", NORM_MOMENTUM),
    (["norm=bn", "norm.momentum=-1"], "norm.momentum=-1", NORM_MOMENTUM),
    (["dataset.image_size=2"], "dataset.image_size=2", "8 px or more"),
    (["dataset.std=[0]"], "dataset.std[0]=0", "> 0"),
    (["lr=inf"], "lr=inf", "> 0"),
    (["seed=-1"], "seed=-1", "an integer 0..4294967295"),
    # -- their siblings: optimizers
    (["optim=sgd", "optim.momentum=1"], "optim.momentum=1", "0 <= x < 1"),
    (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5", "0 <= x < 1"),
    (["optim=sgd", "optim.weight_decay=-1e-4"], "optim.weight_decay=-0.0001", ">= 0"),
    (["optim=sgd", "optim.nesterov=1"], "optim.nesterov=1", "true, false"),
    (["optim=sgd", "optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=True",
     "true with momentum > 0"),
    (["optim=radam", "optim.betas=[0.9,1]"], "optim.betas[1]=1", "0 <= x < 1"),
    (["optim=radam", "optim.betas=[0.9]"], "optim.betas=[0.9]", "2 entries"),
    (["optim=radam", "optim.eps=0"], "optim.eps=0", "> 0"),
    (["optim=adam", "optim.eps=nan"], "optim.eps=nan", "> 0"),
    # -- top-level values
    (["lr=nan"], "lr=nan", "> 0"),
    (["lr=-1"], "lr=-1", "> 0"),
    (["seed=4294967296"], "seed=4294967296", "an integer 0..4294967295"),
    (["seed=0.5"], "seed=0.5", "an integer 0..4294967295"),
    (["amp=1"], "amp=1", "auto, true, false"),
    (["bn_eval.modes=1"], "bn_eval.modes=1", "true, false"),
    (["resume=yes"], "resume='yes'", "true, false"),
    # -- datasets: mean/std against the channels, std > 0, augmentation, image size per model
    (["dataset.std=[-0.5]"], "dataset.std[0]=-0.5", "> 0"),
    (["dataset.mean=[nan]"], "dataset.mean[0]=nan", "a finite number"),
    (["dataset.mean=[0.5,0.5]"], "dataset.mean=[0.5, 0.5]", "1 entry"),
    (["dataset=synthetic", "dataset.std=[0.5,0.5]"], "dataset.std=[0.5, 0.5]", "1 or 3 entries"),
    (["dataset=imagenette", "dataset.mean=0.5"], "dataset.mean=0.5", "a list of 1 or 3 entries"),
    (["dataset.augment.shift=-1"], "dataset.augment.shift=-1", "an integer 0..31"),
    (["dataset.augment.shift=32"], "dataset.augment.shift=32", "an integer 0..31"),
    (["dataset.augment.flip=0"], "dataset.augment.flip=0", "true, false"),
    (["dataset.image_size=0"], "dataset.image_size=0", "an integer >= 1"),
    (["dataset=synthetic", "dataset.options.size=4"], "dataset.image_size=None", "8 px or more"),
    # -- norms: every BN-style momentum, and settings that torch.nn never checks
    (["norm=running_bn", "norm.momentum=null"], "norm.momentum=None", "0 <= x <= 1"),
    (["norm=bn", "norm.affine=1"], "norm.affine=1", "true, false"),
    (["norm=gn", "norm.groups=0"], "norm.groups=0", "an integer >= 1"),
    (["norm=gn", "norm.groups=2.5"], "norm.groups=2.5", "an integer >= 1"),
    (["norm=ws_gn", "norm.groups=-4"], "norm.groups=-4", "an integer >= 1"),
    (["norm=bcn", "norm.groups=0"], "norm.groups=0", "an integer >= 1"),
    (["norm=bcn", "norm.estimate=2"], "norm.estimate=2", "true, false"),
    (["norm=frn", "norm.learnable_eps=1"], "norm.learnable_eps=1", "true, false"),
    (["norm=brn", "norm.rmax=0.5"], "norm.rmax=0.5", ">= 1"),
    (["norm=brn", "norm.dmax=-1"], "norm.dmax=-1", ">= 0"),
    (["norm=brn", "norm.warmup=-1"], "norm.warmup=-1", "an integer >= 0"),
    (["norm=ghost_bn", "norm.virtual_bs=0"], "norm.virtual_bs=0", "an integer >= 1"),
    *[([f"norm={n}", "norm.momentum=1.5"], "norm.momentum=1.5", "0 <= x <= 1")
      for n in sorted(NORMS) if "momentum" in norm_options(n)],
    *[([f"norm={n}", "norm.eps=0"], "norm.eps=0", "> 0") for n in sorted(NORMS) if "eps" in norm_options(n)],
    # -- lr schedules
    (["sched=onecycle", "sched.pct_start=1"], "sched.pct_start=1", "0 < x < 1"),
    (["sched=onecycle", "sched.div_factor=0"], "sched.div_factor=0", "> 0"),
    (["sched=onecycle", "sched.final_div_factor=inf"], "sched.final_div_factor=inf", "> 0"),
    (["sched=onecycle", "sched.max_momentum=1"], "sched.max_momentum=1", "0 <= x < 1"),
    (["sched=onecycle", "sched.base_momentum=-0.1"], "sched.base_momentum=-0.1", "0 <= x < 1"),
    (["sched=onecycle", "sched.base_momentum=0.96"], "sched.base_momentum=0.96",
     "0 <= base_momentum <= max_momentum < 1"),
    (["sched=onecycle", "sched.cycle_momentum=1"], "sched.cycle_momentum=1", "true, false"),
    (["sched=cyclic", "sched.warmup=0"], "sched.warmup=0", "0 < x < 1"),
    (["sched=cyclic", "sched.cycles=0"], "sched.cycles=0", "an integer >= 1"),
    (["sched=cyclic", "sched.start=0"], "sched.start=0", "> 0"),
    (["sched=cyclic", "sched.end=-1"], "sched.end=-1", "> 0"),
]


def check(*overrides, tmp_path):
    check_config(compose_config(*DIGITS, *overrides, f"db.url=sqlite:///{tmp_path}/x.db"))


@pytest.mark.parametrize(("overrides", "starts", "allowed"), CASES,
                         ids=[" ".join(o) for o, _, _ in CASES])
def test_bad_value_is_one_line_naming_key_value_and_allowed_range(overrides, starts, allowed, tmp_path):
    with pytest.raises(UserError) as e:
        check(*overrides, tmp_path=tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(starts + " "), message
    assert allowed in message.partition(" (allowed: ")[2], message


EDGES = [
    # The ends of each range that are allowed, so the checks reject no more than they say.
    ["optim=sgd", "optim.momentum=0"], ["optim=sgd", "optim.momentum=0.999"],
    ["optim=sgd", "optim.nesterov=true", "optim.momentum=0.9"],
    ["optim=adam", "optim.betas=[0,0.9999]"], ["optim=radam", "optim.weight_decay=0"],
    ["optim=adam", "optim.eps=1e-12"],
    ["norm=bn", "norm.momentum=0"], ["norm=bn", "norm.momentum=1"],
    ["norm=running_bn", "norm.momentum=1"], ["norm=brn", "norm.rmax=1", "norm.dmax=0"],
    ["norm=brn", "norm.rmax=inf", "norm.dmax=inf"],  # no clipping: the running statistics
    ["seed=0"], ["seed=4294967295"], ["lr=1e-9"], ["dataset.augment.shift=31"],
    ["dataset=synthetic", "dataset.mean=[0.1,0.2,0.3]", "dataset.std=[1,2,3]"],
    ["dataset=synthetic", "dataset.mean=[0.5]", "dataset.std=[0.5]"],
    ["sched=onecycle", "sched.base_momentum=0", "sched.max_momentum=0"],
    ["sched=cyclic", "sched.warmup=0.999"],
]


@pytest.mark.parametrize("overrides", EDGES, ids=[" ".join(o) for o in EDGES])
def test_values_at_the_edge_of_each_range_pass(overrides, tmp_path):
    check(*overrides, tmp_path=tmp_path)


@pytest.mark.parametrize("optim", ["adam", "radam", "sgd"])
@pytest.mark.parametrize("sched", ["constant", "cyclic", "onecycle"])
def test_every_optimizer_with_every_schedule_passes_with_their_defaults(optim, sched, tmp_path):
    # onecycle's cycle_momentum moves Adam's beta1 or SGD's momentum: both must take it.
    check(f"optim={optim}", f"sched={sched}", tmp_path=tmp_path)


@pytest.mark.parametrize("model", sorted(MIN_IMAGE_SIZE))
def test_each_model_takes_its_smallest_image_size_and_refuses_one_less(model, tmp_path):
    least = MIN_IMAGE_SIZE[model]
    args = [f"task={MODEL_TASKS[model]}", f"model={model}"]
    check(*args, f"dataset.image_size={least}", tmp_path=tmp_path)
    with pytest.raises(UserError, match=rf"^dataset.image_size={least - 1} is too small for model "
                                        rf"'{model}' \(allowed: {least} px or more"):
        check(*args, f"dataset.image_size={least - 1}", tmp_path=tmp_path)


def test_every_model_has_a_smallest_image_size():
    assert set(MIN_IMAGE_SIZE) == set(MODEL_TASKS)


def test_the_command_line_reports_a_bad_optimizer_setting_in_one_line_and_writes_nothing(
        bench, tmp_path):
    # The process as a user meets it: exit status 2, one line, no traceback, no database.
    proc = bench("optim=sgd", "optim.momentum=-1", *DIGITS, "threads=1")
    assert proc.returncode == 2, proc.stderr
    assert_user_error(proc, "optim.momentum=-1 is not allowed (allowed: 0 <= x < 1)")
    assert not (tmp_path / "bench.db").exists()


MOMENTUM_NORMS = ["bn", "ghost_bn", "brn", "bn_detach", "bn_norm", "bcn", "sync_bn"]


@pytest.mark.parametrize("norm", MOMENTUM_NORMS)
def test_cumulative_average_momentum_null_passes_the_checks(norm, tmp_path):
    # momentum None is documented (nn.BatchNorm2d's cumulative average); the meta-device check
    # used to refuse it with "Tensor.item() cannot be called on meta tensors".
    for task in ("task=classify", "task=gan"):
        check_config(compose_config(*DIGITS, task, f"norm={norm}", "norm.momentum=null",
                                 f"db.url=sqlite:///{tmp_path}/x.db"))


def test_cumulative_average_momentum_trains_and_matches_pytorch():
    """A real forward in train mode: the running mean after two batches with momentum None is
    the plain mean of the two batch means, as nn.BatchNorm2d(momentum=None) computes it."""
    import torch

    from bench.norms import make_norm

    ours, ref = make_norm("bn", momentum=None)(3), torch.nn.BatchNorm2d(3, momentum=None)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 3, 5, 5, generator=g) + i for i in range(2)]
    for x in xs:
        ours(x), ref(x)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_mean, torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0))
