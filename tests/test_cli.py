"""Bad input at the command line: one line naming the value and what is allowed, a non-zero exit,
no traceback, nothing written to the database, and no outputs/ or multirun/ folder left behind.
The command line runs in this process (conftest.run_bench); the exit code a shell sees is checked
in a real process once per place a command is refused."""

import shutil

import pytest
from conftest import assert_user_error, query, run_bench_subprocess

CASES = [
    (["norm=batchnorm"], "unknown norm 'batchnorm' (allowed: bcn, bn, bn_affine, bn_detach,"),
    (["-m", "norm=bn,foo"], "unknown norm 'foo' (allowed: bcn, bn, bn_affine, bn_detach,"),
    (["norm=ghost_bn", "norm.virtual_bs=64", "bs=32"], "norm.virtual_bs=64 is larger than bs=32"),
    (["task=regress"], "unknown task 'regress' (allowed: autoencode, classify, gan)"),
    (["dataset=svhn"], "unknown dataset 'svhn' (allowed: cifar10, digits, fashion_mnist,"),
    (["model=vgg"], "unknown model 'vgg' (allowed: cnn4, conv_ae, convnet, dcgan_vgg, keras_cnn, resnet18)"),
    (["model=conv_ae"], "model 'conv_ae' is a model for task autoencode, not classify (allowed "
                        "with task=classify: cnn4, convnet, keras_cnn, resnet18)"),
    (["bs=0"], "bs=0 is not a positive integer"),
    (["bs=-4"], "bs=-4 is not a positive integer"),
    (["bs=abc"], "bs='abc' is not a positive integer"),
    (["lr=0"], "lr=0 is not a positive number"),
    (["lr=-0.1"], "lr=-0.1 is not a positive number"),
    (["epochs=0"], "epochs=0 is not a positive integer"),
    (["norm=gn", "norm.groups=3"], "norm.groups=3 does not divide a layer's 32 channels "
                                   "(allowed here: 1, 2, 4, 8, 16, 32)"),
    (["norm=bn", "norm.groups=4"], "unknown setting 'norm.groups' with norm=bn (allowed in norm:"),
    (["accum_steps=3", "bs=128"], "accum_steps=3 does not divide bs=128 (allowed: the divisors of bs"),
    (["batch_composition.train=sorted"],
     "batch_composition.train='sorted' is not allowed (allowed: homogeneous, random)"),
    (["dataset=digits", "bs=2000"],
     "bs=2000 is larger than the 1437 training images of 'digits' (allowed: 1..1437)"),
    (["dataset=cifar10", "dataset.download=false"],
     "dataset 'cifar10' not found in "),
    (["dataset=mnist"], "put train-images-idx3-ubyte.gz"),
    (["-m", "bs=2,0"], "bs=0 is not a positive integer (allowed: an integer >= 1) [job: bs=0"),
    (["-m", "norm=bn,gn", "norm.groups=4"], "unknown setting 'norm.groups' with norm=bn"),
    (["device=cuda:7"], "device 'cuda:7'"),
    (["diverge.factor=0.5"], "diverge.factor=0.5 is not allowed (allowed: auto, a number >= 1, or 0"),
    (["-m", "diverge.max_loss=1e4,-1"], "diverge.max_loss=-1 is not allowed (allowed: a positive "
                                        "number, or 0 or null to turn the rule off) [job: "),
]


def assert_no_folders_left(cwd):
    """Hydra makes outputs/DATE/TIME or multirun/DATE/TIME before our checks run; a refused
    command removes them again."""
    assert not (cwd / "outputs").exists() and not (cwd / "multirun").exists(), list(cwd.rglob("*"))


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(bench, tmp_path, one_run_db, args,
                                                         message):
    # A database that already holds a run: the bad command must leave it as it was.
    shutil.copy(one_run_db, tmp_path / "bench.db")
    before = query(tmp_path / "bench.db", "select * from runs")
    assert len(before) == 1
    proc = bench(*args) if any(a.startswith("epochs=") for a in args) else bench(*args, "epochs=1")
    assert_user_error(proc, message)
    assert query(tmp_path / "bench.db", "select * from runs") == before
    assert_no_folders_left(tmp_path)


@pytest.mark.parametrize(("url", "message"), [
    ("foo://x", "cannot open results database 'foo://x'"),
    ("sqlite:////proc/no/such/dir.db", "cannot open results database 'sqlite:////proc/no/such"),
])
def test_database_that_cannot_be_opened(bench, tmp_path, url, message):
    assert_user_error(bench("epochs=1", f"db.url={url}"), message)
    assert_no_folders_left(tmp_path)


def test_the_error_shows_the_url_as_typed_not_escaped(bench, tmp_path):
    # Hydra backslash-escapes the colon when it expands a sweep (sqlite\:///...).
    proc = bench("-m", "bs=0,2", f"db.url=sqlite:///{tmp_path / 'bench.db'}")
    assert_user_error(proc, "bs=0 is not a positive integer (allowed: an integer >= 1) "
                            f"[job: bs=0 db.url=sqlite:///{tmp_path}")
    assert_no_folders_left(tmp_path)


def test_the_exit_code_a_shell_sees_is_2(tmp_path):
    # In this process the tests see SystemExit(2); here the exit status the shell gets. Once is
    # enough: the interpreter makes the status from SystemExit alike wherever it is raised.
    proc = run_bench_subprocess(tmp_path, "norm=batchnorm", "epochs=1")
    assert proc.returncode == 2
    assert_user_error(proc, "unknown norm 'batchnorm'")
    assert_no_folders_left(tmp_path)
    assert not (tmp_path / "bench.db").exists()


def test_an_in_process_run_leaves_this_process_as_it_found_it(bench, tmp_path):
    # conftest.run_bench runs the command line in the test process, which is only as good as a
    # fresh process if each run's global changes are undone: Hydra's logging configuration and
    # its singletons, torch's threads and seeds, the SIGTERM handler, argv, cwd, environment.
    import logging
    import os
    import signal
    import sys

    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    def state():
        loggers = {name: (lg.level, list(lg.handlers), list(lg.filters), lg.propagate, lg.disabled)
                   for name, lg in [("", logging.getLogger()), ("bench", logging.getLogger("bench"))]}
        return (loggers, HydraConfig.instance().cfg, GlobalHydra.instance().is_initialized(),
                torch.get_num_threads(), signal.getsignal(signal.SIGTERM), list(sys.argv),
                os.getcwd(), dict(os.environ), sys.stdout, sys.stderr)

    torch.manual_seed(123)
    before, rng = state(), torch.get_rng_state()
    proc = bench("-m", "bs=32,64", "epochs=1", "dataset.train_subset=128", "hydra.verbose=bench",
                 "threads=2", check_rc=0)
    assert "sweep done, 2 jobs: 2 completed" in proc.stdout  # it ran, and logged to its own stdout
    assert state() == before and torch.equal(torch.get_rng_state(), rng)
    logging.getLogger("bench").info("after the run")  # no handler left writing to a closed stream
