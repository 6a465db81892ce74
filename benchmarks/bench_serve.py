#!/usr/bin/env python3
r"""OpenAI-compatible chat servers side by side under concurrent streaming load.

What it measures
  For each server and each concurrency N of --clients (default 1,2,4,8,16), N client threads
  start together (a barrier) and each sends --requests-per-client (default 2) streaming chat
  requests to POST /v1/chat/completions, one after the other: `stream: true`, `temperature: 0`,
  `max_tokens` --max-tokens (default 64), `stream_options: {include_usage: true}`. The prompts
  come from a fixed built-in list of 16 short questions; request j of client i asks question
  (i * requests_per_client + j) mod 16, so at the same N every server gets the same prompts.
  Every server gets the same request fields: nothing server-specific (no `ignore_eos`,
  `min_tokens`), so two servers may stop after different numbers of tokens; the completion
  token counts are reported next to the speeds so that this is visible.

  Per request it records the time to the first non-empty content delta (TTFT, from just before
  the connection is opened), the arrival time of every content chunk, the completion tokens
  (from the final `usage` chunk when the server honours include_usage, else the number of
  content chunks), the finish reason, and the server's `timings` object when it sends one
  (llama-server does, in its last chunk). A request that fails (connection error, HTTP status
  other than 200, an `error` event in the stream, a stream that ends without [DONE]) counts
  as a failure with its status and an excerpt of the body; the run goes on.

  Per server and N it reports:
    agg tok/s    all completion tokens of the successful requests / wall time of the N-client
                 run (barrier release to the last thread's end)
    TTFT p50/p95 over the requests, in ms
    stream tok/s mean over the requests of (tokens - 1) / (last chunk time - first chunk time)
                 (requests with at least 2 chunks)
    gap p95      95th percentile, in ms, of the times between consecutive content chunks,
                 over all the gaps of all streams (a server that sends several tokens in one
                 chunk shows fewer, longer gaps)
    tokens       mean completion tokens per request (to see differing lengths)
    fail         failed requests
  With a very small model a whole answer can arrive in one TCP read, so its chunks share one
  arrival time and stream tok/s comes out absurdly high (and the gaps near 0); those two columns
  mean something for models whose tokens take longer than the network round trip.
  and, for every server after the first, its ratios against the first at the same N
  (agg tok/s and stream tok/s: server / first, higher is better for the server; TTFT p50:
  server / first, lower is better).

  --replay R (off by default): after the load runs, one conversation of R rounds per server.
  Round k sends the whole history (the earlier questions and the answers that server gave)
  plus a new question, streamed, and records TTFT and prompt tokens per round. A server that
  keeps the conversation's prefix cached should hold TTFT about flat as the history grows;
  the report prints TTFT per round and round R / round 1 (llama-server's timings also show
  how many prompt tokens came from its cache: `cache_n` next to `prompt_n`).
  --replay-pause S (default 0) waits S seconds between an answer's end and the next round, as a
  person reading and typing does: the time a server may use to prepare the next round (ours
  computes the replayed answer then, unless --no-warm-replays). With 0 the next round comes at
  once, which leaves it no such time.

  --join N (off by default): after the load runs, N streams of --max-tokens twice: alone, then
  while a client keeps sending requests with a long prompt (about 200 tokens, a new opening
  each time so that no prefix cache serves it; one token each) one after another. Reported:
  the streams' time between tokens over their steady part (the last stream's first token to
  the first stream's end) in both runs, and the joining run's p95 over the quiet run's median:
  how much a joining prompt stalls the streams that are running (a server that runs a whole
  prompt between two decode steps stalls them for all of it).

  --check: a smoke test for use in tests: per server 1 client, 1 streamed request,
  max_tokens 4; prints one line per server and exits 1 if any failed.

How servers are given
  --server NAME=URL          a server that is already running (e.g. ours=http://127.0.0.1:8080)
  --launch NAME='CMD'        a command line with {port}: the script picks a free port, starts
                             it (no shell; its output goes to --log-dir), waits until GET /health
                             answers 200 (503 while the model loads means wait; a server without
                             /health, 404, counts as up), benchmarks it, and stops it (SIGTERM to
                             its process group, SIGKILL after 10 s) before the next server starts,
                             so that launched servers never share the CPUs.
  Both are repeatable and may be mixed; servers are run, and listed, in the order given; the
  first one is the baseline of the ratios.
  --image PATH sends the image as a data-URI `image_url` content part (before the text) in every
  request, to the servers named by --image-servers (comma list; default: all servers).

Examples (from the repository root; run with .venv/bin/python; the machine has 2 cores, so
give every server the same threads, and the same parallel slots as the largest N you care about)

  # ours vs llama-server on the same weights: the tiny fixture model
  .venv/bin/python benchmarks/bench_serve.py \
      --launch ours='build/minigpt4 serve --cfg-path configs/tiny_vicuna0.yaml --port {port} --parallel 8' \
      --launch llama='/work/scratch/llama-server-build/bin/llama-server -m tests/data/gguf/tiny_llama_f16.gguf \
                      --port {port} -np 8 -c 8192 -t 2' \
      --clients 1,2,4,8,16 --max-tokens 64 --replay 6 --json /tmp/bench_serve.json

  # against servers that are already running
  .venv/bin/python benchmarks/bench_serve.py --server ours=http://127.0.0.1:8080 \
      --server llama=http://127.0.0.1:8081 --clients 1,4

  # smoke test
  .venv/bin/python benchmarks/bench_serve.py --check --launch llama='... --port {port}'

  llama-server formats the messages with the GGUF's chat template (chatml when the file has
  none, as the tests/data/gguf fixtures have none) and ours with its prompt_template, so the
  same question is a different number of prompt tokens on each (see prompt_tokens in --json);
  llama-server's --chat-template-file can give it a matching template.
  With `-np P` llama-server splits its context `-c` among the P slots (each slot gets c / P
  tokens), so give it -c of at least P * (prompt + max_tokens + chat template) tokens; the
  --replay conversation's last round holds about R * (20 + max_tokens) tokens plus the template
  (R 6, max_tokens 64: some 650 tokens with the tiny fixture's vocabulary, so -np 8 needs
  -c 8192 for it; a round past the context fails with HTTP 400 and shows as FAILED).

GGUF files of the same weights
  - tests/data/gguf/tiny_llama_f16.gguf (and _q8_0, _q4_0, _q4_1) hold the LLM of
    configs/tiny_vicuna0.yaml (tests/data/parity/tiny_vicuna0/vicuna) with its real
    sentencepiece vocabulary, converted by llama.cpp's convert_hf_to_gguf.py; an f32 one is
    written by tests/data/gguf/make_gguf_fixtures.py --keep-f32 (see its README). Ours
    there runs llm_precision fp32, so compare it with the f32 file for equal precision.
  - benchmarks/bench_decode_ref.py writes GGUFs (write_gguf: f32 / f16 / q8_0 with the `gguf`
    package, q4_0 / q4_K_S by llama.cpp's quantiser) of the random LLaMA shapes that
    build/benchmarks/bench_decode saves as Hugging Face directories. To keep them, run it with
    --keep and --workdir, e.g.
        .venv/bin/python benchmarks/bench_decode_ref.py --cpp-bin build/benchmarks/bench_decode \
            --shape quickstart --skip hf --rows fp32,bf16 --workdir /tmp/bd --keep
    and find /tmp/bd/<shape>/model-{f32,f16,q8_0,...}.gguf next to the weights in
    /tmp/bd/<shape>/hf. Those GGUFs carry a dummy vocabulary (<unk>, <s>, </s>, 256 byte
    pieces, filler pieces "▁t<i>") and no chat template: bench_decode_ref feeds token ids,
    never text. llama-server can serve them, but it tokenises the prompts byte by byte, so
    prompt lengths differ from a server with the real tokenizer; the answers are noise in
    any case (random weights). Use them for throughput at a given size, and compare
    `prompt_tokens` in the JSON before reading TTFT side by side. For a real model use
    llama.cpp's convert_hf_to_gguf.py on its Hugging Face directory.

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import mimetypes
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Explain in one sentence why the sky is blue.",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "What is the boiling point of water at sea level?",
    "Write a short greeting for a birthday card.",
    "What does a bee make?",
    "Give one tip for sleeping well.",
    "Who wrote Romeo and Juliet?",
    "What is two plus two?",
    "Describe a cat in five words.",
    "Which planet is closest to the sun?",
    "What language is spoken in Brazil?",
    "Why do leaves change color in autumn?",
    "Suggest a name for a small bakery.",
    "What is the opposite of cold?",
]

# Follow-up questions of the --replay conversation (round k asks REPLAY_QUESTIONS[k % len]).
REPLAY_QUESTIONS = [
    "Tell me about the city of Paris.",
    "What is its most famous landmark?",
    "When was that landmark built?",
    "Who designed it?",
    "How tall is it?",
    "What else should a visitor see nearby?",
    "What food is the city known for?",
    "What is the best season to visit?",
]


# ----------------------------------------------------------------------------- helpers

def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def excerpt(text, n: int = 300) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # x != x: nan


# ----------------------------------------------------------------------------- servers

class Server:
    def __init__(self, name: str, url: str | None = None, command: str | None = None):
        self.name = name
        self.url = url
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.image = False
        self.health: dict | str | None = None
        self.startup_s: float | None = None

    @property
    def host_port(self) -> tuple[str, int, str]:
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("http", ""):
            raise ValueError(f"{self.name}: only http:// URLs are supported, got {self.url}")
        return u.hostname or "127.0.0.1", u.port or 80, u.path.rstrip("/")

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        host, port, _ = self.host_port
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def path(self, route: str) -> str:
        return self.host_port[2] + route

    def get_health(self, timeout: float = 5.0) -> tuple[int | None, str]:
        try:
            conn = self.connection(timeout)
            try:
                conn.request("GET", self.path("/health"))
                r = conn.getresponse()
                return r.status, r.read().decode("utf-8", "replace")
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            return None, f"{type(e).__name__}: {e}"

    def start(self, log_dir: Path, startup_timeout: float) -> None:
        """Starts the launch command on a free port and waits for /health."""
        port = free_port()
        cmd = self.command.replace("{port}", str(port))
        argv = shlex.split(cmd)
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{self.name}.log"
        print(f"[{self.name}] $ {cmd}\n[{self.name}] log: {self.log_path}", flush=True)
        log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = t0 + startup_timeout
        last = ""
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: the server exited with status {self.proc.returncode} before it "
                                   f"was ready; last log lines:\n{self.log_tail()}")
            status, body = self.get_health()
            if status == 200 or status == 404:
                self.startup_s = time.perf_counter() - t0
                self.health = parse_json_or_text(body) if status == 200 else "no /health (404)"
                print(f"[{self.name}] ready on {self.url} after {self.startup_s:.1f} s", flush=True)
                return
            last = f"{status}: {excerpt(body, 120)}"
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name}: /health did not answer 200 within {startup_timeout:.0f} s "
                           f"(last: {last}); last log lines:\n{self.log_tail()}")

    def wait_ready(self, startup_timeout: float) -> None:
        """For a running server: waits while /health answers 503 (loading), and up to 30 s while
        nothing answers; any other answer counts as up (the requests will tell)."""
        t0 = time.perf_counter()
        said = False
        while True:
            status, body = self.get_health()
            waited = time.perf_counter() - t0
            if status is None and waited > min(30.0, startup_timeout):
                raise RuntimeError(f"{self.name}: nothing answers at {self.url} ({body})")
            if status == 503 and waited > startup_timeout:
                raise RuntimeError(f"{self.name}: /health still answers 503 after {startup_timeout:.0f} s")
            if status is not None and status != 503:
                break
            if not said:
                print(f"[{self.name}] waiting for {self.url}/health ({status or body})", flush=True)
                said = True
            time.sleep(0.5)
        self.health = parse_json_or_text(body) if status == 200 else f"/health: {status} {excerpt(body, 200)}"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the group id is its pid
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        print(f"[{self.name}] stopped (exit status {self.proc.returncode})", flush=True)
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return "(no log)"


def no_nan(value):
    """NaN (no data) as null, so that the JSON file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [no_nan(v) for v in value]
    return value


