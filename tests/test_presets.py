"""The presets of conf/experiment: named after what they test, the old `seed00N_*` names still
work as aliases, and a preset made of several grids runs each grid's jobs once through the real
command line."""

import json

import pytest
from conftest import compose_config, query
from omegaconf import OmegaConf
from test_config import preset_jobs

from bench.config_hash import config_hash
from runners.validate import group_options

# The names the presets had before they were named after what they test (commands in old notes,
# databases made by `make preset P=seed00N_...`), and the preset each one now stands for.
RENAMED = {
    "seed000_classify": "classifier_bn_vs_none",
    "seed000_autoencode": "autoencoder_bn_vs_none",
    "seed001_gan": "gan_discriminator_norm",
    "seed001_ddp": "data_parallel_bn",
    "seed002_large_batch": "large_batch_ema",
    "seed003_imagenette": "replacing_bn",
    "seed004_precise_bn": "precise_bn",
}
ALIASES = {old + s: new + s for old, new in RENAMED.items() for s in ("", "_cpu")}


def test_every_old_name_is_an_alias_and_every_preset_is_named_after_what_it_tests():
    options = set(group_options("experiment"))
    assert set(ALIASES) <= options and set(ALIASES.values()) <= options
    assert options - set(ALIASES) == {"demo", *ALIASES.values()}


def _jobs(name):
    return [job[1:] for job in preset_jobs(name)]  # without the leading `experiment=NAME`


@pytest.mark.parametrize(("alias", "target"), sorted(ALIASES.items()))
def test_an_alias_composes_to_exactly_its_targets_jobs(alias, target):
    # The same sweep (its parameters and sub-grids, expanded to the job list, in order) ...
    jobs = _jobs(alias)
    assert jobs == _jobs(target) and len(jobs) > 1
    # ... and a job composed under either name is one config, with one hash, so `resume` skips a
    # run made under the other name. First and last job: a multi-grid preset's grids lie between.
    for job in (jobs[0], jobs[-1]):
        a, t = (OmegaConf.to_container(compose_config(f"experiment={n}", *job), resolve=True)
                for n in (alias, target))
        assert a == t
        assert config_hash(a) == config_hash(t)


def test_replacing_bn_grids_run_each_norm_setting_once(bench, tmp_path):
    # The command line narrows the preset to one bs, lr and seed on digits; every grid still runs.
    bench("-m", "experiment=replacing_bn_cpu", "dataset=digits", "bs=128", "lr=0.01",
          "seed=0", "epochs=1", "dataset.train_subset=256", "dataset.test_subset=100",
          "threads=1", check_rc=0)
    rows = query(tmp_path / "bench.db", "select norm, status, config from runs order by id")
    got = [(norm, status, json.loads(c)["norm"].get("groups"), json.loads(c)["norm"].get("eps"))
           for norm, status, c in rows]
    assert got == [
        ("none", "completed", None, None), ("bn", "completed", None, 1e-5),
        ("bn", "completed", None, 0.1),
        ("running_bn", "completed", None, 1e-5), ("ln", "completed", None, 1e-5),
        ("gn", "completed", 4, 1e-5),
        ("bn_affine", "completed", None, None), ("bn_norm", "completed", None, 1e-5),
        ("bn_detach", "completed", None, 1e-5),
        ("ws_gn", "completed", 4, 1e-5), ("bcn", "completed", 4, 1e-5)]
    configs = [json.loads(c) for *_, c in rows]
    assert {(c["model"]["name"], c["sched"]["name"], c["optim"]["weight_decay"]) for c in configs} \
        == {("cnn4", "cyclic", 1e-6)}
