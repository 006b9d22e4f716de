"""The GAN task: the GAN post's discriminator and DCGAN's generator (layers and parameter counts
worked out by hand), their sizes, how D sees a step, the runner in-process, and the real command
line (a multirun over norms, and bad input as one line that writes nothing)."""

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_every_parameter_learns,
    assert_user_error,
    compose_config,
    query,
    run_bench_subprocess,
)
from torch import nn

from bench.errors import UserError, choices
from bench.models import build_model
from bench.models.gan import gan_stages
from bench.norms import NORMS, make_norm
from runners.gan import d_logits
from runners.gan_eval import train_mode_untouched, uniformity


def pair(c=3, size=32, norm="bn", gen_norm="bn", **kw):
    torch.manual_seed(0)
    return build_model("dcgan_vgg", in_channels=c, num_classes=10, image_size=size,
                       norm_layer=make_norm(norm), gen_norm_layer=make_norm(gen_norm), **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(("size", "stages"), [(28, (2, 7)), (32, (3, 4)), (64, (4, 4)),
                                              (96, (4, 6)), (128, (5, 4)), (8, (1, 4)), (256, (5, 8))])
def test_stride2_stages_follow_the_image_size(size, stages):
    assert gan_stages(size) == stages


@pytest.mark.parametrize("size", [30, 33, 6, 4, 512])
def test_sizes_the_gan_cannot_take_are_errors(size):
    with pytest.raises(ValueError, match=f"cannot bring {size} px down to 8 px or less"):
        gan_stages(size)


def test_128px_discriminator_is_the_seeds_vgg_128():
    d = pair(3, 128).discriminator
    convs = [(l.in_channels, l.out_channels, l.kernel_size[0], l.stride[0])
             for l in d.modules() if isinstance(l, nn.Conv2d)]
    assert convs == [(3, 64, 3, 1), (64, 64, 4, 2), (64, 128, 3, 1), (128, 128, 4, 2),
                     (128, 256, 3, 1), (256, 256, 4, 2), (256, 512, 3, 1), (512, 512, 4, 2),
                     (512, 512, 3, 1), (512, 512, 4, 2)]
    kinds = [type(l).__name__ for l in d.features]
    assert kinds[:5] == ["Conv2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU"]
    assert [type(l).__name__ for l in d.head] == ["Flatten", "Linear", "LeakyReLU", "Linear"]
    assert d.head[1].in_features == 512 * 4 * 4 and d.head[1].out_features == 100
    # conv weights 1,792 (with bias) + 65,536 + 73,728 + 262,144 + 294,912 + 1,048,576 +
    # 1,179,648 + 4,194,304 + 2,359,296 + 4,194,304; BN 2 x 2,880; linear 819,300 + 101.
    assert n_params(d) == 14_499_401


def test_64px_generator_is_dcgans():
    g = pair(3, 64).generator
    convs = [(l.in_channels, l.out_channels, l.kernel_size[0], l.stride[0], l.padding[0])
             for l in g.modules() if isinstance(l, nn.ConvTranspose2d)]
    assert convs == [(100, 512, 4, 1, 0), (512, 256, 4, 2, 1), (256, 128, 4, 2, 1),
                     (128, 64, 4, 2, 1), (64, 3, 4, 2, 1)]
    assert type(g.net[-1]).__name__ == "Tanh"
    # DCGAN's 3,576,704 + the last layer's 3 biases (no norm follows it).
    assert n_params(g) == 819_200 + 2_097_152 + 524_288 + 131_072 + 3_072 + 3 + 2 * 960
    assert n_params(g) == 3_576_707
    w = g.net[0].weight
    assert abs(w.std().item() - 0.02) < 0.002  # DCGAN's N(0, 0.02)


def test_a_conv_has_a_bias_only_where_no_norm_follows():
    def biased(m):
        return [l.bias is not None for l in m.modules() if isinstance(l, (nn.Conv2d, nn.ConvTranspose2d))]

    p = pair(3, 32, "bn", "bn")
    assert biased(p.discriminator) == [True] + [False] * 5
    assert biased(p.generator) == [False] * 3 + [True]
    q = pair(3, 32, "none", "none")
    assert all(biased(q.discriminator)) and all(biased(q.generator))


@pytest.mark.parametrize(("c", "size"), [(1, 28), (1, 32), (3, 32), (3, 64), (3, 96)])
def test_generator_and_discriminator_shapes_for_every_dataset(c, size):
    p = pair(c, size, nf=8, ngf=8)
    fake = p.generator(p.generator.noise(3))
    assert fake.shape == (3, c, size, size)
    assert fake.abs().max() <= 1  # tanh
    assert p.discriminator(fake).shape == (3,)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_any_norm_in_either_network(norm):
    torch.manual_seed(0)
    p = pair(3, 32, norm, norm, nf=8, ngf=8)
    # A batch of 8: at 2, a batch norm over 1x1 maps outputs +-1 whatever its input.
    fake = p.generator(p.generator.noise(8))
    assert fake.shape == (8, 3, 32, 32)
    score = p(fake)
    assert score.shape == (8,)
    # The generator's loss reaches every parameter of both networks through the fakes.
    F.softplus(-score).mean().backward()
    assert_every_parameter_learns(p)


def test_mixed_and_separate_batches_differ_only_with_a_batch_dependent_norm():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    for norm, same in (("none", True), ("gn", True), ("bn", False)):
        d = pair(3, 32, norm, nf=8).discriminator.train()
        sep = torch.cat(d_logits(d, real, fake, mixed=False))
        mix = torch.cat(d_logits(d, real, fake, mixed=True))
        assert torch.allclose(sep, mix, atol=1e-5) == same, norm


def test_probes_leave_bn_buffers_and_modes_as_they_were():
    p = pair(3, 32, "bn", "bn", nf=8, ngf=8)
    p.generator.eval()
    before = {k: v.clone() for k, v in p.state_dict().items()}
    with torch.no_grad(), train_mode_untouched(p.generator, p.discriminator):
        assert p.generator.training and p.discriminator.training
        p.discriminator(p.generator(p.generator.noise(4)))
    assert not p.generator.training and p.discriminator.training
    assert all(torch.equal(before[k], v) for k, v in p.state_dict().items())


def test_gan_precise_bn_uses_noise_for_g_and_real_and_fake_batches_for_d():
    from contextlib import nullcontext

    from bench.data.loader import DeviceBatches
    from runners.gan_eval import precise_bn

    p = pair(1, 32, "bn", "bn", nf=8, ngf=8)
    G, D = p.generator, p.discriminator
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8)
    train = DeviceBatches(images, torch.zeros(40, dtype=torch.long), 8, shuffle=True,
                          drop_last=True, mean=[0.5], std=[0.5])
    precise_bn(G, D, train, 16, torch.Generator().manual_seed(3), mixed=False, amp=nullcontext())
    # The reference: the same draws from the same generator, statistics computed directly.
    g = torch.Generator().manual_seed(3)
    z = torch.cat([G.noise(8, g) for _ in range(2)])
    h = G.net[0](z[:, :, None, None])  # the input of G's first norm
    torch.testing.assert_close(G.net[1].running_mean, h.mean((0, 2, 3)))
    torch.testing.assert_close(G.net[1].running_var, h.var((0, 2, 3), unbiased=False))
    xs = []
    with train_mode_untouched(G):
        for (x, _), _ in zip(train.replace(generator=g), range(2), strict=False):
            xs += [x, G(G.noise(8, g))]
    with torch.no_grad():
        h = torch.cat([D.features[:3](x) for x in xs])  # D's first norm follows its second conv
    torch.testing.assert_close(D.features[3].running_mean, h.mean((0, 2, 3)))
    torch.testing.assert_close(D.features[3].running_var, h.var((0, 2, 3), unbiased=False),
                               rtol=1e-4, atol=1e-6)


