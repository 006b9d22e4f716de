"""Find a public dataset's files on disk, or download them; else one line that says what to do.

The project's own machines reach the package index but no dataset host, so there the usual outcome
of a download is the `UserError` below; it has to come quickly and say which files to put where.
"""

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bench.errors import UserError, one_line

# torchvision's urlopen calls pass no timeout; without one a silently dropping firewall hangs
# the run for minutes. 5 s is ample for a connection and for each read of a working download.
TIMEOUT_S = 5.0


@contextlib.contextmanager
def socket_timeout(seconds: float = TIMEOUT_S) -> Iterator[None]:
    """Default timeout for new sockets while downloading (urllib takes it from here)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def short_reason(error: BaseException) -> str:
    """'URLError: <urlopen error ...>' on one line, at most ~120 characters."""
    text = one_line(error)
    return text if len(text) <= 120 else text[:117] + "..."


def missing(name: str, directory: Path, files: Sequence[str], mirror: str, why: str,
            hint: str = "") -> UserError:
    """The one-line error for a dataset that is neither on disk nor downloadable."""
    origin = mirror + files[0] if len(files) == 1 else mirror
    return UserError(
        f"dataset {name!r} not found in {directory} {why}: put {', '.join(files)} there "
        f"(from {origin}){hint}"
    )


def download_files(directory: Path, files: Sequence[tuple[str, str | None]],
                   mirrors: Sequence[str]) -> None:
    """Download each missing (filename, md5) from the first mirror that has it, else raise.

    torchvision's `download_url` checks the md5 and raises RuntimeError on a mismatch. A failed
    file is removed, so a half-written archive is never mistaken for the dataset later.
    """
    # Imported here: torchvision takes ~2 s to import, and most loads find their files on disk.
    from torchvision.datasets.utils import download_url

    directory.mkdir(parents=True, exist_ok=True)
    for filename, md5 in files:
        if (directory / filename).is_file():  # the user's own copy: neither fetched nor removed
            continue
        error: BaseException | None = None
        for mirror in mirrors:
            try:
                with socket_timeout():
                    download_url(mirror + filename, str(directory), filename=filename, md5=md5)
                error = None
                break
            # Network failures arrive as URLError/HTTPError/timeouts (all OSError) or, for a
            # bad checksum, RuntimeError; any of them means "try the next mirror".
            except (OSError, RuntimeError, ValueError) as e:
                error = e
                with contextlib.suppress(FileNotFoundError):
                    os.remove(directory / filename)
        if error is not None:
            raise error


def find_or_download(name: str, directory: Path, *, present: Callable[[], bool],
                     files: Sequence[tuple[str, str | None]], mirrors: Sequence[str],
                     download: bool, hint: str = "") -> None:
    """Return once `present()` is true, downloading `files` into `directory` if allowed.

    Raises UserError naming `directory`, the files and the first mirror when the files are
    missing and cannot be downloaded.
    """
    if present():
        return
    names = [f for f, _ in files]
    if not download:
        raise missing(name, directory, names, mirrors[0], "(download=False)", hint)
    try:
        download_files(directory, files, mirrors)
    except (OSError, RuntimeError, ValueError) as e:
        raise missing(name, directory, names, mirrors[0],
                      f"and the download failed ({short_reason(e)})", hint) from e
    if not present():
        raise missing(name, directory, names, mirrors[0], "after the download", hint)
