#!/usr/bin/env python3
"""The web demo in a real browser: `minigpt4 serve` on the tiny fixture model, Debian's
chromium driven by Playwright for Python. Loads the page, uploads an image, asks, and
watches the answer arrive piece by piece; then a second image mid-chat, a second round,
and Restart. Exits 77 (CTest: skipped) with the reason when playwright or chromium is
missing; nothing is ever downloaded (no `playwright install`)."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time

SKIP = 77


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(SKIP)


def find_chromium():
    """MINIGPT4_CHROMIUM if set (and only it), else Debian's chromium."""
    chosen = os.environ.get("MINIGPT4_CHROMIUM")
    candidates = [chosen] if chosen else [shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def start_server(binary, source_dir):
    """Starts the server on a free port; returns the process and its URL."""
    process = subprocess.Popen(
        [binary, "serve", "--cfg-path", "configs/tiny_vicuna0.yaml", "--port", "0", "--max-tokens", "64",
         "--default-max-tokens", "24"],
        cwd=source_dir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log = []
    url = None
    deadline = time.time() + 180
    while time.time() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        log.append(line)
        match = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        if match:
            url = match.group(1)
            break
    if not url:
        process.kill()
        sys.exit("the server did not start:\n" + "".join(log))
    # Keep draining its log so a full pipe never blocks it.
    threading.Thread(target=lambda: [log.append(l) for l in process.stderr], daemon=True).start()
    return process, url, log


ANSWERS_JS = """() => [...document.querySelectorAll('.msg.assistant')].map(e => ({
    text: e.firstChild && e.firstChild.nodeType === Node.TEXT_NODE ? e.firstChild.data : '',
    pieces: Number(e.dataset.pieces || 0), done: e.dataset.done || null}))"""


def ask(page, question, round_index):
    page.fill("#question", question)
    page.click("#send")
    page.wait_for_selector(f".msg.assistant[data-done] >> nth={round_index}", timeout=120_000)
    answer = page.evaluate(ANSWERS_JS)[round_index]
    print(f"round {round_index + 1}: {answer}")
    assert answer["done"] in ("stop", "length"), answer
    assert answer["text"].strip(), f"empty answer: {answer}"
    assert answer["pieces"] >= 2, f"the answer did not stream (arrived in {answer['pieces']} piece): {answer}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--source-dir", required=True)
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip("Playwright for Python is not installed (scripts/setup.sh installs it into .venv)")
    chromium = find_chromium()
    if not chromium:
        skip("no chromium executable (apt-get install chromium, or set MINIGPT4_CHROMIUM)")
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} is not built")

    images = os.path.join(args.source_dir, "tests/data/parity/tiny_vicuna0/image_processor")
    server, url, log = start_server(args.binary, args.source_dir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            problems = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: None if r.url.startswith(url) or r.url.startswith(("data:", "blob:"))
                    else problems.append(f"request to another origin: {r.url}"))
            page.goto(url)
            # Waits use selectors, not JavaScript predicates: Playwright evaluates those with
            # eval(), which the page's Content-Security-Policy forbids.
            page.wait_for_selector("#model:has-text('tiny_vicuna0')")

            # The demo's sliders: near-greedy sampling, one beam.
            page.eval_on_selector("#temperature", "e => { e.value = '0.1'; e.dispatchEvent(new Event('input')); }")
            assert page.text_content("#temperature-value") == "0.1"

            page.set_input_files("#image-input", os.path.join(images, "arc_colors_rgba_357x200.png"))
            page.wait_for_selector(".msg.user[data-uploaded=true]", timeout=60_000)
            ask(page, "What is in this image?", 0)

            # A second image mid-chat, then another round on the same server-side session.
            page.set_input_files("#image-input", os.path.join(images, "ladybird_640x400.jpg"))
            page.wait_for_selector(".msg.user[data-uploaded=true] >> nth=1", timeout=60_000)
            page.eval_on_selector("#beams", "e => { e.value = '2'; e.dispatchEvent(new Event('input')); }")
            page.eval_on_selector("#temperature", "e => { e.value = '0.1'; e.dispatchEvent(new Event('input')); }")
            page.fill("#question", "And this one?")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done] >> nth=1", timeout=120_000)
            second = page.evaluate(ANSWERS_JS)[1]
            print(f"round 2 (2 beams): {second}")
            assert second["done"] in ("stop", "length") and second["text"].strip(), second

            page.click("#restart")
            page.wait_for_selector("#chat .msg", state="detached")
            page.wait_for_selector("#drop img", state="detached")
            page.eval_on_selector("#beams", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
            ask(page, "Hello?", 0)  # text only, after Restart: a fresh conversation
            assert not page.query_selector(".msg.error"), page.text_content(".msg.error")
            browser.close()
            assert not problems, problems
    except BaseException:
        print("server log:\n" + "".join(log), file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            sys.exit("the server did not stop on SIGTERM")
    if code != 0:
        sys.exit(f"the server exited with {code} on SIGTERM:\n" + "".join(log))
    print("browser test passed")


if __name__ == "__main__":
    main()
