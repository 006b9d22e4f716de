"""The autoencode task: the autoencoder post's autoencoder (layers and parameter count worked out
by hand), every dataset's shape, the post's distance ratio from a database, and the real command
line."""

import math

import pytest
import torch
from conftest import assert_every_parameter_learns, compose_config, query
from torch import nn

from bench.models import build_model
from bench.norms import NORMS, make_norm


def ae(c=3, size=32, norm="none", **kw):
    return build_model("conv_ae", in_channels=c, num_classes=10, image_size=size,
                       norm_layer=make_norm(norm), **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_conv_ae_is_the_autoencoder_posts_autoencoder():
    m = ae()
    convs = [(type(l).__name__[:6], l.in_channels, l.out_channels, l.kernel_size[0], l.stride[0],
              l.padding[0]) for l in m.modules() if isinstance(l, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs == [
        ("Conv2d", 3, 64, 4, 2, 1), ("Conv2d", 64, 128, 4, 2, 1), ("Conv2d", 128, 256, 4, 2, 1),
        ("Conv2d", 256, 256, 4, 2, 1), ("Conv2d", 256, 512, 2, 1, 0),
        ("ConvTr", 512, 512, 2, 1, 0), ("ConvTr", 512, 256, 4, 2, 1), ("ConvTr", 256, 128, 4, 2, 1),
        ("ConvTr", 128, 64, 4, 2, 1), ("ConvTr", 64, 3, 4, 2, 1)]
    # weights + biases by hand: encoder 3,136 + 131,200 + 524,544 + 1,048,832 + 524,800;
    # decoder 1,049,088 + 2,097,408 + 524,416 + 131,136 + 3,075: the post's "about 6.0 M".
    assert n_params(m) == 6_037_635
    # BN after every conv but the latent conv and the last: 2 x (64+128+256+256 + 512+256+128+64).
    assert n_params(ae(norm="bn")) == 6_037_635 + 2 * 1_664
    # Block order conv -> norm -> ReLU*sqrt(2); no norm or activation after the latent conv or
    # the last layer.
    kinds = [type(l).__name__ for l in (*m.encoder, *m.decoder)]
    assert kinds[:3] == ["Conv2d", "Identity", "ScaledReLU"]
    assert kinds[12:16] == ["Conv2d", "ConvTranspose2d", "Identity", "ScaledReLU"]
    assert kinds[-1] == "ConvTranspose2d"
    b = ae(norm="bn")
    assert sum(isinstance(l, nn.BatchNorm2d) for l in b.modules()) == 8


def test_conv_ae_uses_the_randn_fan_in_init():
    m = ae(width=16)
    for layer in m.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            assert layer.weight.std().item() == pytest.approx(fan_in**-0.5, rel=0.15)
            assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize(("c", "size"), [(1, 28), (1, 32), (3, 32), (3, 96), (1, 8), (3, 64)])
def test_reconstruction_has_the_input_shape_for_every_dataset(c, size):
    m = ae(c, size, "bn", width=8)
    x = torch.randn(2, c, size, size)
    assert m(x).shape == x.shape
    assert m.encode(x).shape == (2, 64, 1, 1)  # the latent is 8w x 1 x 1 at every size


def test_28px_runs_through_the_32px_network_and_only_its_own_pixels_come_back():
    m28, m32 = ae(1, 28, width=8), ae(1, 32, width=8)
    m28.load_state_dict(m32.state_dict())  # same shapes: 28 px is padded to 32
    x = torch.randn(2, 1, 28, 28)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.allclose(m28(x), m32(padded)[..., 2:30, 2:30], atol=1e-6)
    with pytest.raises(ValueError, match="built for 28 px"):
        m28(padded)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_any_norm_fits_the_autoencoder(norm):
    torch.manual_seed(0)
    m = ae(3, 32, norm, width=8)
    # A batch of 8: with 2, BN over the 1x1 latent outputs +-1 whatever its input.
    x = torch.randn(8, 3, 32, 32)
    out = m(x)
    assert out.shape == x.shape
    nn.functional.mse_loss(out, x).backward()
    assert_every_parameter_learns(m)


# --- the autoencoder post's distance ratio from the database -----------------------------------


def results_db(tmp_path, rows):
    """A database of completed runs: rows of (norm, seed, bs, [test mse per epoch])."""
    from db import ResultsDB

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ResultsDB(url) as db:
        for norm, seed, bs, curve in rows:
            run = db.start_run(task="autoencode", dataset="cifar10", model="conv_ae", norm=norm,
                               bs=bs, lr=3e-4, seed=seed, epochs=len(curve), config={},
                               config_hash=f"{norm}{seed}{bs}")
            for epoch, mse in enumerate(curve, 1):
                db.log_epoch(run, epoch, {("test", "mse"): mse, ("train", "mse"): 1.0})
            db.finish(run, "completed")
    return url


def test_distance_ratio_is_the_seeds_number_from_final_test_mse(tmp_path):
    from analysis.distance import distance_ratio

    url = results_db(tmp_path, [("bn", 0, 128, [0.02, 0.007543]), ("none", 0, 128, [0.03, 0.005948]),
                                ("gn", 0, 128, [0.01, 0.004]), ("gn", 1, 128, [0.01, 0.006])])
    assert distance_ratio(url, "bn", "none") == pytest.approx(1.1261249325984088, rel=1e-12)
    # Seeds average their MSEs before the square root: gn's mean is 0.005.
    assert distance_ratio(url, "gn", "none") == pytest.approx(math.sqrt(0.005 / 0.005948))
    with pytest.raises(ValueError, match="no completed autoencode run with norm 'none'"):
        distance_ratio(url, "gn", "none", seed=1)  # a filter applies to both norms


def test_distance_ratio_refuses_to_mix_experiments_or_invent_runs(tmp_path):
    from analysis.distance import distance_ratio

    url = results_db(tmp_path, [("bn", 0, 128, [0.007]), ("none", 0, 128, [0.006]),
                                ("bn", 0, 512, [0.005])])
    with pytest.raises(ValueError, match=r"differ in bs \(128, 512\): pass bs="):
        distance_ratio(url, "bn", "none")
    assert distance_ratio(url, "bn", "none", bs=128) == pytest.approx(math.sqrt(7 / 6))
    with pytest.raises(ValueError, match="no completed autoencode run with norm 'ln'"):
        distance_ratio(url, "ln", "none")
    with pytest.raises(ValueError, match="unknown filter 'batch'"):
        distance_ratio(url, "bn", "none", batch=128)


# --- configuration and the command line -----------------------------------------------------


def test_a_model_of_another_task_is_a_user_error(tmp_path):
    from bench.errors import UserError
    from runners.validate import check_config

    def check(*overrides):
        check_config(compose_config(*overrides, f"db.url=sqlite:///{tmp_path}/x.db"))

    check("task=autoencode")  # its default model
    with pytest.raises(UserError, match=r"model 'convnet' is a model for task classify, not "
                                        r"autoencode \(allowed with task=autoencode: conv_ae\)"):
        check("task=autoencode", "model=convnet")
    with pytest.raises(UserError, match=r"allowed with task=classify: cnn4, convnet, keras_cnn, resnet18"):
        check("task=classify", "model=conv_ae")


def test_multirun_over_norms_writes_completed_runs_and_digits_mse_falls(bench, tmp_path):
    bench("-m", "task=autoencode", "norm=bn,gn,none", "dataset=digits", "epochs=3", "bs=32",
          "model.width=8", "dataset.train_subset=256", "threads=1", check_rc=0)
    db = tmp_path / "bench.db"
    runs = query(db, "select id, norm, model, status, epochs_done from runs order by norm")
    assert [r[1:] for r in runs] == [(n, "conv_ae", "completed", 3) for n in ("bn", "gn", "none")]
    names = {("train", "loss"), ("train", "mse"), ("train", "lr"), ("train", "time_s"),
             ("train", "images_per_s"),
             ("test", "loss"), ("test", "mse"), ("test", "time_s")}
    for run_id, norm, *_ in runs:
        rows = query(db, "select epoch, split, name, value from metrics where run_id=?", run_id)
        # BN runs are also evaluated with PreciseBN and with batch statistics (bench.bn_eval).
        extra = {(s, n) for s in ("test_precise", "test_batchstats") for n in ("loss", "mse")}
        assert {(s, n) for e, s, n, _ in rows if e == 1} == names | (extra if norm == "bn" else set())
        assert all(v is not None and v >= 0 for *_, v in rows)
        by = {(e, s, n): v for e, s, n, v in rows}
        assert all(by[(e, "test", "loss")] == by[(e, "test", "mse")] for e in (1, 2, 3))
        curve = [by[(e, "test", "mse")] for e in (1, 2, 3)]
        assert curve[0] > curve[1] > curve[2], (norm, curve)
