"""`python -m analysis.browser_check [reports/index.html]`: the report as a browser shows it.

Opens the page in headless Chromium (Debian's `chromium` package) at each window width in
`WIDTHS` (1,300 px, a laptop; 800 px, half a screen) and fails unless, at every width:
- the page does not scroll sideways: its scrollWidth is its clientWidth (a wide table scrolls
  in its own box instead, analysis/document.py);
- its screenshot has content: enough distinct colours and enough non-white pixels (a blank
  page, from a broken template or a page that does not parse, is one colour).
It also prints how large the figures are drawn, as the size their smallest text comes out at.

The values are read in the page itself: a copy of it gets a script that, once the page has
loaded, writes them into a hidden element, and Chromium's --dump-dom prints the DOM after the
load event, in the same run as its --screenshot. Without Chromium it fails with the command that
installs it; it never skips (a CI that cannot run it skips the pytest that calls it instead).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench.errors import one_line, squash

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"
MIN_COLOURS = 32        # the report's page: thousands (plots, anti-aliased text); blank: 1
MIN_INK = 0.01          # share of pixels that are not (near) white
WIDTHS = (1300, 800)
HEIGHT = 4000           # the screenshot's height: the top of the page, tables and first figures
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars")

# Runs after the load event (the figures decoded, so their natural sizes are known). Elements
# inside a box that clips them (a table's scroll box: overflow-x auto) may extend past the window.
PROBE = """<pre id="normbench-probe" hidden></pre><script>
addEventListener("load", () => {
  const root = document.documentElement, width = root.clientWidth, clips = new Map();
  const clipped = e => {
    if (!e || e === document.body) return false;
    if (!clips.has(e)) clips.set(e, getComputedStyle(e).overflowX !== "visible" || clipped(e.parentElement));
    return clips.get(e);
  };
  const out = [...document.body.querySelectorAll("*")].filter(e =>
      !clipped(e.parentElement) && e.getBoundingClientRect().right > width + 0.5).slice(0, 500);
  const innermost = out.filter(e => !out.some(o => o !== e && e.contains(o)));
  const name = e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
      (e.className ? "." + String(e.className).split(" ").join(".") : "");
  const scales = [...document.images].filter(i => i.naturalWidth > 0)
      .map(i => i.getBoundingClientRect().width / i.naturalWidth);
  document.getElementById("normbench-probe").textContent = JSON.stringify({
    scrollWidth: root.scrollWidth, clientWidth: width,
    wider: innermost.slice(0, 3).map(e => name(e) + " " + Math.round(e.getBoundingClientRect().right) + "px"),
    figureScale: scales.length ? Math.min(...scales) : null});
});
</script>"""


@dataclass
class Look:
    width: int               # the window's
    scroll_width: int        # document.documentElement.scrollWidth
    client_width: int        # ... clientWidth: the page scrolls sideways when scroll_width exceeds it
    wider: list[str]         # the innermost elements that stick out of the window, if any
    figure_scale: float | None  # the smallest figure's drawn width / its PNG's width

    @property
    def overflow(self) -> int:
        return self.scroll_width - self.client_width


def look(page: Path, width: int, png: Path, chromium: str = CHROMIUM, timeout: float = 120) -> Look:
    """Render `page` in a `width` x HEIGHT window: its screenshot to `png`, and the measurements.

    RuntimeError with Chromium's output if it gives neither."""
    html = page.read_text(encoding="utf-8")
    probe = html.replace("</body>", PROBE + "</body>") if "</body>" in html else html + PROBE
    with tempfile.TemporaryDirectory(prefix="normbench-chromium-") as profile:
        copy = Path(profile) / "page.html"  # beside nothing: the page is self-contained
        copy.write_text(probe, encoding="utf-8")
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}/user", f"--screenshot={png}",
               f"--window-size={width},{HEIGHT}", "--dump-dom", copy.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={"HOME": profile, "PATH": "/usr/bin:/bin"})
    found = re.search(r'<pre id="normbench-probe" hidden="">(.*?)</pre>', proc.stdout, re.S)
    if proc.returncode != 0 or not png.exists() or not found:
        tail = squash(proc.stderr or proc.stdout)[-500:]
        raise RuntimeError(f"chromium exited {proc.returncode} without a screenshot and the page's "
                           f"measurements: {tail}")
    values = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return Look(width, values["scrollWidth"], values["clientWidth"], values["wider"], values["figureScale"])


def content(png: Path) -> tuple[int, float, float]:
    """(distinct colours, share of non-white pixels, share of colourful pixels) of an image."""
    img = Image.open(png).convert("RGB")
    pixels = img.width * img.height
    colours = img.getcolors(maxcolors=pixels)
    ink = sum(n for n, (r, g, b) in colours if min(r, g, b) < 235) / pixels
    vivid = sum(n for n, c in colours if max(c) - min(c) > 60) / pixels
    return len(colours), ink, vivid


def shot_path(stem: Path, width: int) -> Path:
    """report.png -> report-1300.png: one screenshot per width."""
    return stem.with_name(f"{stem.stem}-{width}{stem.suffix or '.png'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.browser_check", description=__doc__.split("\n")[0])
    p.add_argument("page", nargs="?", default="reports/index.html", type=Path)
    p.add_argument("--screenshot", type=Path, metavar="PNG",
                   help="keep the screenshots: PNG-1300.png, PNG-800.png (default: temp files)")
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
    from analysis.panels import TEXT_PX  # after the checks: matplotlib takes a second to import

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in WIDTHS:
            png = shot_path(args.screenshot or Path(tmp) / "report.png", width)
            try:
                seen = look(args.page, width, png, args.chromium)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                print(f"error: {one_line(e, with_type=False)}", file=sys.stderr)
                return 1
            colours, ink, vivid = content(png)
            blank = colours < MIN_COLOURS or ink < MIN_INK
            smallest = seen.figure_scale * TEXT_PX if seen.figure_scale else 0
            text = (f", figures at {seen.figure_scale:.0%}: smallest text {smallest:.1f} px"
                    if seen.figure_scale else ", no figures")
            print(f"{args.page} at {width} px: {colours} colours, {ink:.1%} ink, {vivid:.1%} colourful; "
                  f"page {seen.scroll_width} px wide in {seen.client_width}{text} -> "
                  f"{'BLANK' if blank else 'OVERFLOW' if seen.overflow > 0 else 'ok'}")
            if blank:
                failures.append(f"at {width} px the page looks blank (needs >= {MIN_COLOURS} colours "
                                f"and >= {MIN_INK:.0%} ink)")
            if seen.overflow > 0:
                failures.append(f"at {width} px the page scrolls sideways by {seen.overflow} px "
                                f"({', '.join(seen.wider) or 'no single element'} past the edge)")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