def test_bn_splits_leave_both_networks_as_they_were_and_skip_batch_free_norms():
    from contextlib import nullcontext

    from bench.data.loader import DeviceBatches
    from runners.gan_eval import bn_splits

    settings = {"bs": 8, "eval_bs": 16, "precise_samples": 16, "seed": 0, "mixed": False}
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8)
    train = DeviceBatches(images, torch.zeros(40, dtype=torch.long), 8, shuffle=True,
                          drop_last=True, mean=[0.5], std=[0.5])
    real = torch.randn(20, 1, 32, 32)
    for norm, gen_norm, splits in (("bn", "bn", {"test_precise", "test_batchstats"}),
                                   ("gn", "bn", {"test_precise", "test_batchstats"}),
                                   ("gn", "gn", set())):
        p = pair(1, 32, norm, gen_norm, nf=8, ngf=8)
        p.generator.eval()
        before = {k: v.clone() for k, v in p.state_dict().items()}
        out = bn_splits(p.generator, p.discriminator, torch.randn(12, 100), real, train,
                        nullcontext(), **settings)
        assert set(out) == splits
        for fakes, found in out.values():
            assert fakes.shape == (12, 1, 32, 32) and set(found) == {"d_acc_real", "d_acc_fake"}
        assert not p.generator.training and p.discriminator.training
        assert all(torch.equal(before[k], v) for k, v in p.state_dict().items())


