"""Writers of tiny datasets in the exact on-disk formats of the real ones, for tests.

Each writes into a folder (a pytest tmp_path) and returns what a correct reader must give back,
built from the format's description, not from the reader under test.
"""

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 with bytes written as Python 2 `str` (BINSTRING), as the real CIFAR files were.

    Python 3's pickler writes bytes as a call that always loads as bytes; Python 2's str loads
    as bytes with encoding="bytes" (bench's reader) and as str with encoding="latin1"
    (torchvision's), so only this fixture can satisfy both readers, like the real files.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _gradient(n: int, h: int, w: int, c: int, seed: int) -> np.ndarray:
    """(n, h, w, c) uint8 that differ along every axis, so a transpose or a plane mix-up shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def write_cifar(directory: Path, per_batch: int = 4):
    """cifar-10-python.tar.gz with five train batches and a test batch of `per_batch` images.

    Image 0 of data_batch_1 is pure red. Returns (train_hwc, train_y, test_hwc, test_y) with
    images as (N, 32, 32, 3) uint8 in RGB, as PIL would show them.
    """
    images = _gradient(6 * per_batch, 32, 32, 3, seed=1)
    images[0] = RED
    labels = np.arange(6 * per_batch) % 10
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / "cifar-10-python.tar.gz", "w:gz") as tar:
        def add(name: str, obj) -> None:
            blob = py2_pickle(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for b, name in enumerate(names):
            part = slice(b * per_batch, (b + 1) * per_batch)
            # The format: per image, the 1024 red values row by row, then green, then blue.
            rows = np.stack([np.concatenate([im[:, :, ch].ravel() for ch in range(3)])
                             for im in images[part]])
            add(name, {b"batch_label": name.encode(), b"labels": labels[part].tolist(),
                       b"data": rows, b"filenames": [b"x.png"] * per_batch})
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                             b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    n = 5 * per_batch
    return images[:n], labels[:n], images[n:], labels[n:]


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """A gzipped IDX file: magic 0x0000_08_<ndim>, big-endian int32 sizes, uint8 values."""
    magic = 0x800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(directory: Path, n_train: int = 5, n_test: int = 3):
    """The four MNIST .gz files; returns (train_x (N, 28, 28), train_y, test_x, test_y)."""
    directory.mkdir(parents=True, exist_ok=True)
    x = _gradient(n_train + n_test, 28, 28, 1, seed=2)[..., 0]
    y = (np.arange(n_train + n_test) * 3) % 10
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", x[sl])
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", y[sl])
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# wnid -> solid colour; (height, width) of the files, wider and taller than square.
IMAGENETTE_COLOURS = {"n03888257": (200, 30, 40), "n01440764": (20, 180, 60)}
IMAGENETTE_SHAPES = [(48, 64), (64, 40), (50, 50)]


def write_imagenette(directory: Path, per_split: dict | None = None) -> Path:
    """imagenette2-160.tgz with solid-colour JPEGs per wnid, plus one greyscale JPEG in val.

    Train holds 3 images per class, val 2 (the first of n01440764's is greyscale 128).
    """
    per_split = per_split or {"train": 3, "val": 2}
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "imagenette2-160.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, count in per_split.items():
            for wnid, colour in IMAGENETTE_COLOURS.items():
                for i in range(count):
                    h, w = IMAGENETTE_SHAPES[i % len(IMAGENETTE_SHAPES)]
                    grey = split == "val" and wnid == "n01440764" and i == 0
                    image = Image.new("L", (w, h), 128) if grey else Image.new("RGB", (w, h),
                                                                                colour)
                    buf = io.BytesIO()
                    image.save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"imagenette2-160/{split}/{wnid}/{wnid}_{i}.JPEG")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return archive
