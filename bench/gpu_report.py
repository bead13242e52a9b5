"""The report of bench/gpu_check.sh, from what its steps left in its log folder (standard
library only: it must run even where the set-up failed).

    python bench/gpu_report.py LOG_DIR REPORT.md [--seconds N]

LOG_DIR holds steps.tsv (name, exit status, seconds, status, command per step), device,
environment.json, nvidia-smi.csv, test_cuda.xml (pytest's JUnit XML), the benchmarks' JSON files
(bench_criterion_VOCAB.json, bench_lm_model.json, bench_nmt_model.json, bench_kd.json) and each
step's log.
The goals and whether each was met come from the benchmarks' own JSON: this script states none.
"""

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

CRITERION_STEP = re.compile(r"criterion_(\d+)$")
TAIL_LINES = 25


def read_steps(log_dir):
    steps = []
    path = log_dir / "steps.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            name, rc, seconds, status, command = (line.split("\t") + [""] * 5)[:5]
            steps.append({"name": name, "rc": int(rc), "seconds": int(seconds),
                          "status": status, "command": command})
    return steps


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_summary(xml_path):
    """(counts, failures [(test, message)], skips {reason: count}) from pytest's JUnit XML."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return None, [], {}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures, skips = [], {}
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}".split(".")[-1]
        for kind in ("failure", "error"):
            for element in case.findall(kind):
                counts["failures" if kind == "failure" else "errors"] += 1
                message = (element.get("message") or "").strip().splitlines()
                failures.append((name, kind, message[0][:300] if message else ""))
        for element in case.findall("skipped"):
            counts["skipped"] += 1
            reason = (element.get("message") or "").strip()
            skips[reason] = skips.get(reason, 0) + 1
    counts["passed"] = (counts["tests"] - counts["failures"] - counts["errors"]
                        - counts["skipped"])
    return counts, failures, skips


def fmt(value, digits=3):
    return "" if value is None else f"{value:.{digits}f}"


def met_text(met):
    return {True: "yes", False: "**NO**", None: "for reference"}[met]


def goal_rows(log_dir, steps, device):
    """(measure, value, goal, met) for every goal the benchmarks decided on this device, and a
    'not measured' row for each benchmark step without results."""
    rows, by_name = [], {s["name"]: s for s in steps}
    names = [s["name"] for s in steps if CRITERION_STEP.match(s["name"])]
    for name in names:
        vocab = int(CRITERION_STEP.match(name).group(1))
        data = read_json(log_dir / f"bench_criterion_{vocab}.json")
        if data is None:
            rows.append((f"criterion, vocab {vocab}", "not measured", "", by_name[name]["status"]))
            continue
        for g in data["goals"]:
            if g["met"] is None:  # a goal stated for the other device, or the CPU clock on CUDA
                continue
            what = "time per update" if g["what"] == "time" else "peak memory"
            clock = f", {g['clock']} clock, paired median" if g["what"] == "time" else ""
            rows.append((f"`{g['config']}` / cross_entropy {what}, vocab {vocab}{clock}",
                         fmt(g["value"]), f"<= {g['limit']}", met_text(g["met"])))
    if "kd" in by_name:
        data = read_json(log_dir / "bench_kd.json")
        if data is None:
            rows.append(("kd_cross_entropy", "not measured", "", by_name["kd"]["status"]))
        for g in data["goals"] if data else []:
            what = "time per update" if g["what"] == "time" else "peak memory"
            clock = f", {g['clock']} clock, paired median" if g["what"] == "time" else ""
            rows.append((f"kd_cross_entropy `{g['config']}` / cross_entropy {what}{clock}",
                         fmt(g["value"]), f"<= {g['limit']}", met_text(g["met"])))
    for name, label in (("lm_model", "bench_lm_model.json"), ("nmt_model", "bench_nmt_model.json")):
        if name not in by_name:
            continue
        data = read_json(log_dir / label)
        if data is None:
            rows.append((name.replace("_", " "), "not measured", "", by_name[name]["status"]))
            continue
        for g in data["goals"]:
            goal = "" if g["limit"] is None else f"{g['op']} {g['limit']}"
            rows.append((g["what"], fmt(g["value"], 2), goal, met_text(g["met"])))
    return rows


def criterion_details(log_dir, steps):
    lines = []
    for step in steps:
        m = CRITERION_STEP.match(step["name"])
        data = m and read_json(log_dir / f"bench_criterion_{m.group(1)}.json")
        if not data:
            continue
        c = data["config"]
        lines.append(f"vocab {c['vocab']}, lstm_lm {c['embed']}/{c['hidden']}/{c['out_embed']}, "
                     f"{c['bsz']} x {c['tokens']} tokens, {c['steps']} timed rounds, amp "
                     f"{c['amp']}, memory: {data['memory_method']}:")
        lines.append("")
        lines.append("| criterion | wall ms/update (median) | peak MB | time / CE (paired) "
                     "| peak memory / CE |")
        lines.append("|---|---|---|---|---|")
        for name, r in data["criteria"].items():
            ratio = data["ratios"].get(name, {})
            lines.append(f"| {name} | {fmt(r['wall_ms_median'], 2)} | {fmt(r['peak_mb'], 1)} "
                         f"| {fmt(ratio.get('wall_time_paired_ratio_median'))} "
                         f"| {fmt(ratio.get('peak_memory_ratio'))} |")
        lines.append("")
    return lines


def model_details(log_dir):
    lines = []
    lm = read_json(log_dir / "bench_lm_model.json")
    if lm:
        t, s = lm["training_tokens_per_s"], lm["scoring_tokens_per_s"]
        lines.append(f"- LM (vocab {lm['config']['vocab']}): training tokens/s skd_lstm_lm "
                     f"{t['skd_lstm_lm']:.0f}, lstm_lm {t['lstm_lm']:.0f}; scoring tokens/s "
                     f"{s['skd_lstm_lm']:.0f} and {s['lstm_lm']:.0f}")
    nmt = read_json(log_dir / "bench_nmt_model.json")
    if nmt:
        t, g = nmt["training_tokens_per_s"], nmt["generation_sentences_per_s"]
        lines.append(f"- NMT (vocab {nmt['config']['vocab']}): training target tokens/s "
                     f"skd_bahdanau {t['skd_bahdanau']:.0f}, lstm {t['lstm']:.0f}; beam "
                     f"{nmt['config']['beam']} sentences/s {g['skd_bahdanau']:.2f} and "
                     f"{g['lstm']:.2f}")
    return lines


def render(log_dir, seconds):
    steps = read_steps(log_dir)
    device = (log_dir / "device").read_text().strip() if (log_dir / "device").exists() else "?"
    env = read_json(log_dir / "environment.json") or {}
    counts, failures, skips = test_summary(log_dir / "test_cuda.xml")
    rows = goal_rows(log_dir, steps, device)
    not_ok = [s for s in steps if s["rc"] != 0]
    goals_missed = [r for r in rows if r[3] in ("**NO**",) or r[1] == "not measured"]

    out = ["# GPU check (issue 9)", ""]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kind = {"cuda": "on the GPU", "cpu": "**a dry run on the CPU** (SKD_GPU_CHECK_ALLOW_CPU=1: "
            "tiny sizes, no GPU figures; the goals below are the CPU's)",
            "none": "**no GPU seen: the GPU steps were skipped**"}.get(device, device)
    out += [f"Made by `bench/gpu_check.sh` on {when}, {kind}, in {seconds} s. "
            f"Steps not ok: {len(not_ok)} of {len(steps)}; goals not met or not measured: "
            f"{len(goals_missed)} of {len(rows)}.", ""]

    out += ["## Environment", "", "```"]
    smi = log_dir / "nvidia-smi.csv"
    if smi.exists() and smi.read_text().strip():
        out.append(f"nvidia-smi: {smi.read_text().strip()}")
    for key in ("gpu", "capability", "gpu_memory_gib", "python", "executable", "platform",
                "torch", "torch_cuda", "cudnn", "cuda_available", "numpy", "numpy_from",
                "numpy_compat", "fairseq", "commit"):
        if key in env:
            out.append(f"{key}: {env[key]}")
    if not env:
        out.append("(environment.json missing: see gpu_check_logs/environment.log)")
    out += ["```", ""]

    out += ["## Tests: `tests/test_cuda.py`", ""]
    if counts is None:
        out.append("No result (test_cuda.xml missing): see gpu_check_logs/tests.log.")
    else:
        out.append(f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} "
                   f"errors, {counts['skipped']} skipped ({counts['tests']} in all).")
        for name, kind, message in failures:
            out.append(f"- {kind}: `{name}`: {message}")
        for reason, n in skips.items():
            out.append(f"- skipped ({n}): {reason}")
    out.append("")

    out += ["## Goals", "", "| measure | value | goal | met? |", "|---|---|---|---|"]
    out += [f"| {m} | {v} | {g} | {t} |" for m, v, g, t in rows]
    if not rows:
        out.append("| (no benchmark ran) | | | |")
    out.append("")
    details = criterion_details(log_dir, steps) + model_details(log_dir)
    if details:
        out += ["### Benchmark details", ""] + details + [""]

    out += ["## Steps", "", "| step | status | seconds | command |", "|---|---|---|---|"]
    for s in steps:
        out.append(f"| {s['name']} | {s['status']} | {s['seconds']} | `{s['command']}` |")
    out.append("")
    for s in not_ok:
        log = log_dir / f"{s['name']}.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            out += [f"### {s['name']}: last {len(tail)} lines of its log", "", "```", *tail,
                    "```", ""]
    out.append("Every step's full log: `gpu_check_logs/` beside this report.")
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--seconds", type=int, default=0, help="the whole run's duration")
    opts = parser.parse_args(argv)
    opts.report.write_text(render(opts.log_dir, opts.seconds))
    print(f"wrote {opts.report}")


if __name__ == "__main__":
    sys.exit(main())
