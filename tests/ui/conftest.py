"""A real browser for the dashboard's tests: Debian's Chromium, driven by Playwright through its
executable path (Playwright's own browser downloads cannot work here). Installed with apt where
missing; a machine where that fails fails these tests (they are never skipped)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "chromium", "chromium-driver"],
            check=False,
            capture_output=True,
            env=env,
            timeout=1200,
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            "no Chromium: apt-get install -y chromium chromium-driver (the dashboard's tests need a real browser)"
        )
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the run writes the pages' pictures: TRAINJOBS_SCREENSHOTS (``make screenshots``: docs/images)."""
    folder = Path(os.environ.get("TRAINJOBS_SCREENSHOTS") or REPO / "var" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
