#!/usr/bin/env python3
"""The web demo in a real browser: `minigpt4 serve` on the tiny fixture model, Debian's
chromium driven by Playwright for Python. Loads the page, uploads an image, asks, and
watches the answer arrive piece by piece; then a second image mid-chat, a second round,
an explained answer (heat map, clickable words), and Restart. Then a second server holding two LoRA task adapters (written here as PEFT
folders): the Task selector, a switch mid-conversation, and boxes drawn over the image.
Exits 77 (CTest: skipped) with the reason when playwright or chromium is missing; nothing
is ever downloaded (no `playwright install`)."""
import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
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


def start_server(binary, source_dir, extra=()):
    """Starts the server on a free port; returns the process and its URL."""
    process = subprocess.Popen(
        [binary, "serve", "--cfg-path", "configs/tiny_vicuna0.yaml", "--port", "0", "--max-tokens", "64",
         "--default-max-tokens", "24", *extra],
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


def stop_server(server, log):
    server.terminate()
    try:
        code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        sys.exit("the server did not stop on SIGTERM")
    if code != 0:
        sys.exit(f"the server exited with {code} on SIGTERM:\n" + "".join(log))


def write_llm_adapter(folder, seed):
    """A PEFT LoRA folder for the tiny model's LLM (hidden 64, 2 layers): q_proj and v_proj,
    r 4, random A and B, in safetensors written with the standard library alone."""
    os.makedirs(folder)
    rng = random.Random(seed)
    tensors = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            name = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[name + ".lora_A.weight"] = ([4, 64], [rng.gauss(0, 0.3) for _ in range(4 * 64)])
            tensors[name + ".lora_B.weight"] = ([64, 4], [rng.gauss(0, 0.3) for _ in range(64 * 4)])
    header, data = {}, b""
    for name, (shape, values) in tensors.items():
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + data)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                   "target_modules": ["q_proj", "v_proj"], "bias": "none"}, f)


# The geometry of the drawn boxes against the preview image, in CSS pixels.
BOXES_JS = """() => {
    const image = document.querySelector('#drop img').getBoundingClientRect();
    return [...document.querySelectorAll('#boxes .box')].map(b => {
        const r = b.getBoundingClientRect();
        return {left: r.left - image.left, top: r.top - image.top, width: r.width, height: r.height,
                image_width: image.width, image_height: image.height, label: b.textContent};
    });
}"""


def check_adapters(browser, binary, source_dir, images):
    """The Task selector and the boxes, on a server holding two LLM adapters."""
    folder = tempfile.mkdtemp(prefix="minigpt4_browser_lora_")
    try:
        write_llm_adapter(os.path.join(folder, "det"), 1)
        write_llm_adapter(os.path.join(folder, "ocr"), 2)
        lora_path = "model.lora_path={det: %s, ocr: %s}" % (os.path.join(folder, "det"), os.path.join(folder, "ocr"))
        server, url, log = start_server(binary, source_dir, ["--options", lora_path])
        try:
            page = browser.new_page()
            problems = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url)
            page.wait_for_selector("#task-row:not([hidden])")
            options = page.eval_on_selector("#task", "s => [...s.options].map(o => o.value)")
            assert options == ["original", "det", "ocr"], options
            assert page.eval_on_selector("#task", "s => s.value") == "original"

            page.set_input_files("#image-input", os.path.join(images, "arc_colors_rgba_357x200.png"))
            page.wait_for_selector(".msg.user[data-uploaded=true]", timeout=60_000)
            # Switching the task mid-conversation: the server restarts it under the adapter
            # and encodes the same image again; the page says so.
            page.select_option("#task", "det")
            page.wait_for_selector(".msg.note:has-text('Task: det')")
            assert page.query_selector(".msg.user") is None  # the old conversation is gone
            page.eval_on_selector("#temperature", "e => { e.value = '0.1'; e.dispatchEvent(new Event('input')); }")
            page.fill("#question", "Where is the red arc?")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done]", timeout=120_000)
            meta = page.text_content(".msg.assistant .meta")
            print(f"answer with det: {page.evaluate(ANSWERS_JS)[0]} ({meta})")
            assert "det" in meta, meta  # the done event says which adapter answered
            # The answer went through the box-drawing path (the done event's boxes); the tiny
            # model's random answers hold no box, so this counts none.
            assert page.get_attribute(".msg.assistant", "data-boxes") is not None

            # The drawing itself, fed a box as the server sends it (a ConLoRA answer
            # `<bin_56> <bin_50> <bin_167> <bin_150>` on this 357x200 image: pixels by
            # bin * size / 223, rounded), must land on those pixels of the preview.
            box = {"x0": 90, "y0": 45, "x1": 267, "y1": 135, "image_size": [357, 200], "label": "red arc"}
            drawn = page.evaluate("box => window.minigpt4.drawBoxes([box])", box)
            assert drawn == 1, drawn
            (geometry,) = page.evaluate(BOXES_JS)
            sx, sy = geometry["image_width"] / 357, geometry["image_height"] / 200
            print(f"box drawn: {geometry}")
            for got, want in ((geometry["left"], 90 * sx), (geometry["top"], 45 * sy),
                              (geometry["width"], 177 * sx), (geometry["height"], 90 * sy)):
                assert abs(got - want) <= 1.5, (geometry, box)
            assert geometry["label"] == "red arc", geometry
            # A new question clears the old boxes.
            page.fill("#question", "And now?")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done] >> nth=1", timeout=120_000)
            assert not page.query_selector("#boxes .box")
            assert not page.query_selector(".msg.error"), page.text_content(".msg.error")
            assert not problems, problems
            page.close()
        except BaseException:
            print("server log (adapters):\n" + "".join(log), file=sys.stderr)
            raise
        finally:
            stop_server(server, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
            assert page.is_hidden("#task-row"), "the Task selector shows although the model holds no adapters"

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

            # Explanations: the toggle asks for them; the heat map shows over the image, and a
            # click on a word of the answer shows that word's map.
            page.check("#explain")
            page.eval_on_selector("#beams", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
            page.fill("#question", "Where is it?")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-explained] >> nth=0", timeout=120_000)
            assert page.is_visible("#heat"), "no heat map over the image after an explained answer"
            words = page.query_selector_all(".msg.assistant[data-explained] .word")
            assert words, "the explained answer has no clickable words"
            words[-1].click()
            assert "shown" in (words[-1].get_attribute("class") or ""), "the clicked word is not marked"
            assert page.is_visible("#heat")
            print(f"explained: {len(words)} clickable words")
            page.uncheck("#explain")

            page.click("#restart")
            page.wait_for_selector("#chat .msg", state="detached")
            page.wait_for_selector("#drop img", state="detached")
            page.eval_on_selector("#beams", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
            ask(page, "Hello?", 0)  # text only, after Restart: a fresh conversation
            assert not page.query_selector(".msg.error"), page.text_content(".msg.error")
            assert not problems, problems
            stop_server(server, log)
            server = None
            check_adapters(browser, args.binary, args.source_dir, images)
            browser.close()
    except BaseException:
        if server:
            print("server log:\n" + "".join(log), file=sys.stderr)
        raise
    finally:
        if server:
            stop_server(server, log)
    print("browser test passed")


if __name__ == "__main__":
    main()