def parse_json_or_text(body: str):
    try:
        return json.loads(body)
    except ValueError:
        return excerpt(body, 500)


# ----------------------------------------------------------------------------- one request

def image_part(path: str) -> dict:
    data = Path(path).read_bytes()
    mime = mimetypes.guess_type(path)[0] or "image/png"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


# --extra: fields merged into every request (e.g. {"ignore_eos": true, "stop": ["###"]}, which
# both llama-server and ours take, so that every answer runs to max_tokens on both sides).
EXTRA_FIELDS: dict = {}


def user_message(text: str, image: dict | None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [image, {"type": "text", "text": text}]}


def stream_chat(server: Server, messages: list[dict], max_tokens: int, timeout: float,
                model: str | None = None, seed: int | None = None,
                first_token: threading.Event | None = None) -> dict:
    """One streamed chat completion. Times are seconds from just before the connection opens
    (rec["t0"], perf_counter); `first_token` is set when the first content arrives."""
    body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "temperature": 0, "max_tokens": max_tokens}
    if model:
        body["model"] = model
    if seed is not None:
        body["seed"] = seed
    body.update(EXTRA_FIELDS)
    payload = json.dumps(body).encode()
    rec = {"ok": False, "status": None, "ttft": None, "chunk_times": [], "chunks": 0, "text": "",
           "completion_tokens": None, "prompt_tokens": None, "finish_reason": None, "timings": None,
           "error": None}
    t0 = time.perf_counter()
    rec["t0"] = t0
    conn = None
    try:
        conn = server.connection(timeout)
        conn.request("POST", server.path("/v1/chat/completions"), body=payload,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        rec["status"] = resp.status
        if resp.status != 200:
            rec["error"] = f"HTTP {resp.status}: {excerpt(resp.read())}"
            return rec
        ctype = resp.getheader("Content-Type", "")
        if "text/event-stream" not in ctype:
            # Not a stream: take the non-stream body (usage, timings) as it is.
            data = json.loads(resp.read())
            now = time.perf_counter() - t0
            msg = (data.get("choices") or [{}])[0].get("message", {}).get("content") or ""
            rec.update(text=msg, ttft=now, chunk_times=[now], chunks=1, timings=data.get("timings"),
                       finish_reason=(data.get("choices") or [{}])[0].get("finish_reason"))
            usage = data.get("usage") or {}
            rec["completion_tokens"] = usage.get("completion_tokens")
            rec["prompt_tokens"] = usage.get("prompt_tokens")
            rec["ok"] = True
            rec["note"] = f"server answered Content-Type {ctype!r}, not a stream"
            return rec
        done = False
        pieces = []
        while True:
            line = resp.readline()
            if not line:
                break
            now = time.perf_counter() - t0
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (": heartbeat"), event: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            try:
                event = json.loads(data)
            except ValueError:
                rec["error"] = f"unparsable event: {excerpt(data)}"
                return rec
            if "error" in event:
                rec["error"] = f"error event: {excerpt(json.dumps(event['error']))}"
                return rec
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    if rec["ttft"] is None:
                        rec["ttft"] = now
                        if first_token is not None:
                            first_token.set()
                    rec["chunk_times"].append(now)
                    pieces.append(content)
                if choice.get("finish_reason"):
                    rec["finish_reason"] = choice["finish_reason"]
            if event.get("usage"):
                rec["completion_tokens"] = event["usage"].get("completion_tokens")
                rec["prompt_tokens"] = event["usage"].get("prompt_tokens")
            if event.get("timings"):
                rec["timings"] = event["timings"]
        rec["text"] = "".join(pieces)
        rec["chunks"] = len(rec["chunk_times"])
        if not done:
            rec["error"] = "the stream ended without data: [DONE]"
            return rec
        rec["ok"] = True
        return rec
    except (OSError, http.client.HTTPException, ValueError) as e:
        rec["error"] = f"{type(e).__name__}: {excerpt(str(e))}"
        return rec
    finally:
        rec["total"] = time.perf_counter() - t0
        rec["tokens"] = rec["completion_tokens"] if rec["completion_tokens"] is not None else len(rec["chunk_times"])
        rec["token_count_from"] = "usage" if rec["completion_tokens"] is not None else "chunks"
        if conn is not None:
            conn.close()


# ----------------------------------------------------------------------------- load runs

def run_load(server: Server, n_clients: int, per_client: int, max_tokens: int, timeout: float,
             image: dict | None, model: str | None) -> dict:
    records: list[list[dict]] = [[] for _ in range(n_clients)]
    barrier = threading.Barrier(n_clients + 1)

    def client(i: int) -> None:
        barrier.wait()
        for j in range(per_client):
            k = (i * per_client + j) % len(PROMPTS)
            r = stream_chat(server, [user_message(PROMPTS[k], image)], max_tokens, timeout, model)
            r["client"], r["index"], r["prompt"] = i, j, k
            records[i].append(r)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [r for rs in records for r in rs]
    summary = summarise(flat, wall)
    summary["rss_mb"] = resident_mb(server)
    return {"clients": n_clients, "requests": len(flat), "wall_s": wall, "summary": summary, "records": flat}


def run_join(server: Server, n_streams: int, max_tokens: int, timeout: float, image: dict | None,
             model: str | None) -> dict:
    """Time between tokens of N running streams, first with nothing joining, then while
    requests with long prompts keep joining (one after another, each asking for one token).
    The gaps counted are those of the streams' steady part: from the last stream's first
    token to the first stream's end, so that the streams' own starts are not counted."""

    def streams(joining: bool) -> dict:
        records: list[dict | None] = [None] * n_streams
        firsts = [threading.Event() for _ in range(n_streams)]
        barrier = threading.Barrier(n_streams + 1)
        ended = threading.Event()
        joins: list[dict] = []

        def client(i: int) -> None:
            barrier.wait()
            records[i] = stream_chat(server, [user_message(PROMPTS[i % len(PROMPTS)], image)], max_tokens, timeout,
                                     model, first_token=firsts[i])
            ended.set()
            firsts[i].set()  # a failed stream must not hold the joiner

        def joiner() -> None:
            for e in firsts:
                e.wait()
            j = 0
            while not ended.is_set():
                # A different opening each time, so that no prefix cache serves the prompt.
                text = f"Request {j}. " + " ".join(PROMPTS) + " Answer the last question only."
                r = stream_chat(server, [user_message(text, None)], 1, timeout, model)
                joins.append(r)
                j += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n_streams)]
        if joining:
            threads.append(threading.Thread(target=joiner, daemon=True))
        for t in threads:
            t.start()
        barrier.wait()
        for t in threads:
            t.join()
        ok = [r for r in records if r and r["ok"] and len(r["chunk_times"]) >= 2]
        gaps: list[float] = []
        if len(ok) == n_streams:
            start = max(r["t0"] + r["chunk_times"][0] for r in ok)
            end = min(r["t0"] + r["chunk_times"][-1] for r in ok)
            for r in ok:
                ts = [r["t0"] + t for t in r["chunk_times"]]
                gaps += [(b - a) * 1000 for a, b in zip(ts, ts[1:]) if a >= start and b <= end]
        return {"gaps_ms": gaps, "gap_ms_p50": percentile(gaps, 50), "gap_ms_p95": percentile(gaps, 95),
                "gap_ms_max": max(gaps, default=float("nan")),
                "failures": sum(1 for r in records if not (r and r["ok"])) + sum(1 for r in joins if not r["ok"]),
                "joined": sum(1 for r in joins if r["ok"]),
                "join_prompt_tokens": mean([r["prompt_tokens"] for r in joins if r["prompt_tokens"] is not None]),
                "join_ttft_ms_p50": percentile([r["ttft"] * 1000 for r in joins if r["ttft"] is not None], 50)}

    quiet = streams(False)
    busy = streams(True)
    ratio = busy["gap_ms_p95"] / quiet["gap_ms_p50"] if quiet["gap_ms_p50"] == quiet["gap_ms_p50"] and \
        quiet["gap_ms_p50"] > 0 else float("nan")
    return {"streams": n_streams, "quiet": quiet, "joining": busy, "p95_joining_over_quiet_median": ratio}


