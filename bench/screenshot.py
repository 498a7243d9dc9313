"""A screenshot of the web page (docs/web.png): a question asked, its answer streamed in, its
citations, and the index panel, in Debian's chromium driven headless by Playwright.

By default it starts `ragserve serve` on a free 127.0.0.1 port on the demo index (built on first use
into ~/.cache/ragserve, as `make serve` does) with a registry of its own in a temporary folder, so
your registry is left alone; with --url it photographs a server that runs already.

    python -m bench.screenshot [--out docs/web.png] [--question "..."] [--extractive] [--top-k N] [--url URL]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import header
from bench.latency import free_port, wait_ready

CHROMIUM = "/usr/bin/chromium"
ANSWER_MS = 180_000


def photograph(base: str, args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(base_url=base, viewport={"width": args.width, "height": 900})
        page.goto("/")
        page.wait_for_selector("#server-status[data-state=ready]", timeout=ANSWER_MS)
        if args.token:
            page.fill("#token", args.token)
            page.press("#token", "Enter")
        page.wait_for_selector("#versions tbody tr", timeout=30_000)
        page.set_checked("#extractive", args.extractive)
        if args.top_k:
            page.fill("#top-k", str(args.top_k))
        page.fill("#question", args.question)
        started = time.perf_counter()
        page.press("#question", "Enter")
        page.wait_for_selector("#answer[data-state=done], #answer[data-state=error]", timeout=ANSWER_MS)
        seconds = time.perf_counter() - started
        if page.get_attribute("#answer", "data-state") != "done":
            sys.exit(f"the question failed: {page.text_content('#ask-error')}")
        tokens = page.get_attribute("#answer", "data-token-events")
        print(f"answer in {seconds:.1f} s, {tokens} token events: {page.text_content('#answer')!r}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/web.png"))
    ap.add_argument("--question", default="What does HNSW stand for?")
    ap.add_argument("--extractive", action="store_true", help="ask for an extractive answer (its span is marked)")
    ap.add_argument("--top-k", type=int, help="passages to retrieve and cite (default: the server's)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--url", help="a running server (default: start one on the demo index)")
    ap.add_argument("--token", help="an admin token for the index panel of a server with tokens")
    args = ap.parse_args()
    header("web page screenshot")
    if args.url:
        photograph(args.url.rstrip("/"), args)
        return
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_REGISTRY_DIR": str(Path(folder) / "registry")}
        cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--port", str(port)]
        server = subprocess.Popen(cmd, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, server, seconds=900)
            photograph(base, args)
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
