"""Imagenette (fast.ai): ten easy ImageNet classes, 9,469 train / 3,925 val JPEGs.

The 160 px version (`imagenette2-160.tgz`: shorter side 160) holds every size the project uses
(96 by default). Layout: imagenette2-160/{train,val}/<wnid>/*.JPEG; labels are the sorted wnids.
"""

import contextlib
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path

import torch

from bench.errors import UserError

from .fetch import find_or_download
from .resize import resize_and_crop
from .source import Source, Tensors

# URL and md5 as in torchvision/datasets/imagenette.py (torchvision 0.29).
MIRRORS = ["https://s3.amazonaws.com/fast-ai-imageclas/"]
ARCHIVE = "imagenette2-160.tgz"
MD5 = "e793b78cc4c9e9a4ccc0c1155377a412"
FOLDER = "imagenette2-160"


def _extract(archive: Path, directory: Path) -> None:
    """Unpack the .tgz once, into a temp folder renamed at the end.

    A killed extraction leaves no half folder that would pass for the dataset; of two processes
    extracting at once, the first rename wins and the other discards its copy.
    """
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{FOLDER}."))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # filter="data" refuses absolute paths and links out of the folder.
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp)
        raise UserError(f"cannot extract {archive} (corrupt or truncated? delete it to download it "
                        f"again): {e}") from e
    if not (tmp / FOLDER).is_dir():
        shutil.rmtree(tmp)
        raise UserError(f"{archive} does not contain the folder {FOLDER}/")
    with contextlib.suppress(OSError):  # another process got there first
        (tmp / FOLDER).rename(directory / FOLDER)
    shutil.rmtree(tmp)


def _decode(paths: list[Path], size: int) -> torch.Tensor:
    """JPEG files -> (len(paths), 3, size, size) uint8, shorter side resized then center-cropped."""
    # Imported here: torchvision takes ~2 s to import and only this dataset decodes images.
    from torchvision.io import ImageReadMode, decode_image

    # One full-size image at a time: memory stays at the (N, 3, size, size) result.
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 warns on every decode that TorchCodec will take over image decoding;
        # torchvision==0.29.1 is pinned and TorchCodec is not installed, so the notice is noise.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        for i, path in enumerate(paths):
            try:
                data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
                # decode_image rather than decode_jpeg: it also takes the odd PNG saved as .JPEG
                # that ImageNet is known for; mode RGB turns grey and CMYK JPEGs into 3 channels.
                image = decode_image(data, mode=ImageReadMode.RGB)
            except (RuntimeError, OSError) as e:
                raise UserError(f"cannot decode {path}: {e}") from e
            out[i] = resize_and_crop(image, size)
    return out


def _split(folder: Path, classes: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of one split, in class then file-name order: (N, 3, size, size), (N,)."""
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        files = sorted(p for p in (folder / wnid).iterdir() if p.suffix.lower() == ".jpeg")
        paths += files
        labels += [label] * len(files)
    return _decode(paths, size), torch.tensor(labels, dtype=torch.int64)


def read(directory: Path, *, download: bool, image_size: int) -> Tensors:
    """Train (9469, 3, s, s) and val as test (3925, 3, s, s), s = image_size."""
    root = directory / FOLDER
    find_or_download("imagenette", directory, present=lambda: root.is_dir() or
                     (directory / ARCHIVE).is_file(), files=[(ARCHIVE, MD5)], mirrors=MIRRORS,
                     download=download)
    if not root.is_dir():
        _extract(directory / ARCHIVE, directory)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"{root} has no {split}/ folder; expected {FOLDER}/{{train,val}}/")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    val_classes = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
    if classes != val_classes:
        raise UserError(f"{root}: train/ and val/ hold different classes")
    train_x, train_y = _split(root / "train", classes, image_size)
    test_x, test_y = _split(root / "val", classes, image_size)
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                num_classes=len(classes))


SOURCE = Source(read=read, train_size=9_469, native_size=None, channels=3, num_classes=10)
