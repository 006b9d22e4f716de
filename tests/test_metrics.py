"""The GAN metrics against independent references: the law of total variance computed with
torch.var, scipy's matrix square root for FID, torchmetrics' own InceptionScore, and values
worked out by hand (uniform predictions -> 1, confident and even over K classes -> K)."""

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import compose_config
from torch import nn

from bench.metrics.classifier_scores import ClassifierFeatures, ClassifierScores, inception_score
from bench.metrics.uniformity import batch_uniformity, variance_split
from bench.models import build_model
from bench.norms import make_norm

# --- batch uniformity ---------------------------------------------------------------------


def test_scores_identical_within_each_batch_are_fully_uniform():
    g = torch.Generator().manual_seed(0)
    per_batch = torch.randn(16, 1, generator=g)
    assert batch_uniformity(per_batch.expand(16, 64)) == pytest.approx(1.0, abs=1e-12)


def test_scores_independent_of_the_batch_are_about_zero():
    # E[between] = total / B for independent scores: 1/256 here, far from the 1 of the symptom.
    g = torch.Generator().manual_seed(0)
    u = batch_uniformity(torch.randn(64, 256, generator=g))
    assert 0 < u < 3 / 256


def test_variance_split_is_the_law_of_total_variance():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 32, generator=g, dtype=torch.float64) + 3 * torch.randn(8, 1, generator=g,
                                                                             dtype=torch.float64)
    between, within = variance_split(s)
    assert between + within == pytest.approx(s.var(unbiased=False).item(), rel=1e-12)
    assert between == pytest.approx(s.mean(1).var(unbiased=False).item(), rel=1e-12)
    assert within == pytest.approx(s.var(1, unbiased=False).mean().item(), rel=1e-12)


def test_uniformity_ignores_order_and_the_offset_between_kinds():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(8, 16, generator=g, dtype=torch.float64) + torch.randn(8, 1, generator=g)
    fake = torch.randn(8, 16, generator=g, dtype=torch.float64)
    u = batch_uniformity(real, fake)
    shuffled = real[torch.randperm(8, generator=g)][:, torch.randperm(16, generator=g)]
    assert batch_uniformity(shuffled, fake) == pytest.approx(u, rel=1e-9)
    # D scoring every real image 10 higher than fakes is its job, not uniformity.
    assert batch_uniformity(real + 10, fake) == pytest.approx(u, rel=1e-9)
    b_r, w_r = variance_split(real)
    b_f, w_f = variance_split(fake)
    assert u == pytest.approx((b_r + b_f) / (b_r + w_r + b_f + w_f), rel=1e-12)


def test_uniformity_of_constant_scores_is_undefined():
    assert math.isnan(batch_uniformity(torch.ones(4, 8)))
    with pytest.raises(ValueError, match="batches, batch size"):
        variance_split(torch.ones(8))


# --- classifier inception score -----------------------------------------------------------


def test_inception_score_of_uniform_predictions_is_one():
    assert inception_score(torch.full((100, 10), 0.1)) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_even_predictions_is_the_class_count():
    probs = torch.eye(10).repeat(7, 1)  # 70 one-hot predictions, 7 per class
    assert inception_score(probs) == pytest.approx(10.0, rel=1e-12)
    assert inception_score(torch.eye(10)[[3] * 70]) == pytest.approx(1.0)  # confident, one class


def test_inception_score_matches_torchmetrics():
    from torchmetrics.image.inception import InceptionScore

    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(3)) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = InceptionScore(feature=nn.Identity(), splits=1)
        ref.update(logits)
        expected = ref.compute()[0].item()
    assert inception_score(logits.softmax(1)) == pytest.approx(expected, rel=1e-5)


# --- classifier-feature FID / KID ---------------------------------------------------------


def classifier(name="cnn4", channels=1, size=16):
    torch.manual_seed(0)
    return build_model(name, in_channels=channels, num_classes=10, image_size=size,
                       norm_layer=make_norm("bn")).eval()


