"""How a run was produced, as its row records it: the code's version, torch's, and the versions of
the libraries that shape its numbers (`runs.code_version`, `torch_version`, `versions`)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


@functools.cache
def code_version() -> str:
    """`git describe` of the checkout holding this package, else the installed version."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():  # not an unrelated repo that merely contains site-packages
        try:
            out = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--tags"],
                cwd=root, capture_output=True, text=True, timeout=5, check=True,
                # --dirty may refresh .git/index; parallel jobs must not fight over index.lock.
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass  # no git, no commit yet, or too slow
    try:
        return importlib.metadata.version("normbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def torch_version() -> str:
    # `import torch` takes ~3.6 s here; a training process has it loaded already, and the
    # installed package's metadata gives the same string without importing it.
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# The distributions whose versions change what a run computes (torch's and torchvision's kernels
# and transforms, numpy's and scipy's numerics, torchmetrics' FID, scikit-learn's and pillow's
# datasets and image decoding) or how its config is composed (hydra-core, omegaconf), and the
# database layer that stores the numbers (sqlalchemy).
VERSIONED = ("torch", "torchvision", "numpy", "scipy", "torchmetrics", "scikit-learn", "pillow",
             "hydra-core", "omegaconf", "sqlalchemy")


@functools.cache
def versions_json() -> str:
    # Installed metadata, not `import`: importing torch or scipy only to read a version takes
    # seconds; the metadata gives the same strings, once per process.
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return json.dumps(versions)


def library_versions() -> dict[str, str]:
    """{distribution name: version} of `VERSIONED` ('not installed' if absent), and 'python'."""
    return json.loads(versions_json())
