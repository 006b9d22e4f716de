"""bench.data against the formats' own descriptions, torchvision's readers and hand-made values.

Every dataset file here is a tiny one written by `dataset_files` in the real format; nothing is
downloaded (a failing download is simulated).
"""

import dataclasses
import gzip
import shutil
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.utils
import torchvision.transforms.v2.functional as TF
from dataset_files import IMAGENETTE_COLOURS, write_cifar, write_idx, write_imagenette, write_mnist
from torchvision.datasets.mnist import read_image_file

from bench.data import (
    DATASETS,
    ImageData,
    cifar10,
    dataset_shape,
    dataset_train_size,
    load_dataset,
    mnist,
)
from bench.data.resize import resize_and_crop, resize_square
from bench.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_registry_has_the_contract_names():
    assert set(DATASETS) == {"cifar10", "mnist", "fashion_mnist", "imagenette", "digits",
                             "synthetic"}


# --- CIFAR-10 -------------------------------------------------------------------------------

def test_cifar10_reads_the_tar_gz_like_torchvision(tmp_path, monkeypatch):
    train_hwc, train_y, test_hwc, test_y = write_cifar(tmp_path / "cifar10")
    data = load_dataset("cifar10", tmp_path, download=False)
    assert isinstance(data, ImageData) and data.num_classes == 10
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_x.is_contiguous() and (data.channels, data.image_size) == (3, 32)
    assert data.train_x[0, :, 5, 7].tolist() == [255, 0, 0]  # pure red: planes in RGB order
    assert torch.equal(data.train_x.permute(0, 2, 3, 1), torch.from_numpy(train_hwc))
    assert data.train_y.tolist() == train_y.tolist() and data.test_y.tolist() == test_y.tolist()
    # torchvision's reader, with its md5 check of the real files switched off, as a reference.
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path / "tv", filter="data")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    reference = torchvision.datasets.cifar.CIFAR10(tmp_path / "tv", train=False)
    assert torch.equal(data.test_x.permute(0, 2, 3, 1), torch.from_numpy(reference.data))
    assert data.test_y.tolist() == reference.targets


def test_cifar10_reads_the_extracted_folder_and_resizes(tmp_path):
    write_cifar(tmp_path / "a" / "cifar10")
    folder = tmp_path / "b" / "cifar10"
    with tarfile.open(tmp_path / "a" / "cifar10" / "cifar-10-python.tar.gz") as tar:
        tar.extractall(folder, filter="data")
    from_tar = load_dataset("cifar10", tmp_path / "a", download=False, image_size=16)
    from_dir = load_dataset("cifar10", tmp_path / "b", download=False, image_size=16)
    assert from_tar.train_x.shape == (20, 3, 16, 16)
    assert torch.equal(from_tar.train_x, from_dir.train_x)
    assert (tmp_path / "a" / "cache" / "cifar10-16.pt").is_file()


def test_cache_is_read_on_the_second_load_and_written_atomically(tmp_path, monkeypatch):
    write_cifar(tmp_path / "cifar10")
    first = load_dataset("cifar10", tmp_path)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["cifar10-32.pt"]  # no temp file

    def fail(*args, **kwargs):
        raise AssertionError("read the files although the cache was there")

    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], read=fail))
    second = load_dataset("cifar10", tmp_path, train_subset=5)  # subsets share the cache
    assert torch.equal(second.train_x, first.train_x[torch.randperm(20, generator=
                                                      torch.Generator().manual_seed(0))[:5]])


def test_interrupted_cache_write_leaves_nothing_and_bad_cache_is_rebuilt(tmp_path, monkeypatch):
    write_cifar(tmp_path / "cifar10")

    def interrupted(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(torch, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            load_dataset("cifar10", tmp_path)
    assert list((tmp_path / "cache").iterdir()) == []
    (tmp_path / "cache" / "cifar10-32.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert load_dataset("cifar10", tmp_path).train_x.shape == (20, 3, 32, 32)


# --- MNIST and Fashion-MNIST ----------------------------------------------------------------

def test_mnist_idx_matches_torchvision_reader(tmp_path):
    train_x, train_y, test_x, test_y = write_mnist(tmp_path / "mnist")
    data = load_dataset("mnist", tmp_path, download=False)
    assert data.train_x.shape == (5, 1, 28, 28) and data.test_x.shape == (3, 1, 28, 28)
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(train_x))
    assert data.train_y.tolist() == train_y.tolist() and data.test_y.tolist() == test_y.tolist()
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress((tmp_path / "mnist" / f"{plain.name}.gz").read_bytes()))
    assert torch.equal(data.test_x[:, 0], read_image_file(str(plain)))
    assert load_dataset("mnist", tmp_path, image_size=32).train_x.shape == (5, 1, 32, 32)


@pytest.mark.parametrize("damage", ["magic", "truncated", "not_gzip"])
def test_corrupt_idx_names_the_file(tmp_path, damage):
    write_mnist(tmp_path / "fashion_mnist")
    path = tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz"
    if damage == "magic":
        write_idx(path, np.zeros((5, 28, 28)), magic=0x801)
    elif damage == "truncated":
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    else:
        path.write_bytes(b"\x00\x00\x08\x03 plain bytes")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz") as e:
        load_dataset("fashion_mnist", tmp_path, download=False)
    assert "\n" not in str(e.value)


def test_fashion_mnist_from_the_debian_package(tmp_path):
    if not DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} absent (Debian package dataset-fashion-mnist)")
    data = load_dataset("fashion_mnist", tmp_path, download=False)
    assert data.train_x.shape == (60_000, 1, 28, 28) and data.test_x.shape == (10_000, 1, 28, 28)
    assert data.train_y.bincount().tolist() == [6000] * 10
    assert dataset_train_size("fashion_mnist") == len(data.train_y)