def resident_mb(server: Server) -> float:
    """The peak resident set (VmHWM) of a launched server so far, in MiB; NaN for attached ones."""
    if server.proc is None:
        return float("nan")
    try:
        with open(f"/proc/{server.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def summarise(records: list[dict], wall: float) -> dict:
    ok = [r for r in records if r["ok"]]
    ttfts = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None]
    stream_rates, gaps = [], []
    for r in ok:
        ts = r["chunk_times"]
        gaps += [(b - a) * 1000 for a, b in zip(ts, ts[1:])]
        if len(ts) >= 2 and ts[-1] > ts[0]:
            stream_rates.append((r["tokens"] - 1) / (ts[-1] - ts[0]))
    tokens = sum(r["tokens"] for r in ok)
    failures = [r for r in records if not r["ok"]]
    return {
        "agg_tok_s": tokens / wall if wall > 0 else float("nan"),
        "completion_tokens": tokens,
        "tokens_per_request": mean([r["tokens"] for r in ok]),
        "tokens_min": min((r["tokens"] for r in ok), default=0),
        "tokens_max": max((r["tokens"] for r in ok), default=0),
        "prompt_tokens_mean": mean([r["prompt_tokens"] for r in ok if r["prompt_tokens"] is not None]),
        "ttft_ms_p50": percentile(ttfts, 50),
        "ttft_ms_p95": percentile(ttfts, 95),
        "stream_tok_s_mean": mean(stream_rates),
        "gap_ms_p50": percentile(gaps, 50),
        "gap_ms_p95": percentile(gaps, 95),
        "failures": len(failures),
        "failure_excerpts": sorted({excerpt(r["error"], 200) for r in failures})[:5],
        "no_first_token": sum(1 for r in ok if r["ttft"] is None),
        "token_count_from": sorted({r["token_count_from"] for r in ok}),
        "finish_reasons": {fr: sum(1 for r in ok if r["finish_reason"] == fr)
                           for fr in sorted({str(r["finish_reason"]) for r in ok})},
    }


