"""Every config option composes and passes the checks; conf/ and the registries stay in step."""


import pytest
from hydra import compose, initialize_config_dir

from bench.data import DATASETS
from bench.models import MODEL_TASKS, MODELS
from bench.norms import NORMS
from bench.optim import OPTIMIZERS
from bench.validate import CONF_DIR, check_config, group_options
from runners import RUNNERS

REGISTRIES = {"task": RUNNERS, "dataset": DATASETS, "model": MODELS, "norm": NORMS,
              "optim": OPTIMIZERS}


def compose_job(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_every_registered_name_has_a_config_file_and_back(group):
    assert set(group_options(group)) == set(REGISTRIES[group])


@pytest.mark.parametrize(("group", "option"), [
    (g, o) for g in sorted(REGISTRIES) for o in group_options(g)])
def test_every_option_composes_names_itself_and_passes_the_checks(group, option, tmp_path):
    task = [f"task={MODEL_TASKS[option]}"] if group == "model" else []  # a model with its task
    cfg = compose_job(*task, f"{group}={option}", f"db.url=sqlite:///{tmp_path}/x.db")
    assert cfg[group].name == option  # the name stored in the database is the file's name
    check_config(cfg)


def test_task_sets_its_default_model_and_the_command_line_overrides_it():
    assert compose_job().model.name == "convnet"
    assert compose_job("model=cnn4").model.name == "cnn4"
    assert compose_job("task=autoencode").model.name == "conv_ae"
    assert compose_job("task=gan").model.name == "dcgan_vgg"


def test_experiment_presets_compose():
    for name in group_options("experiment"):
        cfg = compose_job(f"experiment={name}", hydra=True)
        assert cfg.hydra.sweeper.params, f"experiment {name} sets no sweep grid"


def test_top_level_defaults():
    cfg = compose_job(hydra=True)
    assert cfg.db.url == "sqlite:///results/bench.db"
    assert cfg.device == "auto"
    assert {"bs", "lr", "seed", "epochs"} <= set(cfg)
    assert cfg.hydra.sweeper._target_.endswith("ValidatingSweeper")
