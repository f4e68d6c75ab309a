"""Open a tune report in headless Chromium and keep a screenshot (docs/report-screenshot.png).

Not a CI test: it needs Chromium (`apt-get install -y chromium`). The report is opened from the
file, with background networking off: what shows is what the file alone holds.

    uv run python benchmarks/report_screenshot.py crossinfer-demo/report.html [--out docs/report-screenshot.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=8000",  # let plotly draw before the picture is taken
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent.parent / "docs" / "report-screenshot.png"
    )
    parser.add_argument("--size", default="1280,3600", help="window WIDTH,HEIGHT in pixels")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    if not args.report.is_file():
        sys.exit(
            f"{args.report}: no such report (run `crossinfer demo` or `crossinfer tune` first)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        browser,
        *FLAGS,
        f"--window-size={args.size}",
        f"--screenshot={args.out.resolve()}",
        args.report.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not args.out.is_file():
        sys.exit(f"chromium failed ({done.returncode}): {done.stderr[-800:]}")
    print(f"screenshot: {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
