"""Gradient accumulation: equal to one big step without batch statistics, not with them."""

import copy

import torch
from conftest import compose_config
from torch import nn

from bench.data.loader import DeviceBatches
from runners import classify, single_model


class Data:
    """A `bench.data.ImageData`-like batch of 8 images, labels of 4 classes."""

    def __init__(self, x, y):
        self.train_x = self.test_x = x
        self.train_y = self.test_y = y
        self.channels, self.image_size, self.num_classes = x.shape[1], x.shape[2], 4


def step(model, k, x, y, monkeypatch):
    """One training step of the classify runner's loop (`runners.single_model.run`, epochs=1,
    bs = all 8 images, SGD) with accum_steps=k, on a copy of `model`: the loop as it runs, with
    the model and the batches replaced by these."""
    model = copy.deepcopy(model)
    monkeypatch.setattr(single_model, "model_from_config", lambda *a: model)
    monkeypatch.setattr(single_model, "score_bn_modes", lambda *a, **kw: {})
    monkeypatch.setattr(single_model, "batches_from_config", lambda cfg, data, device, gen, signed:
                        (DeviceBatches(x, y, 8, mean=[0.0], std=[1 / 255]),) * 2)
    cfg = compose_config("optim=sgd", "lr=0.1", "bs=8", f"accum_steps={k}", "epochs=1",
                         "amp=false", "channels_last=false", "progress=false", "bn_eval.modes=false")
    single_model.run(cfg, Data(x, y), torch.device("cpu"), lambda epoch, metrics: None,
                     classify.OBJECTIVE)
    return model


def test_accumulation_equals_one_step_without_batch_statistics(monkeypatch):
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(4))
    model(x)  # materialise the lazy layer
    one, four = step(model, 1, x, y, monkeypatch), step(model, 4, x, y, monkeypatch)
    for a, b in zip(one.parameters(), four.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_batchnorm_sees_each_micro_batch_alone(monkeypatch):
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(4))
    model(x)
    one, four = step(model, 1, x, y, monkeypatch), step(model, 4, x, y, monkeypatch)
    assert int(four[1].num_batches_tracked) - int(model[1].num_batches_tracked) == 4
    assert int(one[1].num_batches_tracked) - int(model[1].num_batches_tracked) == 1
    assert not torch.allclose(one[0].weight, four[0].weight)  # statistics of 2 vs 8 samples
