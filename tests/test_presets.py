"""The seed presets through the real command line: a preset made of several grids runs each
grid's jobs once, with the settings that grid gives them."""

import json

from conftest import query


def test_seed003_grids_run_each_norm_setting_once(bench, tmp_path):
    # The command line narrows the preset to one bs, lr and seed on digits; every grid still runs.
    bench("-m", "experiment=seed003_imagenette_cpu", "dataset=digits", "bs=128", "lr=0.01",
          "seed=0", "epochs=1", "dataset.train_subset=256", "dataset.test_subset=100",
          check_rc=0)
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
