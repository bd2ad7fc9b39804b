"""Headless Chromium for the console's browser tests: Debian's ``chromium`` package driven by Playwright (its
own browser download is not used), a fresh profile per test, and a folder for screenshots and downloads under
``var/test-artifacts/`` (git-ignored) that the test prints."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
INSTALLED = CHROMIUM.exists()
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1366, "height": 900}
TABLET = {"width": 820, "height": 1180}


def artifacts_for(name: str) -> Path:
    folder = ARTIFACTS / "console" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\nscreenshots and downloads: {folder}")
    return folder


@contextlib.asynccontextmanager
async def chromium(**context: Any) -> AsyncIterator[Any]:
    """A browser context with its own throwaway profile. A missing Chromium fails the test rather than skipping
    it: a browser test that silently did not run proves nothing (``scripts/bootstrap`` installs it as root)."""
    if not INSTALLED:
        pytest.fail("Debian's chromium is not installed (run scripts/bootstrap as root)", pytrace=False)
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        async with async_playwright() as p:
            browser = await p.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=ARGS,
                accept_downloads=True,
                locale="zh-CN",
                viewport=LAPTOP,
                **context,
            )
            try:
                yield browser
            finally:
                await browser.close()
