"""`python -m analysis.browser_check [reports/index.html]`: the report as a browser shows it.

Renders the page with headless Chromium (Debian's `chromium` package) to a 1280 x 4000 PNG and
fails unless the picture has content: enough distinct colours and enough non-white pixels.
A blank page (a broken template, a page that does not parse) is one colour. Without Chromium it
fails with the command that installs it; it never skips (a CI that cannot run it skips the
pytest that calls it instead).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"
MIN_COLOURS = 32        # the report's page: thousands (plots, anti-aliased text); blank: 1
MIN_INK = 0.01          # share of pixels that are not (near) white
WINDOW = (1280, 4000)


def screenshot(page: Path, png: Path, chromium: str = CHROMIUM, timeout: float = 120) -> None:
    """Write Chromium's screenshot of `page` to `png`; RuntimeError with Chromium's output."""
    with tempfile.TemporaryDirectory(prefix="normbench-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={"HOME": profile, "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0 or not png.exists():
        tail = " ".join((proc.stderr or proc.stdout).split())[-500:]
        raise RuntimeError(f"chromium exited {proc.returncode} without a screenshot: {tail}")


def content(png: Path) -> tuple[int, float, float]:
    """(distinct colours, share of non-white pixels, share of colourful pixels) of an image."""
    img = Image.open(png).convert("RGB")
    pixels = img.width * img.height
    colours = img.getcolors(maxcolors=pixels)
    ink = sum(n for n, (r, g, b) in colours if min(r, g, b) < 235) / pixels
    vivid = sum(n for n, c in colours if max(c) - min(c) > 60) / pixels
    return len(colours), ink, vivid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.browser_check", description=__doc__.split("\n")[0])
    p.add_argument("page", nargs="?", default="reports/index.html", type=Path)
    p.add_argument("--screenshot", type=Path, help="keep the screenshot here (default: a temp file)")
    p.add_argument("--chromium", default=CHROMIUM, help="browser binary (default: %(default)s)")
    args = p.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"error: {args.chromium} not found; install Chromium with `{INSTALL}` (as root)",
              file=sys.stderr)
        return 1
    if not args.page.is_file():
        print(f"error: no report at {args.page} (make one with `python -m analysis.report`)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        png = args.screenshot or Path(tmp) / "report.png"
        try:
            screenshot(args.page, png, args.chromium)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
        colours, ink, vivid = content(png)
        size = Image.open(png).size
    verdict = colours >= MIN_COLOURS and ink >= MIN_INK
    print(f"{args.page}: screenshot {size[0]}x{size[1]}, {colours} colours, {ink:.1%} ink, "
          f"{vivid:.1%} colourful -> {'ok' if verdict else 'BLANK'}")
    if not verdict:
        print(f"error: the page looks blank (needs >= {MIN_COLOURS} colours and >= {MIN_INK:.0%} ink)",
              file=sys.stderr)
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
