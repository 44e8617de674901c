"""Regenerate the app screenshots in docs/ (desktop 1400×1000 and phone 390×844) on the embedded model:
start a scene, add two layers from the examples' preset masks, select one, and photograph the page.

    ./strata python -m docs.screenshots [--out docs]

Drives Debian's Chromium (/usr/bin/chromium) with Playwright, like the browser tests.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from tests.app.chromium import CHROMIUM, CHROMIUM_ARGS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(page, pattern: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while pattern not in page.inner_text("#message"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {pattern!r} in the status line: {page.inner_text('#message')!r}")
        time.sleep(0.25)


def _edit(page) -> None:
    """The flow the screenshots show: a scene, two layers from preset masks, the first selected."""
    page.click("#start-prompt")
    _wait(page, "Scene started")
    for prompt, seed, where in (("a red circle", 1, "top left"), ("a blue square", 2, "bottom right")):
        page.fill("#layer-prompt textarea, #layer-prompt input", prompt)
        page.get_by_label("Mask").click()
        page.get_by_role("option", name=where).click()
        _wait(page, f"Mask painted at the {where}")
        page.click("#add-layer")
        _wait(page, "Added layer")
    page.click("#layers button[aria-label^='Thumbnail 2 of']")
    _wait(page, "Selected layer 1")


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs", type=Path)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from app.ui import build_app, launch_options
    demo = build_app()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(demo))
    written = []
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, viewport in (("app-desktop.png", {"width": 1400, "height": 1000}),
                                   ("app-phone.png", {"width": 390, "height": 844})):
                page = context.new_page()
                page.set_viewport_size(viewport)
                page.goto(f"http://127.0.0.1:{port}/")
                _edit(page)
                if name == "app-phone.png":  # the editor, under the status line that stays at the top
                    page.evaluate("() => document.querySelector('#mask-editor').scrollIntoView({block: 'center'})")
                    time.sleep(0.5)
                args.out.mkdir(parents=True, exist_ok=True)
                target = args.out / name
                tmp = target.with_suffix(".tmp.png")
                page.screenshot(path=str(tmp), full_page=name == "app-desktop.png")
                height = page.evaluate("() => document.documentElement.scrollHeight")
                print(f"{name}: page {viewport['width']}×{height} px")
                tmp.replace(target)  # all or nothing
                written.append(target)
                page.close()
            context.close()
    finally:
        demo.close()
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
