"""A real headless Chromium (Debian's package) driven by Playwright, for the console tests.

Playwright's own browser download is never used (no ``playwright install``): the
system ``chromium`` is launched through ``executable_path`` with a fresh profile
folder, on loopback only. ``DEVICE_AGENT_CHROMIUM`` names another binary.

Artefacts (screenshots) go to ``$DEVICE_AGENT_ARTEFACTS`` when set, else to
``browser-artefacts/`` under pytest's base temporary folder (the path is printed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Flags for a quiet, self-contained headless run here (as root, no GPU, no network use).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Chromium binary to drive; skips (a failure under CI) when there is none."""
    configured = os.environ.get("DEVICE_AGENT_CHROMIUM")
    found = configured or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.skip(f"no Chromium at {found} (Debian package 'chromium'; `make test` installs it)")
    return found


@contextlib.contextmanager
def chromium(profile_dir: Path, *, width: int = 1440, height: int = 1000) -> Iterator[Any]:
    """A Playwright browser context in a real headless Chromium with a fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (dev extra)")
    executable = chromium_path()
    profile_dir.mkdir(parents=True, exist_ok=False)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context
        finally:
            context.close()


def artefacts_dir(factory: pytest.TempPathFactory) -> Path:
    """Where tests leave screenshots (``$DEVICE_AGENT_ARTEFACTS`` or under pytest's temp)."""
    configured = os.environ.get("DEVICE_AGENT_ARTEFACTS")
    folder = Path(configured) if configured else factory.getbasetemp() / "browser-artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
