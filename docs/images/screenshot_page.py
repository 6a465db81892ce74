#!/usr/bin/env python3
"""The README's picture of the demo page: `minigpt4 serve` on a quickstart model, one
held-out picture asked about (the page's lowest temperature), the answer's heat map on, captured with Playwright
driving Debian's chromium.

    .venv/bin/python docs/images/screenshot_page.py --binary build/minigpt4 \
        --cfg-path runs/quickstart/minigpt4_quickstart_eval.yaml \
        --image runs/quickstart/world/heldout/image/00000.jpg --out docs/images/demo_page.png
"""
import argparse
import re
import subprocess
import sys
import threading
import time

from playwright.sync_api import sync_playwright


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--cfg-path", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--question", default="Describe this image.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    server = subprocess.Popen([args.binary, "serve", "--cfg-path", args.cfg_path, "--port", "0"],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = None
    deadline = time.time() + 120
    while time.time() < deadline and not url:
        line = server.stderr.readline()
        if not line:
            break
        match = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        url = match.group(1) if match else None
    if not url:
        server.kill()
        sys.exit("the server did not start")
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(url)
            page.set_input_files("#image-input", args.image)
            page.wait_for_selector(".msg.user[data-uploaded=true]", timeout=60_000)
            page.eval_on_selector("#temperature", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
            if page.query_selector("#explain"):
                page.check("#explain")
            page.fill("#question", args.question)
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done]", timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=args.out)
            print(f"wrote {args.out}: {page.text_content('.msg.assistant')!r}")
            browser.close()
    finally:
        server.kill()


if __name__ == "__main__":
    main()