class BatchMean(nn.Module):
    """A 'discriminator' whose score is its batch's mean pixel: the GAN post's symptom, by design."""

    def forward(self, x):
        return x.mean().expand(len(x))


def test_batch_statistics_evaluation_batches_like_the_other_tasks():
    """D's batch-statistics pass over 20 real images at bs 8: the fixed shuffled order (randperm
    from a CPU generator seeded 0), batches 8, 8 and the last 4 filled up with the first 4 of the
    order; each image scored once, returned in the images' own order."""
    from bench.bn_eval import batchstats_order
    from runners.gan_eval import _run

    x = torch.arange(20.0)[:, None, None, None]
    p = torch.randperm(20, generator=torch.Generator().manual_seed(0))

    got = _run(BatchMean(), x, 8, batch_stats=True, order=batchstats_order(20, "cpu"))
    want = torch.empty(20)
    for new, batch in ((p[:8], p[:8]), (p[8:16], p[8:16]), (p[16:], torch.cat((p[16:], p[:4])))):
        want[new] = x[batch].mean()
    torch.testing.assert_close(got, want)
    # In eval mode: plain batches in stored order, 8, 8, 4.
    want_eval = torch.cat([x[i:i + 8].mean().expand(len(x[i:i + 8])) for i in (0, 8, 16)])
    torch.testing.assert_close(_run(BatchMean(), x, 8, batch_stats=False), want_eval)


def test_uniformity_probe_sees_a_batch_level_score():
    from contextlib import nullcontext

    from bench.data.loader import DeviceBatches

    images = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8)
    train = DeviceBatches(images, torch.zeros(64, dtype=torch.long), 8, mean=[0.5], std=[0.5])
    g = pair(1, 32, nf=8, ngf=8).generator
    u = uniformity(g, BatchMean(), train, 4, torch.Generator().manual_seed(0), nullcontext())
    assert u == {"d_uniformity": pytest.approx(1.0), "d_uniformity_real": pytest.approx(1.0),
                 "d_uniformity_fake": pytest.approx(1.0)}


# --- config checks (in-process) -------------------------------------------------------------

TINY = ["task=gan", "dataset=synthetic", "dataset.options.n_train=128", "dataset.options.n_test=64",
        "dataset.options.size=16", "dataset.options.channels=1", "bs=32", "epochs=2",
        "model.nf=8", "model.ngf=8", "task.eval_samples=64", "task.kid_subsets=5",
        "task.uniformity_batches=2", "task.grid=16", "task.features.epochs=3",
        "task.features.bs=16", "task.features.lr=3e-3"]


def gan_config(tmp_path, *overrides, base=TINY):
    return compose_config(*base, f"data_root={tmp_path / 'data'}", f"db.url=sqlite:///{tmp_path}/x.db",
                          *overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    (["task.gen_norm=batchnorm"], f"unknown task.gen_norm 'batchnorm' (allowed: {choices(NORMS)})"),
    (["task.d_batches=joint"], "unknown task.d_batches 'joint' (allowed: mixed, separate)"),
    (["dataset.options.size=30"], "cannot take 30 px images (the GAN's stride-2 stages cannot"),
    (["optim=sgd"], "task.betas is set but optim 'sgd' has no betas"),
    (["task.betas=[0.5]"], "task.betas=[0.5] has 1 entry (allowed: 2 entries)"),
    (["task.g_lr=0"], "task.g_lr=0 is not a positive number"),
    (["task.eval_samples=1"], "task.eval_samples=1 is not allowed (allowed: an integer >= 2)"),
    (["norm=gn", "norm.groups=16"], "norm.groups=16 does not divide a layer's 8 channels"),
    (["task.features.model.name=dcgan_vgg"], "task.features.model.name='dcgan_vgg' is not a "
                                             "classifier (allowed: cnn4, convnet, keras_cnn, resnet18)"),
])
def test_bad_gan_settings_are_user_errors(tmp_path, overrides, message):
    from runners.validate import check_config

    with pytest.raises(UserError) as e:
        check_config(gan_config(tmp_path, *overrides))
    assert message in str(e.value)