# --- Imagenette -----------------------------------------------------------------------------

def test_imagenette_from_tgz_solid_colours_and_grey(tmp_path):
    write_imagenette(tmp_path / "imagenette")
    with pytest.raises(UserError, match="needs image_size"):
        load_dataset("imagenette", tmp_path, download=False)
    data = load_dataset("imagenette", tmp_path, download=False, image_size=24)
    assert data.train_x.shape == (6, 3, 24, 24) and data.test_x.shape == (4, 3, 24, 24)
    assert data.num_classes == 2 and data.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    wnids = sorted(IMAGENETTE_COLOURS)  # labels are the sorted wnids
    for x, y in zip(data.train_x, data.train_y, strict=True):
        colour = torch.tensor(IMAGENETTE_COLOURS[wnids[y]]).view(3, 1, 1)
        assert (x.int() - colour).abs().max() <= 4  # JPEG of a solid colour: off by a few
    assert (data.test_x[0].int() - 128).abs().max() <= 2  # greyscale file, forced to RGB
    assert sorted(p.name for p in (tmp_path / "imagenette").iterdir()) == [
        "imagenette2-160", "imagenette2-160.tgz"]  # extracted once, no temp folder left
    (tmp_path / "imagenette" / "imagenette2-160.tgz").unlink()
    shutil.rmtree(tmp_path / "cache")
    again = load_dataset("imagenette", tmp_path, download=False, image_size=24)
    assert torch.equal(again.train_x, data.train_x)


def test_resize_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    wide = torch.randint(0, 256, (3, 30, 47), dtype=torch.uint8, generator=g)
    reference = TF.center_crop(TF.resize(wide, 20, antialias=True), [20, 20])
    assert (resize_and_crop(wide, 20).int() - reference.int()).abs().max() <= 1
    square = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=g)
    reference = TF.resize(square, [32, 32], antialias=True)
    assert (resize_square(square, 32).int() - reference.int()).abs().max() <= 1


# --- Missing files and failed downloads -----------------------------------------------------

def test_missing_without_download_says_what_to_put_where(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", tmp_path, download=False)
    message = str(e.value)
    assert str(tmp_path / "cifar10") in message and "cifar-10-python.tar.gz" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "\n" not in message


def test_unreachable_download_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "MIRRORS", ["http://127.0.0.1:9/"])
    start = time.perf_counter()
    with pytest.raises(UserError, match="download failed") as e:
        load_dataset("cifar10", tmp_path)
    assert time.perf_counter() - start < 3 and "\n" not in str(e.value)
    assert str(tmp_path / "cifar10") in str(e.value)
    assert not (tmp_path / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_failed_download_removes_the_partial_file(tmp_path, monkeypatch):
    def partial(url, root, filename, md5):
        (Path(root) / filename).write_bytes(b"half")
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", partial)
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIRS", [])
    with pytest.raises(UserError, match="no route.*dataset-fashion-mnist"):
        load_dataset("fashion_mnist", tmp_path)
    assert list((tmp_path / "fashion_mnist").iterdir()) == []


def test_download_puts_files_where_the_reader_looks(tmp_path, monkeypatch):
    source = write_imagenette(tmp_path / "served")

    def fake(url, root, filename, md5):
        assert url.endswith("/imagenette2-160.tgz") and md5
        shutil.copy(source, Path(root) / filename)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake)
    data = load_dataset("imagenette", tmp_path, image_size=16)
    assert data.train_x.shape == (6, 3, 16, 16)


# --- digits and synthetic -------------------------------------------------------------------

def test_digits_split_values_and_resize(tmp_path):
    from sklearn.datasets import load_digits

    data = load_dataset("digits", tmp_path / "a")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert dataset_train_size("digits") == len(data.train_y)
    target = load_digits().target
    both = torch.cat([data.train_y, data.test_y])
    assert both.bincount().tolist() == np.bincount(target).tolist()  # a split of the whole
    share = data.test_y.bincount().double() / torch.from_numpy(np.bincount(target))
    assert ((share - 360 / 1797).abs() < 0.02).all()  # stratified: 20% of every class
    # 0..16 scaled to 0..255: 16 -> 255, 8 -> 127.5 -> 128 (half to even), 1 -> 15.9 -> 16.
    allowed = {round(v * 255 / 16) for v in range(17)} | {128}
    assert set(data.train_x.unique().tolist()) <= allowed and data.train_x.max() == 255
    again = load_dataset("digits", tmp_path / "b")  # a fresh root: no cache, same split
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    big = load_dataset("digits", tmp_path / "a", image_size=32)
    assert big.train_x.shape == (1437, 1, 32, 32) and big.image_size == 32


