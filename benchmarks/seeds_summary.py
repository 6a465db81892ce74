#!/usr/bin/env python3
"""Mean and spread of the quickstart and the VPGTrans experiment over several seeds.

    for s in 0 1 2; do build/minigpt4 quickstart --seed $s --out runs/seeds/seed$s --vpgtrans; done
    python3 benchmarks/seeds_summary.py runs/seeds/seed*

Reads each folder's quickstart_summary.json and vpgtrans_summary.json and prints, per number,
every seed's value, the mean and the sample standard deviation (n - 1), in percent where the
number is an accuracy. Standard library only.
"""
import json
import os
import statistics
import sys


def load(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def curve_at(curve, step):
    for point in curve:
        if point["step"] == step:
            return point
    return None


def row(label, values, percent=True, digits=1):
    shown = [v for v in values if v is not None]
    scale = 100.0 if percent else 1.0
    cells = ["-" if v is None else f"{scale * v:.{digits}f}" for v in values]
    if len(shown) >= 2:
        mean = statistics.mean(shown) * scale
        sd = statistics.stdev(shown) * scale
        summary = f"{mean:.{digits}f} ± {sd:.{digits}f}"
    elif shown:
        summary = f"{scale * shown[0]:.{digits}f}"
    else:
        summary = "-"
    print(f"| {label} | " + " | ".join(cells) + f" | {summary} |")


def main(folders):
    quick = [load(f, "quickstart_summary.json") for f in folders]
    vpg = [load(f, "vpgtrans_summary.json") for f in folders]
    names = [os.path.basename(os.path.normpath(f)) for f in folders]
    print("| | " + " | ".join(names) + " | mean ± sd |")
    print("|---|" + "---:|" * (len(folders) + 1))

    def q(path):
        out = []
        for s in quick:
            v = s
            for key in path:
                v = None if v is None else v.get(key)
            out.append(v)
        return out

    row("held-out accuracy, with the image", q(["accuracy"]))
    row("held-out accuracy, blind", q(["blind_accuracy"]))
    row("gain (points)", [None if s is None else s["accuracy"] - s["blind_accuracy"] for s in quick])
    for attribute in ("colour", "count", "position", "shape"):
        row(f"  {attribute}", q(["per_attribute", "seeing", attribute]))
    row("stage-1 final loss", q(["stage1_loss"]), percent=False, digits=3)
    row("stage-2 final loss", q(["stage2_loss"]), percent=False, digits=3)

    if not any(vpg):
        return
    print()
    print("| VPGTrans | " + " | ".join(names) + " | mean ± sd |")
    print("|---|" + "---:|" * (len(folders) + 1))

    def curve_values(run, step):
        out = []
        for s in vpg:
            point = None if s is None else curve_at(s[run]["curve"], step)
            out.append(None if point is None else point["accuracy"])
        return out

    steps = sorted({p["step"] for s in vpg if s for p in s["transfer"]["curve"]})
    row("blind (second LLM)", [None if s is None else s["scratch"].get("blind_accuracy") for s in vpg])
    for step in (0, 800, 1600):
        row(f"from scratch, step {step}", curve_values("scratch", step))
    for step in steps:
        row(f"transfer, step {step}", curve_values("transfer", step))
    for step in steps:
        row(f"fresh projector, step {step}", curve_values("transfer_random_projector", step))
    row("transfer best", [None if s is None else s["result"]["transfer_best_accuracy"] for s in vpg])
    row("transfer steps to the scratch final",
        [None if s is None else s["result"]["transfer_steps_to_reach"] for s in vpg], percent=False, digits=0)
    row("fresh projector steps to the scratch final",
        [None if s is None else s["result"]["random_projector_steps_to_reach"] for s in vpg], percent=False, digits=0)


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/quickstart"])
