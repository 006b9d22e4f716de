"""The device-side data path against per-image references written with plain loops."""

import pytest
import torch

from bench.data.loader import DeviceBatches, random_flip, random_shift


def images(n=16, c=3, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def shifted(img, dy, dx):
    """img (C, H, W) moved down by dy and right by dx, zeros coming in: the reference."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    for i in range(h):
        for j in range(w):
            si, sj = i - dy, j - dx
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = img[:, si, sj]
    return out


def test_random_shift_matches_a_per_image_reference_and_covers_the_range():
    x = images(n=200, h=6, w=5)
    y = random_shift(x, 2, torch.Generator().manual_seed(1))
    seen = set()
    for a, b in zip(x, y, strict=True):
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.equal(shifted(a, dy, dx), b)]
        assert hits, "output is not a shift of its input within 2 px"
        seen.update(hits)
    assert len(seen) == 25  # every (dy, dx) in [-2, 2]^2 occurs


def test_random_flip_mirrors_about_half():
    x = images(n=400)
    y = random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(x, y, strict=True)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(x, y, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 150 < sum(mirrored) < 250


def test_normalisation_and_one_pass_over_every_sample():
    x, labels = images(n=10), torch.arange(10)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    batches = DeviceBatches(x, labels, 4, mean=mean, std=std, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    assert len(batches) == 3
    seen = []
    for xb, yb in batches:
        for img, label in zip(xb, yb, strict=True):
            ref = (x[label].float() / 255 - torch.tensor(mean)[:, None, None]) \
                / torch.tensor(std)[:, None, None]
            torch.testing.assert_close(img, ref)
            seen.append(int(label))
    assert sorted(seen) == list(range(10))


def test_drop_last_and_shuffle_per_epoch():
    x, labels = images(n=10), torch.arange(10)
    batches = DeviceBatches(x, labels, 4, mean=[0.5], std=[0.5], shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
    assert len(batches) == 2
    epochs = [torch.cat([y for _, y in batches]).tolist() for _ in range(3)]
    assert all(len(e) == 8 and len(set(e)) == 8 for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_same_generator_seed_same_batches():
    x, labels = images(n=32), torch.arange(32)

    def first(seed):
        b = DeviceBatches(x, labels, 8, mean=[0.5], std=[0.5], shuffle=True, flip=True, shift=2,
                          generator=torch.Generator().manual_seed(seed))
        return next(iter(b))

    a, b, c = first(3), first(3), first(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_channels_last_layout_and_batch_too_large():
    x, labels = images(n=8), torch.arange(8)
    xb, _ = next(iter(DeviceBatches(x, labels, 4, mean=[0.5], std=[0.5], channels_last=True)))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="batch size 9 > 8"):
        DeviceBatches(x, labels, 9, mean=[0.5], std=[0.5])


def test_homogeneous_batches_hold_one_or_two_classes_and_cover_the_epoch():
    labels = torch.arange(60) % 5  # 5 classes of 12, interleaved
    x = images(n=60)
    b = DeviceBatches(x, labels, 8, mean=[0.5], std=[0.5], shuffle=True, composition="homogeneous",
                      generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        seen, classes = [], []
        for xb, yb in b:
            classes.append(len(set(yb.tolist())))
            # every image still travels with its own label
            for img, lab in zip(xb, yb, strict=True):
                matches = [i for i in range(60) if labels[i] == lab and torch.allclose(
                    (x[i].float() / 255 - 0.5) / 0.5, img, atol=1e-6)]
                seen.extend(matches[:1])
        assert max(classes) <= 2  # classes of 12 >= bs 8: a batch straddles one boundary at most
        assert sorted(seen) == list(range(60))  # one pass over every sample
    random_classes = [len(set(yb.tolist())) for _, yb in b.replace(composition="random")]
    assert max(random_classes) > 2  # the default mixes classes


def test_filled_batches_score_every_index_once_in_batches_of_equal_size():
    from bench.data.loader import filled_batches

    order = torch.tensor([5, 3, 0, 1, 4, 2, 6])
    got = [(idx.tolist(), k) for idx, k in filled_batches(order, 3)]
    assert got == [([5, 3, 0], 3), ([1, 4, 2], 3), ([6, 5, 3], 1)]
    assert [(idx.tolist(), k) for idx, k in filled_batches(order, 7)] == [(order.tolist(), 7)]
    assert [(idx.tolist(), k) for idx, k in filled_batches(order, 50)] == [(order.tolist(), 7)]


def test_fill_last_batches_yield_extra_images_but_only_the_new_labels():
    x = torch.arange(7, dtype=torch.uint8).reshape(7, 1, 1, 1)
    batches = DeviceBatches(x, torch.arange(7), 3, mean=[0.0], std=[1 / 255], fill_last=True,
                            order=torch.tensor([6, 5, 4, 3, 2, 1, 0]))
    got = [(xb.flatten().tolist(), yb.tolist()) for xb, yb in batches]
    assert len(batches) == 3
    assert got == [([6, 5, 4], [6, 5, 4]), ([3, 2, 1], [3, 2, 1]), ([0, 6, 5], [0])]