def test_a_model_of_another_task_is_a_user_error(tmp_path):
    from runners.validate import check_config

    with pytest.raises(UserError, match=r"model 'conv_ae' is a model for task autoencode, not gan "
                                        r"\(allowed with task=gan: dcgan_vgg\)"):
        check_config(gan_config(tmp_path, "model=conv_ae", base=["task=gan"]))


def test_default_gan_config_passes_the_checks_on_every_dataset_shape(tmp_path):
    from runners.validate import check_config

    for ds in ("digits", "cifar10", "fashion_mnist", "imagenette"):
        cfg = gan_config(tmp_path, f"dataset={ds}", base=["task=gan"])
        assert cfg.model.name == "dcgan_vgg" and cfg.task.gen_norm == "bn"
        check_config(cfg)


# --- the runner in-process ------------------------------------------------------------------

NAMES = {("train", n) for n in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake", "time_s",
                                "images_per_s", "d_uniformity", "d_uniformity_real",
                                "d_uniformity_fake")} | \
        {("test", n) for n in ("cfid", "ckid", "cis", "d_acc_real", "d_acc_fake", "time_s")}
# G or D with batch-statistics layers (every default run: task.gen_norm=bn) also records these.
BN_SPLITS = {(split, n) for split in ("test_precise", "test_batchstats")
             for n in ("cfid", "ckid", "cis", "d_acc_real", "d_acc_fake")}


@pytest.fixture
def one_thread():
    # Two threads on two busy cores are slower than one (the CLI tests pass threads=1 too).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_in_process(tmp_path, *overrides):
    from bench.data import load_dataset
    from runners import gan

    cfg = gan_config(tmp_path, *overrides)
    ds = cfg.dataset
    data = load_dataset(ds.name, cfg.data_root, image_size=ds.image_size, **ds.options)
    logged = []
    torch.manual_seed(cfg.seed)
    gan.run(cfg, data, torch.device("cpu"), lambda e, m, artifacts=None: logged.append((e, m, artifacts)))
    return logged


