"""A dataset's (channels, image size, classes) from its config alone, without loading it.

Used to check a model against the data before any job starts (on the meta device).
"""

from bench.errors import UserError

# name -> (channels, native image size, classes); None: the size must be configured.
NATIVE_SHAPES = {
    "cifar10": (3, 32, 10),
    "mnist": (1, 28, 10),
    "fashion_mnist": (1, 28, 10),
    "imagenette": (3, None, 10),
    "digits": (1, 8, 10),
}


def dataset_shape(ds) -> tuple[int, int, int]:
    """(channels, image_size, num_classes) that loading `ds` (a dataset config node) will give."""
    if ds.name == "synthetic":
        opts = {"channels": 3, "size": 32, "num_classes": 10, **ds.get("options", {})}
        channels, size, classes = opts["channels"], opts["size"], opts["num_classes"]
    else:
        channels, size, classes = NATIVE_SHAPES[ds.name]
    size = ds.image_size or size
    if not isinstance(size, int) or size < 1:
        raise UserError(f"dataset.image_size={size!r} is not a positive integer")
    return channels, size, classes
