"""Regenerate README's two screenshots from a run folder: its index.html and its latent atlas.

    .venv/bin/python docs/screenshots.py runs/<run>          # writes docs/run_index.png, docs/latent_atlas.png

The index (and atlas) are rebuilt from the run's files with the current report code first, so
the pictures show what `make demo` writes today. Needs Playwright and a Chromium (as the browser
tests do; CLIPATTR_CHROMIUM names another binary).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from clipattr_utils.report import write_index

DOCS = Path(__file__).resolve().parent
FIRST_SCREEN_LOADED = ("() => [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
                       ".every(i => i.complete && i.naturalWidth > 0)")


def main(run: Path) -> None:
    index = write_index(run)
    executable = os.environ.get("CLIPATTR_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if executable is None:
        sys.exit("no Chromium found on PATH; set CLIPATTR_CHROMIUM to its binary")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        for url, target in ((index.as_uri(), "run_index.png"),
                            ((run / "atlas" / "index.html").as_uri(), "latent_atlas.png")):
            page.goto(url)
            page.wait_for_load_state("load")
            page.wait_for_function(FIRST_SCREEN_LOADED)
            page.screenshot(path=str(DOCS / target))
            print(f"wrote {DOCS / target}")
        browser.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1], "series.json").is_file():
        sys.exit("usage: python docs/screenshots.py RUN_FOLDER (a folder with series.json, e.g. runs/<timestamp>-sandbox)")
    main(Path(sys.argv[1]).resolve())
