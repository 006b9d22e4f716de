"""Every config option composes and passes the checks; conf/ and the registries stay in step."""


import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from bench.data import DATASETS
from bench.models import MODEL_TASKS, MODELS
from bench.norms import NORMS
from bench.optim import OPTIMIZERS
from bench.sched import SCHEDULES
from hydra_plugins.normbench_sweeper import grid_jobs
from runners import RUNNERS
from runners.validate import CONF_DIR, check_config, group_options

REGISTRIES = {"task": RUNNERS, "dataset": DATASETS, "model": MODELS, "norm": NORMS,
              "optim": OPTIMIZERS, "sched": SCHEDULES}


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_every_registered_name_has_a_config_file_and_back(group):
    assert set(group_options(group)) == set(REGISTRIES[group])


@pytest.mark.parametrize(("group", "option"), [
    (g, o) for g in sorted(REGISTRIES) for o in group_options(g)])
def test_every_option_composes_names_itself_and_passes_the_checks(group, option, tmp_path):
    task = [f"task={MODEL_TASKS[option]}"] if group == "model" else []  # a model with its task
    cfg = compose_config(*task, f"{group}={option}", f"db.url=sqlite:///{tmp_path}/x.db")
    assert cfg[group].name == option  # the name stored in the database is the file's name
    check_config(cfg)


def test_task_sets_its_default_model_and_the_command_line_overrides_it():
    assert compose_config().model.name == "convnet"
    assert compose_config("model=cnn4").model.name == "cnn4"
    assert compose_config("task=autoencode").model.name == "conv_ae"
    assert compose_config("task=gan").model.name == "dcgan_vgg"


def preset_jobs(name: str) -> list[list[str]]:
    """The overrides of every job `python -m bench.run -m experiment=NAME` launches."""
    sweeper = compose_config(f"experiment={name}", return_hydra_config=True).hydra.sweeper
    params = OmegaConf.to_container(sweeper.params)
    grids = OmegaConf.to_container(sweeper.grids) if sweeper.grids else [{}]
    return [[f"experiment={name}", *job] for job in grid_jobs(params, grids, [])]


def is_alias(name: str) -> bool:
    """A preset that is only another preset's name (an old name kept working)."""
    node = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml")
    return set(node) == {"defaults"} and len(node.defaults) == 1 and (
        node.defaults[0] in group_options("experiment"))


def check_preset_jobs(name, tmp_path, ignore=("seed=",), extra=()):
    jobs = preset_jobs(name)
    assert len(jobs) > 1, f"experiment {name} sets no sweep grid"
    # Jobs that differ only in their seed pass or fail together (a seed is any integer): one each.
    distinct = {tuple(o for o in job if not o.startswith(ignore)) for job in jobs}
    assert all(any(o.startswith("seed=") for o in job) for job in jobs)
    for job in sorted(distinct):
        check_config(compose_config(*job, "seed=0", f"db.url=sqlite:///{tmp_path}/x.db", *extra))


# Aliases compose to exactly their target's jobs (tests/test_presets.py): checking them again
# would double this test's minutes for nothing.
@pytest.mark.parametrize("name", [n for n in group_options("experiment") if not is_alias(n)])
def test_every_job_of_every_preset_passes_the_checks(name, tmp_path):
    # replacing_bn's 88 jobs take 10 s. Here its jobs that differ only in lr count once (composed
    # with the preset's default lr): both of its lrs are finite and > 0, the only check lr has.
    # All 88 in the slow test below.
    # data_parallel_bn is a job for 8 GPUs: on this machine its 8 replicas would be refused for
    # the cores they lack (that check: tests/test_ddp.py); every other check still runs.
    extra = ("ddp.oversubscribe=true",) if name == "data_parallel_bn" else ()
    check_preset_jobs(name, tmp_path, ("seed=", "lr=") if name == "replacing_bn" else ("seed=",),
                      extra)


@pytest.mark.slow
def test_every_job_of_the_largest_preset_passes_the_checks(tmp_path):
    check_preset_jobs("replacing_bn", tmp_path)


def test_presets_set_the_write_ups_experiments():
    c = compose_config("experiment=classifier_bn_vs_none")
    assert (c.dataset.name, c.model.name, c.optim.name, c.lr, c.epochs, c.sched.name) == (
        "cifar10", "convnet", "radam", 3e-4, 100, "constant")
    assert compose_config("experiment=autoencoder_bn_vs_none").model.name == "conv_ae"
    for name in ("classifier_bn_vs_none", "autoencoder_bn_vs_none"):
        assert {tuple(j[1:3]) for j in preset_jobs(name)} == {
            (f"norm={n}", f"bs={b}") for n in ("bn", "none") for b in (128, 512, 2000)}
    c = compose_config("experiment=large_batch_ema")
    assert (c.dataset.name, c.model.name, c.model.width, c.norm.momentum, c.norm.eps) == (
        "mnist", "keras_cnn", 32, 0.01, 1e-3)
    assert [j[1] for j in preset_jobs("large_batch_ema")][::3] == ["bs=64", "bs=4096"]
    gan = compose_config("experiment=gan_discriminator_norm")
    assert (gan.task.name, gan.task.d_batches) == ("gan", "separate")

    # The Replacing BatchNorm post: 11 norm settings x 2 models x bs {128, 2} x lr {1e-2, 1e-3}
    # x 3 seeds, GN with 4 groups on cnn4 and 32 on resnet18, BN also with eps 0.1
    jobs = preset_jobs("replacing_bn")
    assert len(jobs) == 11 * 2 * 2 * 2 * 3
    gn = {(j[4], j[5], j[6]) for j in jobs if "norm=gn" in j}
    assert gn == {("model=cnn4", "norm=gn", "norm.groups=4"),
                  ("model=resnet18", "norm=gn", "norm.groups=32")}
    assert sum("norm.eps=0.1" in j for j in jobs) == 2 * 2 * 2 * 3
    c = compose_config(*jobs[0])
    assert (c.dataset.image_size, c.optim.weight_decay, c.sched.name, c.epochs) == (
        96, 1e-6, "cyclic", 3)

    jobs = preset_jobs("precise_bn")
    assert {j[2] for j in jobs} == {"batch_composition.train=random",
                                    "batch_composition.train=homogeneous"}


def test_top_level_defaults():
    cfg = compose_config(return_hydra_config=True)
    assert cfg.db.url == "sqlite:///results/bench.db"
    assert cfg.device == "auto"
    assert {"bs", "lr", "seed", "epochs"} <= set(cfg)
    assert cfg.hydra.sweeper._target_.endswith("ValidatingSweeper")
