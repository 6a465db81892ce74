#!/usr/bin/env python3
"""Resident memory of `minigpt4 serve` idle and with 16 busy slots, against the KV-cache bytes
its /metrics reports (issue: the server's memory must stay within the KV budget it reports).

    .venv/bin/python benchmarks/serve_memory.py EVAL.yaml      (from the repository root)

Starts the server with --parallel 16 --metrics, waits until /health is 200, reads VmRSS, sends
16 concurrent requests of 160 tokens (ignore_eos), samples VmRSS and minigpt4:kv_cache_bytes
every 0.2 s, and prints the idle and peak RSS, the peak KV bytes reported, the prefix cache's
bytes at the end, and the largest growth beyond the caches /metrics reports in the same sample.
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
def gauges():
    m = {l.split()[0]: float(l.split()[1]) for l in get("/metrics").splitlines() if l and not l.startswith("#")}
    return m, sum(m[f"minigpt4:{k}"] for k in ("kv_cache_bytes", "prefix_cache_bytes", "image_cache_bytes"))
# Each sample reads RSS and the caches' gauges together: the excess is what the process holds
# beyond the caches it reports (per-step buffers, the allocator's free lists).
peak_rss, peak_kv, peak_slots, peak_excess, excess_at = idle, 0, 0, float("-inf"), None
while any(t.is_alive() for t in threads):
    r = rss(); m, held = gauges(); r = max(r, rss())
    kv = m["minigpt4:kv_cache_bytes"]
    if r > peak_rss: peak_rss = r
    if kv > peak_kv: peak_kv, peak_slots = kv, m["minigpt4:requests_processing"]
    if r - idle - held > peak_excess: peak_excess, excess_at = r - idle - held, (r - idle, held)
    time.sleep(0.2)
for t in threads: t.join()
time.sleep(1)
m, held = gauges(); r = rss()
mib = lambda b: b / 2**20
print(f"idle RSS {mib(idle):.0f} MiB, peak RSS {mib(peak_rss):.0f} MiB (+{mib(peak_rss-idle):.0f} MiB); "
      f"peak KV reported {mib(peak_kv):.0f} MiB with {peak_slots:.0f} answers in slots; "
      f"prefix cache {mib(m['minigpt4:prefix_cache_bytes']):.0f} MiB at the end")
print(f"largest growth beyond the reported caches (KV in slots + prefix cache + image cache, same sample): "
      f"{mib(peak_excess):.0f} MiB (growth {mib(excess_at[0]):.0f} MiB, caches {mib(excess_at[1]):.0f} MiB); "
      f"after the answers: growth {mib(r-idle):.0f} MiB, caches {mib(held):.0f} MiB")
p.terminate(); p.wait()