def images(n, seed, channels=1, size=16):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al.'s formula with scipy's matrix square root (not torchmetrics' eigenvalues)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_features_are_the_input_of_the_last_layer():
    net = classifier("cnn4")
    x = images(5, 0)
    feats = ClassifierFeatures(net, (1, 16, 16))
    f, logits = feats.features_and_logits(x)
    body = nn.Sequential(*list(net)[:-1])  # everything before the Linear head
    assert torch.allclose(f, body(x), atol=1e-6)
    assert torch.allclose(logits, net(x), atol=1e-6)
    assert feats.num_features == 32
    conv_head = ClassifierFeatures(classifier("convnet"), (1, 16, 16))
    assert conv_head.num_features == 256 * 1 * 1  # convnet's head conv sees 8w x 1 x 1 at 16 px
    feats.train()
    assert not feats.classifier.training  # torchmetrics' .train() must not switch BN


def test_cfid_of_a_set_with_itself_is_zero_and_far_larger_against_noise():
    net = classifier()
    real = images(300, 0) * 0.3 + torch.linspace(-0.5, 0.5, 16)  # a structured "dataset"
    scorer = ClassifierScores(net, real, n_fake=300, kid_subsets=20, kid_subset_size=100)
    same = scorer.scores(real.clone())
    noise = scorer.scores(images(300, 1))
    assert abs(same["cfid"]) < 1e-6
    assert noise["cfid"] > 1.0
    assert abs(same["ckid"]) < 0.2 * noise["ckid"]
    assert same["cis"] == pytest.approx(scorer.real_cis)


def test_cfid_matches_the_formula_with_scipy():
    net = classifier()
    real, fake = images(200, 0), images(150, 1) * 0.5
    scorer = ClassifierScores(net, real, n_fake=150, kid_subsets=5, kid_subset_size=50)
    got = scorer.scores(fake)["cfid"]
    with torch.no_grad():
        fr, ff = scorer.features(real).double().numpy(), scorer.features(fake).double().numpy()
    assert got == pytest.approx(fid_by_hand(fr, ff), rel=1e-3)


def test_ckid_is_reproducible_and_leaves_the_global_generator_alone():
    scorer = ClassifierScores(classifier(), images(100, 0), n_fake=100, kid_subsets=5,
                              kid_subset_size=50)
    state = torch.get_rng_state()
    a, b = scorer.scores(images(100, 1), seed=7), scorer.scores(images(100, 1), seed=7)
    assert a == b
    assert torch.equal(torch.get_rng_state(), state)


# --- the classifier behind the scores -------------------------------------------------------

SMALL = ["task=gan", "dataset=synthetic", "dataset.options.n_train=256",
         "dataset.options.n_test=64", "dataset.options.size=16", "dataset.options.channels=1",
         "task.features.epochs=2", "task.features.min_acc=0.5"]


def gan_config(tmp_path, *overrides):
    return compose_config(*SMALL, f"data_root={tmp_path}", *overrides)


def load(cfg):
    from bench.data import load_dataset

    ds = cfg.dataset
    return load_dataset(ds.name, cfg.data_root, image_size=ds.image_size, **ds.options)


def test_classifier_is_trained_once_cached_and_keyed_by_its_config(tmp_path, monkeypatch):
    from bench.metrics import feature_classifier as fc
    from runners import gan_features

    cfg = gan_config(tmp_path)
    data = load(cfg)
    state = torch.get_rng_state()
    model, acc = gan_features.feature_classifier(cfg, data, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)  # the run's random stream is untouched
    assert acc >= 0.5 and not model.training
    path = gan_features.cache_path(cfg, 16)
    assert path.parent == tmp_path / "cache" / "gan_features" and path.name.startswith("synthetic-16px-")
    monkeypatch.setattr(fc, "train", lambda *a: pytest.fail("trained again instead of reading"))
    again, acc2 = gan_features.feature_classifier(cfg, data, torch.device("cpu"))
    assert acc2 == acc
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(again(x), model(x))
    # What changes the weights changes the file; what does not, does not.
    assert gan_features.cache_path(gan_config(tmp_path, "task.features.epochs=3"), 16) != path
    assert gan_features.cache_path(gan_config(tmp_path, "dataset.train_subset=128"), 16) != path
    assert gan_features.cache_path(gan_config(tmp_path, "task.features.min_acc=0.1", "norm=gn"), 16) == path


def test_classifier_that_stays_below_min_acc_or_is_missing_is_a_user_error(tmp_path):
    from bench.errors import UserError
    from runners import gan_features

    cfg = gan_config(tmp_path, "task.features.min_acc=1.0", "task.features.epochs=1",
                     "task.features.lr=1e-6")
    with pytest.raises(UserError, match=r"cannot train the classifier for the GAN metrics: test "
                                        r"accuracy .* is below task.features.min_acc=1.0"):
        gan_features.feature_classifier(cfg, load(cfg), torch.device("cpu"))
    assert not gan_features.cache_path(cfg, 16).exists()
    cfg = gan_config(tmp_path, "task.features.train=false")
    with pytest.raises(UserError, match="no classifier for the GAN metrics at .* and task.features"):
        gan_features.check(cfg, 1, 16, 10)
    with pytest.raises(UserError, match="'resnet9' is not a classifier"):
        gan_features.check(gan_config(tmp_path, "task.features.model.name=resnet9"), 1, 16, 10)
    with pytest.raises(UserError, match="'conv_ae' is not a classifier"):
        gan_features.check(gan_config(tmp_path, "task.features.model.name=conv_ae"), 1, 16, 10)
