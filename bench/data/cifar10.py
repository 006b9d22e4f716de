"""CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test, 32x32 RGB, ten classes.

Read straight from `cifar-10-python.tar.gz` (or its extracted `cifar-10-batches-py/`): six pickled
batches, each a dict with b"data" (uint8, N x 3072: the R plane, then G, then B, each 32 rows of
32) and b"labels" (N ints).
"""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError

from .fetch import find_or_download
from .source import Source, Tensors

ARCHIVE = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]


def _raw_batches(directory: Path) -> dict[str, tuple[str, bytes]]:
    """{batch name: (where it came from, pickled bytes)} from the folder, else the archive."""
    names = TRAIN_BATCHES + TEST_BATCHES
    folder, archive = directory / FOLDER, directory / ARCHIVE
    if folder.is_dir():
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise UserError(f"{folder} lacks {', '.join(missing)}")
        return {n: (str(folder / n), (folder / n).read_bytes()) for n in names}
    out = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for n in names:
                member = f"{FOLDER}/{n}"
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise UserError(f"{archive} has no file {member}")
                out[n] = (f"{archive}:{member}", f.read())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot read {archive} (corrupt or truncated? delete it to download it "
                        f"again): {e}") from e
    return out


def _parse(where: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images (N, 3, 32, 32) uint8, labels (N,) int64."""
    try:
        # CIFAR's own format is a pickle (torchvision reads it the same way): trusted files only.
        batch = pickle.loads(raw, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:
        raise UserError(f"cannot read CIFAR-10 batch {where}: {type(e).__name__}: {e}") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise UserError(f"CIFAR-10 batch {where} has data {data.shape} and labels "
                        f"{labels.shape}; expected (N, 3072) and (N,)")
    # Each row holds whole planes, so a plain reshape gives channels-first images.
    return data.reshape(-1, 3, 32, 32), labels


def read(directory: Path, *, download: bool, image_size: int) -> Tensors:
    """Images at 32x32 (the caller resizes): train (50000, 3, 32, 32), test (10000, 3, 32, 32)."""
    find_or_download(
        "cifar10", directory, download=download, files=[(ARCHIVE, MD5)], mirrors=MIRRORS,
        present=lambda: (directory / FOLDER).is_dir() or (directory / ARCHIVE).is_file())
    raw = _raw_batches(directory)
    out: Tensors = {"num_classes": 10}
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        parts = [_parse(*raw[n]) for n in names]
        out[f"{split}_x"] = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        out[f"{split}_y"] = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return out


SOURCE = Source(read=read, train_size=50_000, native_size=32, channels=3, num_classes=10)