def run_replay(server: Server, rounds: int, max_tokens: int, timeout: float, image: dict | None,
               model: str | None, pause: float = 0.0) -> dict:
    messages: list[dict] = []
    out = []
    for k in range(rounds):
        if k > 0 and pause > 0:
            time.sleep(pause)  # the user reads the answer and types the next question
        q = REPLAY_QUESTIONS[k % len(REPLAY_QUESTIONS)]
        messages.append(user_message(q, image if k == 0 else None))
        r = stream_chat(server, messages, max_tokens, timeout, model)
        t = r.get("timings") or {}
        out.append({"round": k + 1, "ok": r["ok"], "error": r["error"],
                    "ttft_ms": r["ttft"] * 1000 if r["ttft"] is not None else None,
                    "total_ms": r["total"] * 1000, "prompt_tokens": r["prompt_tokens"], "tokens": r["tokens"],
                    "cache_n": t.get("cache_n"), "prompt_n": t.get("prompt_n"), "timings": r["timings"]})
        # The answer the server gave goes into the history (a failed round adds an empty answer).
        messages.append({"role": "assistant", "content": r["text"] or " "})
    first, last = out[0]["ttft_ms"], out[-1]["ttft_ms"]
    return {"rounds": out, "ttft_last_over_first": (last / first) if first and last else None}