def test_synthetic_is_deterministic_and_learnable(tmp_path):
    data = load_dataset("synthetic", tmp_path, n_train=300, n_test=100, channels=2, size=12,
                        num_classes=3, seed=5)
    assert data.train_x.shape == (300, 2, 12, 12) and data.num_classes == 3
    assert dataset_train_size("synthetic", n_train=300) == len(data.train_y)
    assert data.train_y.bincount().tolist() == [100, 100, 100]
    same = load_dataset("synthetic", tmp_path, n_train=300, n_test=100, channels=2, size=12,
                        num_classes=3, seed=5)
    assert torch.equal(same.train_x, data.train_x) and torch.equal(same.test_y, data.test_y)
    other = load_dataset("synthetic", tmp_path, n_train=300, n_test=100, channels=2, size=12,
                         num_classes=3, seed=6)
    assert not torch.equal(other.train_x, data.train_x)
    # Learnable: the nearest class mean of the training set labels most test images right.
    x, t = data.train_x.flatten(1).float(), data.test_x.flatten(1).float()
    means = torch.stack([x[data.train_y == k].mean(0) for k in range(3)])
    accuracy = (torch.cdist(t, means).argmin(1) == data.test_y).float().mean()
    assert accuracy > 0.9
    assert load_dataset("synthetic", tmp_path, image_size=16).train_x.shape == (512, 3, 16, 16)
    assert not (tmp_path / "cache").exists()  # cheap to make: never cached


# --- options, names, subsets ----------------------------------------------------------------

def test_unknown_names_and_options_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"^unknown dataset 'foo' \(allowed: cifar10, digits, "
                                        r"fashion_mnist, imagenette, mnist, synthetic\)$"):
        load_dataset("foo", tmp_path)
    with pytest.raises(UserError, match=r"unknown option 'n_train' for dataset 'digits' "
                                        r"\(allowed: test_subset, train_subset\)"):
        load_dataset("digits", tmp_path, n_train=5)
    with pytest.raises(UserError, match="unknown dataset 'foo'"):
        dataset_train_size("foo")
    with pytest.raises(UserError, match="size=1 is out of range"):
        dataset_train_size("synthetic", size=1)
    with pytest.raises(UserError, match="must be an integer"):
        load_dataset("synthetic", tmp_path, n_train=2.5)
    with pytest.raises(UserError, match="image_size=0"):
        load_dataset("synthetic", tmp_path, image_size=0)


def test_subsets_are_nested_prefixes_of_one_permutation(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=9, n_test=6)
    full = load_dataset("mnist", tmp_path)
    small = load_dataset("mnist", tmp_path, train_subset=3, test_subset=2)
    larger = load_dataset("mnist", tmp_path, train_subset=5)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(small.train_x, full.train_x[perm[:3]])
    assert torch.equal(larger.train_y[:3], small.train_y) and len(small.test_y) == 2
    assert dataset_train_size("mnist", train_subset=3) == len(small.train_y)
    assert dataset_train_size("cifar10", image_size=64) == 50_000
    with pytest.raises(UserError, match="train_subset=10 is larger than the 9 train images"):
        load_dataset("mnist", tmp_path, train_subset=10)
    with pytest.raises(UserError, match="larger than the 1437"):
        dataset_train_size("digits", train_subset=2000)
    with pytest.raises(UserError, match="at least 1"):
        dataset_train_size("digits", train_subset=0)


def test_truncated_cifar_archive_names_the_file(tmp_path):
    write_cifar(tmp_path / "cifar10")
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(UserError, match=f"cannot read {archive}.*delete it"):
        load_dataset("cifar10", tmp_path, download=False)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("digits", {}), ("digits", {"image_size": 32}),
    ("synthetic", {"channels": 1, "size": 12, "num_classes": 4, "n_train": 20, "n_test": 8}),
    ("cifar10", {}), ("mnist", {"image_size": 32}), ("imagenette", {"image_size": 24}),
])
def test_dataset_shape_without_reading_equals_what_loading_gives(tmp_path, name, kwargs):
    if name in ("cifar10", "mnist"):
        (write_cifar if name == "cifar10" else write_mnist)(tmp_path / name)
    if name == "imagenette":
        write_imagenette(tmp_path / name)
    data = load_dataset(name, tmp_path, download=False, **kwargs)
    loaded = (data.channels, data.image_size, data.num_classes)
    if name == "imagenette":  # the fixture holds 2 of the 10 classes
        loaded = loaded[:2] + (10,)
    assert dataset_shape(name, **kwargs) == loaded