def test_runner_logs_every_metric_and_the_grid_in_mixed_mode(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # not under Hydra: the grid goes to the current directory
    logged = run_in_process(tmp_path, "task.d_batches=mixed")
    (e0, refs, a0), *epochs = logged
    assert e0 == 0 and set(refs) == {("test", "cis_real"), ("test", "classifier_acc")} and a0 is None
    assert 1 <= refs[("test", "cis_real")] <= 10
    assert [e for e, *_ in epochs] == [1, 2]
    for _, metrics, artifacts in epochs:
        assert set(metrics) == NAMES | BN_SPLITS
        assert all(0 <= metrics[("train", k)] <= 1 for k in ("d_uniformity", "d_acc_real"))
        assert 1 <= metrics[("test", "cis")] <= 10 and metrics[("test", "cfid")] >= 0
        assert artifacts == {"samples": str(tmp_path / "samples.png")}
    assert (tmp_path / "samples.png").stat().st_size > 0


def test_training_numbers_do_not_depend_on_whether_the_classifier_was_cached(tmp_path, monkeypatch,
                                                                              one_thread):
    monkeypatch.chdir(tmp_path)
    first = run_in_process(tmp_path, "epochs=1")  # trains and caches the classifier
    second = run_in_process(tmp_path, "epochs=1")  # reads it
    for (_, a, _), (_, b, _) in zip(first, second, strict=True):
        assert {k: v for k, v in a.items() if k[1] != "time_s" and k[1] != "images_per_s"} == \
               {k: v for k, v in b.items() if k[1] != "time_s" and k[1] != "images_per_s"}


# --- the command line -----------------------------------------------------------------------

CLI = ["dataset=digits", "dataset.train_subset=128", "bs=32", "epochs=1", "threads=1",
       "model.nf=8", "model.ngf=8", "task.eval_samples=64", "task.kid_subsets=5",
       "task.uniformity_batches=2", "task.features.epochs=3", "task.features.bs=16",
       "task.features.lr=3e-3"]


def test_multirun_over_norms_writes_completed_runs_metrics_and_grids(bench, tmp_path):
    proc = bench("-m", "task=gan", "norm=bn,gn,none", *CLI, check_rc=0)
    # The metrics' classifier is trained once, by the sweeper before any job (the joblib
    # version of this, with the jobs in other processes, is the parallel sweep's test below).
    out = proc.stdout + proc.stderr
    assert out.count("trained the classifier for the GAN metrics") == 1
    assert out.index("trained the classifier") < out.index("checked 3 jobs")
    db = tmp_path / "bench.db"
    runs = query(db, "select id, task, model, norm, status from runs order by norm")
    assert [r[1:] for r in runs] == [("gan", "dcgan_vgg", n, "completed") for n in ("bn", "gn", "none")]
    for run_id, *_ in runs:
        rows = query(db, "select epoch, split, name, value from metrics where run_id=?", run_id)
        assert {(s, n) for e, s, n, _ in rows if e == 1} == NAMES | BN_SPLITS
        assert {(s, n) for e, s, n, _ in rows if e == 0} == {("test", "cis_real"),
                                                              ("test", "classifier_acc")}
        assert all(v is not None for *_, v in rows)
        (kind, path, out), = query(db, "select a.kind, a.path, r.output_dir from artifacts a "
                                   "join runs r on r.id = a.run_id where r.id=?", run_id)
        assert kind == "samples" and Path(path) == Path(out) / "samples.png" and Path(path).is_file()
    assert len(list((tmp_path / "data" / "cache" / "gan_features").glob("*.pt"))) == 1


BAD = [
    (["task.gen_norm=batchnorm"], f"unknown task.gen_norm 'batchnorm' (allowed: {choices(NORMS)})"),
    (["dataset=synthetic", "dataset.options.size=30"], "cannot take 30 px images"),
    (["task.features.train=false"], "no classifier for the GAN metrics at "),
    (["task.features.min_acc=1.0", "task.features.epochs=1"],
     "cannot train the classifier for the GAN metrics: test accuracy"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_gan_input_is_one_line_nonzero_and_writes_nothing(bench, tmp_path, one_run_db, args,
                                                             message):
    shutil.copy(one_run_db, tmp_path / "bench.db")
    before = query(tmp_path / "bench.db", "select * from runs")
    proc = bench("task=gan", *CLI, *args)
    assert_user_error(proc, message)
    assert query(tmp_path / "bench.db", "select * from runs") == before


@pytest.mark.slow  # 15 s; the in-process multirun above checks "once, by the sweeper" in make test
def test_a_parallel_sweep_trains_the_metrics_classifier_once_before_any_job(tmp_path):
    # A subprocess: only there do the loky workers' log lines reach the output counted here (in
    # this process they would go to pytest's own stdout, and "once" would not be checked).
    proc = run_bench_subprocess(tmp_path, "-m", "task=gan", "norm=bn,gn", "hydra/launcher=joblib",
                                "hydra.launcher.n_jobs=2", *CLI, check_rc=0)
    out = proc.stdout + proc.stderr
    assert out.count("trained the classifier for the GAN metrics") == 1
    assert out.index("trained the classifier") < out.index("checked 2 jobs")  # in the sweeper
    assert query(tmp_path / "bench.db", "select norm, status from runs order by norm") == [
        ("bn", "completed"), ("gn", "completed")]


def test_a_sweep_whose_metrics_classifier_cannot_be_trained_stops_before_any_job(bench, tmp_path):
    proc = bench("-m", "task=gan", "norm=bn,gn", *CLI, "task.features.min_acc=1.0",
                 "task.features.epochs=1")
    assert_user_error(proc, "cannot train the classifier for the GAN metrics: test accuracy")
    assert not (tmp_path / "bench.db").exists()  # stopped before the database was opened


@pytest.mark.slow
def test_the_issue_command_runs_all_three_tasks(bench, tmp_path):
    bench("-m", "task=classify,autoencode,gan", "norm=bn,gn,none", "epochs=1",
          "dataset.train_subset=512", "threads=1", check_rc=0)
    rows = query(tmp_path / "bench.db", "select task, model, status from runs")
    assert sorted(rows) == sorted([(t, m, "completed") for t, m in (
        ("classify", "convnet"), ("autoencode", "conv_ae"), ("gan", "dcgan_vgg")) for _ in range(3)])


def test_an_artifact_is_recorded_once_per_kind_and_replaced(tmp_path):
    from db import ResultsDB

    with ResultsDB(f"sqlite:///{tmp_path / 'r.db'}") as db:
        run = db.start_run(task="gan", dataset="digits", model="dcgan_vgg", norm="bn", bs=32,
                           lr=2e-4, seed=0, epochs=2, config={}, config_hash="h")
        db.add_artifact(run, "samples", "/a/samples.png")
        db.add_artifact(run, "samples", "/b/samples.png")
    assert query(tmp_path / "r.db", "select run_id, kind, path from artifacts") == [
        (run, "samples", "/b/samples.png")]