# ----------------------------------------------------------------------------- report

COLS = [("N", 3), ("agg tok/s", 10), ("TTFT p50", 9), ("TTFT p95", 9), ("stream tok/s", 12), ("gap p95", 8),
        ("tokens", 11), ("fail", 5), ("peak MiB", 9)]


def print_table(results: dict, servers: list[str], clients: list[int]) -> None:
    head = f"{'server':<12}" + "".join(f"{c:>{w + 1}}" for c, w in COLS)
    print("\n" + head + "\n" + "-" * len(head))
    for name in servers:
        for n in clients:
            run = results.get(name, {}).get("load", {}).get(str(n))
            if run is None:
                continue
            s = run["summary"]
            tok = f"{s['tokens_per_request']:.1f}" if s["tokens_per_request"] == s["tokens_per_request"] else "-"
            if s["tokens_min"] != s["tokens_max"]:
                tok += f"({s['tokens_min']}-{s['tokens_max']})"
            cells = [str(n), fmt(s["agg_tok_s"]), fmt(s["ttft_ms_p50"]), fmt(s["ttft_ms_p95"]),
                     fmt(s["stream_tok_s_mean"]), fmt(s["gap_ms_p95"]), tok, str(s["failures"]),
                     fmt(s.get("rss_mb", float("nan")))]
            print(f"{name:<12}" + "".join(f"{c:>{w + 1}}" for c, (_, w) in zip(cells, COLS)))
    print("(times in ms; tok/s from usage.completion_tokens where the server sent it; "
          "tokens: mean per request (min-max))")
    for name in servers:
        for n, run in results.get(name, {}).get("load", {}).items():
            for e in run["summary"]["failure_excerpts"]:
                print(f"  {name} N={n} failure: {e}")

    with_load = [s for s in servers if results.get(s, {}).get("load")]
    base = with_load[0] if with_load else servers[0]
    if with_load and base != servers[0]:
        print(f"\n({servers[0]} has no results; the ratios are against {base})")
    others = with_load[1:]
    if others:
        print(f"\nratios against {base} at the same N (agg and stream tok/s: higher is better for the server; "
              f"TTFT: lower is better)")
        print(f"{'server':<12}{'N':>4}{'agg tok/s':>11}{'TTFT p50':>10}{'stream tok/s':>13}")
        for name in others:
            for n in clients:
                a = results[name]["load"].get(str(n))
                b = results[base]["load"].get(str(n))
                if not a or not b:
                    continue
                a, b = a["summary"], b["summary"]

                def ratio(key):
                    x, y = a[key], b[key]
                    return fmt(x / y, 2) + "x" if x == x and y == y and y else "-"

                print(f"{name:<12}{n:>4}{ratio('agg_tok_s'):>11}{ratio('ttft_ms_p50'):>10}"
                      f"{ratio('stream_tok_s_mean'):>13}")


