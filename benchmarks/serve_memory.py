#!/usr/bin/env python3
"""Resident memory of `minigpt4 serve` idle and with 16 busy slots, against the KV-cache bytes
its /metrics reports (issue: the server's memory must stay within the KV budget it reports).

    .venv/bin/python benchmarks/serve_memory.py EVAL.yaml      (from the repository root)

Starts the server with --parallel 16 --metrics, waits until /health is 200, reads VmRSS, sends
16 concurrent requests of 160 tokens (ignore_eos), samples VmRSS and minigpt4:kv_cache_bytes
every 0.5 s, and prints the idle and peak RSS, the peak KV bytes reported and the prefix
cache's bytes at the end.
"""
import json, subprocess, threading, time, urllib.request, os, sys
cfg, port = sys.argv[1], 18555
p = subprocess.Popen(["build/minigpt4", "serve", "--cfg-path", cfg, "--port", str(port), "--parallel", "16",
                      "--threads", "2", "--metrics", "--max-tokens", "2048"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss():
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
def get(path):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=600).read().decode()
while True:
    try:
        get("/health"); break
    except Exception: time.sleep(1)
time.sleep(2)
idle = rss()
def ask(i):
    body = json.dumps({"messages": [{"role": "user", "content": f"Question number {i}: tell me a long story."}],
                       "max_tokens": 160, "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=3600).read()
threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
for t in threads: t.start()
peak_rss, peak_kv, peak_slots = idle, 0, 0
while any(t.is_alive() for t in threads):
    m = {l.split()[0]: float(l.split()[1]) for l in get("/metrics").splitlines() if l and not l.startswith("#")}
    kv = m["minigpt4:kv_cache_bytes"]; r = rss()
    if r - idle > peak_rss - idle: peak_rss = r
    if kv > peak_kv: peak_kv, peak_slots = kv, m["minigpt4:requests_processing"]
    time.sleep(0.5)
for t in threads: t.join()
m = {l.split()[0]: float(l.split()[1]) for l in get("/metrics").splitlines() if l and not l.startswith("#")}
print(f"idle RSS {idle/2**20:.0f} MiB, peak RSS {peak_rss/2**20:.0f} MiB (+{(peak_rss-idle)/2**20:.0f} MiB); "
      f"peak KV reported {peak_kv/2**20:.0f} MiB with {peak_slots:.0f} answers in slots; "
      f"prefix cache {m['minigpt4:prefix_cache_bytes']/2**20:.0f} MiB at the end")
p.terminate(); p.wait()