def print_join(results: dict, servers: list[str]) -> None:
    print("\njoining: time between tokens of the running streams (ms), quiet and while prompts join; the joining "
          "requests' prompt tokens and median TTFT (ms)")
    print(f"{'server':<12}{'N':>4}{'quiet p50':>10}{'quiet p95':>10}{'join p50':>9}{'join p95':>9}{'join max':>9}"
          f"{'joined':>7}{'prompt':>7}{'join TTFT':>10}{'p95/quiet p50':>14}")
    for name in servers:
        j = results.get(name, {}).get("join")
        if not j:
            continue
        q, b = j["quiet"], j["joining"]
        print(f"{name:<12}{j['streams']:>4}{fmt(q['gap_ms_p50']):>10}{fmt(q['gap_ms_p95']):>10}"
              f"{fmt(b['gap_ms_p50']):>9}{fmt(b['gap_ms_p95']):>9}{fmt(b['gap_ms_max']):>9}{b['joined']:>7}"
              f"{fmt(b['join_prompt_tokens']):>7}{fmt(b['join_ttft_ms_p50']):>10}"
              f"{fmt(j['p95_joining_over_quiet_median'], 2) + 'x':>14}")
        if q["failures"] or b["failures"]:
            print(f"  {name}: {q['failures'] + b['failures']} failed requests")


def print_replay(results: dict, servers: list[str]) -> None:
    for name in servers:
        rep = results.get(name, {}).get("replay")
        if not rep:
            continue
        print(f"\nreplay {name}: TTFT per round (ms), prompt tokens [cached tokens, where the server says]")
        for r in rep["rounds"]:
            cached = f" [cache {r['cache_n']}]" if r.get("cache_n") is not None else ""
            status = "" if r["ok"] else f"  FAILED: {r['error']}"
            ttft = fmt(r["ttft_ms"]) if r["ttft_ms"] is not None else "-"
            prompt = r["prompt_tokens"] if r["prompt_tokens"] is not None else "-"
            print(f"  round {r['round']}: TTFT {ttft:>8}  prompt {prompt}{cached}  "
                  f"tokens {r['tokens']}{status}")
        ratio = rep["ttft_last_over_first"]
        print(f"  round {len(rep['rounds'])} / round 1 TTFT: {fmt(ratio, 2) if ratio else '-'}")


# ----------------------------------------------------------------------------- main

class AppendServer(argparse.Action):
    """--server and --launch append to one list, so that their order is kept."""

    def __call__(self, parser, namespace, value, option_string=None):
        if "=" not in value:
            parser.error(f"{option_string} wants NAME=VALUE, got {value!r}")
        name, rest = value.split("=", 1)
        name, rest = name.strip(), rest.strip()
        if not name or not rest:
            parser.error(f"{option_string} wants NAME=VALUE, got {value!r}")
        specs = getattr(namespace, "servers", None) or []
        if any(s.name == name for s in specs):
            parser.error(f"server name {name!r} given twice")
        if option_string == "--launch":
            if "{port}" not in rest:
                parser.error(f"--launch {name}: the command has no {{port}}")
            specs.append(Server(name, command=rest))
        else:
            specs.append(Server(name, url=rest if "://" in rest else "http://" + rest))
        namespace.servers = specs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", action=AppendServer, dest="servers", metavar="NAME=URL",
                   help="a running server (repeatable)")
    p.add_argument("--launch", action=AppendServer, dest="servers", metavar="NAME=CMD",
                   help="a command line with {port} that starts a server (repeatable)")
    p.add_argument("--clients", default="1,2,4,8,16", help="concurrencies N, comma list (default 1,2,4,8,16)")
    p.add_argument("--requests-per-client", type=int, default=2, help="streamed requests per client (default 2)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests per server before the runs (default 1)")
    p.add_argument("--image", help="image file sent as a data-URI image_url part with every request")
    p.add_argument("--image-servers", help="comma list of the servers that get --image (default: all)")
    p.add_argument("--replay", type=int, default=0, metavar="R",
                   help="also run one R-round conversation per server (prefix caching), e.g. 6 (default off)")
    p.add_argument("--replay-pause", type=float, default=0.0, metavar="S",
                   help="seconds between a replay round's answer and the next round (a user reading and typing)")
    p.add_argument("--join", type=int, default=0, metavar="N",
                   help="after the load runs: N streams of --max-tokens, first alone, then while requests with "
                        "long prompts keep joining; reports their p95 time between tokens against the quiet median")
    p.add_argument("--check", action="store_true", help="smoke test: 1 request, max_tokens 4, per server")
    p.add_argument("--model", help="the 'model' field of the requests (default: left out)")
    p.add_argument("--extra", default="{}", help="JSON object merged into every request body, e.g. "
                   "'{\"ignore_eos\": true, \"stop\": [\"###\"]}' (default: none)")
    p.add_argument("--timeout", type=float, default=600, help="socket timeout per request, s (default 600)")
    p.add_argument("--startup-timeout", type=float, default=600,
                   help="how long a server may take to answer /health 200, s (default 600)")
    p.add_argument("--log-dir", help="where launched servers' output goes (default: a new directory in /tmp)")
    p.add_argument("--json", help="write all results (per-request records included) to this file")
    args = p.parse_args()
    try:
        extra = json.loads(args.extra)
    except json.JSONDecodeError as e:
        p.error(f"--extra: not JSON: {e}")
    if not isinstance(extra, dict):
        p.error("--extra: must be a JSON object")
    EXTRA_FIELDS.update(extra)

    servers: list[Server] = args.servers or []
    if not servers:
        p.error("give at least one --server NAME=URL or --launch NAME='CMD {port}'")
    try:
        clients = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        p.error(f"--clients: not a comma list of integers: {args.clients}")
    if not clients or min(clients) < 1 or args.requests_per_client < 1 or args.max_tokens < 1:
        p.error("--clients, --requests-per-client and --max-tokens must be positive")
    names = [s.name for s in servers]
    image = None
    if args.image:
        image = image_part(args.image)
        wanted = set(filter(None, (args.image_servers or ",".join(names)).split(",")))
        unknown = wanted - set(names)
        if unknown:
            p.error(f"--image-servers: unknown {', '.join(sorted(unknown))} (servers: {', '.join(names)})")
        for s in servers:
            s.image = s.name in wanted
    elif args.image_servers:
        p.error("--image-servers needs --image")
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="bench_serve_"))
    log_dir.mkdir(parents=True, exist_ok=True)

    report = {"config": {k: v for k, v in vars(args).items() if k != "servers"}, "prompts": PROMPTS,
              "cpus": os.cpu_count(), "load_before": os.getloadavg(), "servers": {}}
    results = report["servers"]
    failed_servers = []
    for s in servers:
        entry = results.setdefault(s.name, {"command": s.command, "url": s.url, "image": s.image})
        img = image if s.image else None
        try:
            if s.command:
                s.start(log_dir, args.startup_timeout)
                entry.update(url=s.url, log=str(s.log_path), startup_s=s.startup_s)
            else:
                s.wait_ready(args.startup_timeout)
            entry["health"] = s.health

            if args.check:
                r = stream_chat(s, [user_message(PROMPTS[0], img)], 4, args.timeout, args.model)
                entry["check"] = r
                if r["ok"] and r["ttft"] is not None:
                    print(f"[{s.name}] check OK: {r['tokens']} tokens ({r['token_count_from']}), TTFT "
                          f"{r['ttft'] * 1000:.1f} ms, text {excerpt(r['text'], 60)!r}", flush=True)
                else:
                    why = r["error"] or "no content token in the answer"
                    print(f"[{s.name}] check FAILED: {why}", flush=True)
                    failed_servers.append(s.name)
                continue

            for i in range(args.warmup):
                r = stream_chat(s, [user_message(PROMPTS[i % len(PROMPTS)], img)], args.max_tokens, args.timeout,
                                args.model)
                if not r["ok"]:
                    print(f"[{s.name}] warm-up request failed: {r['error']}", flush=True)
            entry["load"] = {}
            for n in clients:
                print(f"[{s.name}] N={n}: {n} x {args.requests_per_client} requests, max_tokens {args.max_tokens}, "
                      f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
                run = run_load(s, n, args.requests_per_client, args.max_tokens, args.timeout, img, args.model)
                sm = run["summary"]
                print(f"[{s.name}] N={n}: {sm['agg_tok_s']:.1f} tok/s, TTFT p50 {fmt(sm['ttft_ms_p50'])} ms, "
                      f"{sm['failures']} failed, {run['wall_s']:.1f} s", flush=True)
                entry["load"][str(n)] = run
            if args.join > 0:
                print(f"[{s.name}] join: {args.join} streams, quiet then joined", flush=True)
                entry["join"] = run_join(s, args.join, args.max_tokens, args.timeout, img, args.model)
            if args.replay > 0:
                print(f"[{s.name}] replay: {args.replay} rounds", flush=True)
                entry["replay"] = run_replay(s, args.replay, args.max_tokens, args.timeout, img, args.model,
                                             args.replay_pause)
        except (RuntimeError, ValueError, OSError) as e:
            print(f"[{s.name}] ERROR: {e}", flush=True)
            entry["error"] = str(e)
            failed_servers.append(s.name)
        except KeyboardInterrupt:
            s.stop()
            raise
        finally:
            s.stop()
            if s.log_path:
                entry["log_tail"] = s.log_tail(30)

    report["load_after"] = os.getloadavg()
    if not args.check:
        print_table(results, names, clients)
        if args.join > 0:
            print_join(results, names)
        if args.replay > 0:
            print_replay(results, names)
    if args.json:
        Path(args.json).write_text(json.dumps(no_nan(report), indent=1, default=str))
        print(f"\nwrote {args.json}")
    if failed_servers:
        print(f"servers with errors: {', '.join(failed_servers)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
