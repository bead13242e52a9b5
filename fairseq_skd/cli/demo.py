"""The offline SKD study: the paper's four LM variants on a generated corpus, one command.

    fairseq-skd-demo --out outputs/demo            # about 10 minutes on 2 CPU cores
    fairseq-skd-demo --smoke --out /tmp/demo       # a minute: tiny sizes, for CI

Trains Baseline, +Noise, +SKD and +Noise+SKD (paper Table 2) with the same seeds, data, model
and number of updates, on the synthetic near-synonym corpus of ``fairseq_skd.data.synthetic``,
then scores each best checkpoint on the test set with ``fairseq-eval-lm``. Writes to the output
folder: ``commands.sh`` (every command exactly as run), ``logs/`` (fairseq's JSON logs),
``results.md`` / ``results.csv``; prints the table at the end and says plainly which variants
did not beat the baseline. Uses the GPU when torch sees one.
"""

import argparse
import csv
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fairseq_skd.data.synthetic import write_lm_corpus

USER_DIR = str(Path(__file__).resolve().parents[1])
BIN = Path(sys.executable).parent

# The demo's budget is a few hundred updates, not the paper's tens of thousands, so K and eta
# are scaled down with it (the paper: K = 500, eta = 0.0002 on PTB); sigma is the paper's.
SKD_FLAGS = ["--criterion", "self_kd_cross_entropy", "--skd-sigma", "0.1"]
NOISE_STD = "0.1"
VARIANTS = {
    "baseline": ["--criterion", "cross_entropy"],
    # +Noise trains plain cross-entropy (alpha stays 0) with noisy decoder input embeddings.
    "noise": ["--criterion", "self_kd_cross_entropy", "--skd-alpha-max", "0",
              "--target-embed-noise", NOISE_STD],
    "skd": SKD_FLAGS,
    "noise_skd": SKD_FLAGS + ["--target-embed-noise", NOISE_STD],
}
VARIANT_NAMES = {"baseline": "Baseline", "noise": "+Noise", "skd": "+SKD",
                 "noise_skd": "+Noise+SKD"}
PAPER_TABLE2_PTB = {"baseline": 101.40, "noise": 101.28, "skd": 99.38, "noise_skd": 97.41}


class Study:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.commands = self.out / "commands.sh"

    def log(self, message):
        print(f"[fairseq-skd-demo {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def run(self, argv, log_file=None):
        """Run a command, record it in commands.sh, stream or capture its output."""
        with open(self.commands, "a") as f:
            line = shlex.join(argv)
            f.write(line + (f" 2>&1 | tee {shlex.quote(str(log_file))}" if log_file else "") + "\n")
        if log_file is None:
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"command failed ({proc.returncode}): {shlex.join(argv)}\n{proc.stderr[-3000:]}")
            return proc.stdout + proc.stderr
        with open(log_file, "w") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                log.write(line)
                if "| valid |" in line or "| train |" in line:
                    print("    " + summarize_log_line(line), flush=True)
            if proc.wait() != 0:
                sys.exit(f"command failed ({proc.returncode}); see {log_file}")
        return log_file.read_text()

    def prepare_data(self):
        data = self.out / "data"
        bin_dir = self.out / "data-bin"
        if (bin_dir / "dict.txt").exists():
            return bin_dir
        sizes = (600, 100, 100) if self.args.smoke else (8000, 500, 500)
        self.log(f"generating the synthetic corpus in {data} ({sizes[0]} training sentences)")
        write_lm_corpus(data, *sizes, seed=1)
        self.run([str(BIN / "fairseq-preprocess"), "--only-source",
                  "--trainpref", str(data / "train.txt"), "--validpref", str(data / "valid.txt"),
                  "--testpref", str(data / "test.txt"), "--destdir", str(bin_dir), "--workers", "1"])
        return bin_dir

    def train_flags(self, updates_per_epoch):
        a = self.args
        total = updates_per_epoch * a.epochs
        warmup = max(1, total // 4)
        # alpha reaches 1 two thirds of the way between K and the end of training
        alpha_step = 1.0 / max(1, (total - warmup) * 2 // 3)
        sizes = [] if a.smoke else ["--decoder-embed-dim", "128", "--decoder-hidden-size", "128",
                                    "--decoder-out-embed-dim", "128"]
        return ["--arch", a.arch, *sizes,
            "--task", "language_modeling", "--sample-break-mode", "eos",
            "--tokens-per-sample", "128", "--optimizer", "adam", "--lr", "0.002",
            "--clip-norm", "1.0", "--dropout", "0.2", "--max-tokens", str(a.max_tokens),
            "--required-batch-size-multiple", "1", "--update-epoch-batch-itr", "True",
            "--max-epoch", str(a.epochs), "--log-format", "json",
            "--log-interval", "10", "--no-progress-bar", "--num-workers", "0",
            "--no-epoch-checkpoints",
        ] + ([] if torch.cuda.is_available() else ["--cpu"]), [
            "--skd-warmup-updates", str(warmup), "--skd-alpha-step", f"{alpha_step:.6g}"]

    def train_and_score(self, bin_dir, variant, seed, base_flags, schedule_flags):
        name = f"{variant}-seed{seed}"
        save_dir = self.out / "checkpoints" / name
        log_file = self.out / "logs" / f"{name}.train.log"
        done = save_dir / "checkpoint_best.pt"
        if not done.exists() or "done training" not in (log_file.read_text() if log_file.exists() else ""):
            self.log(f"training {VARIANT_NAMES[variant]} (seed {seed})")
            self.run([str(BIN / "fairseq-train"), str(bin_dir), "--user-dir", USER_DIR,
                      "--save-dir", str(save_dir), "--seed", str(seed), *base_flags,
                      *VARIANTS[variant],
                      *(schedule_flags if "self_kd_cross_entropy" in VARIANTS[variant] else []),
                      *self.args.fairseq_args], log_file)
        train_log = log_file.read_text()
        result = {"variant": variant, "seed": seed}
        result.update(parse_training_log(train_log))
        result.update(self.score(bin_dir, done))
        return result

    def score(self, bin_dir, checkpoint):
        """Test-set NLL per sentence (nats, incl. </s>) and perplexity with fairseq-eval-lm."""
        output = self.run([str(BIN / "fairseq-eval-lm"), str(bin_dir), "--user-dir", USER_DIR,
                           "--path", str(checkpoint), "--gen-subset", "test",
                           "--sample-break-mode", "eos", "--tokens-per-sample", "128",
                           "--max-tokens", "4096", "--required-batch-size-multiple", "1",
                           *([] if torch.cuda.is_available() else ["--cpu"])])
        tokens = int(re.search(r"Evaluated (\d+) tokens", output).group(1))
        loss2 = float(re.search(r"Loss \(base 2\): ([\d.]+)", output).group(1))
        sentences = sum(1 for _ in open(self.out / "data" / "test.txt"))
        expected = sum(len(line.split()) + 1 for line in open(self.out / "data" / "test.txt"))
        if tokens != expected:
            sys.exit(f"fairseq-eval-lm scored {tokens} tokens, the test set has {expected}")
        return {"test_nll_per_sentence": loss2 * math.log(2) * tokens / sentences,
                "test_ppl": 2 ** loss2}

    def main(self):
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.commands.write_text("#!/usr/bin/env bash\n# Every command fairseq-skd-demo ran, in order.\nset -euo pipefail\n")
        device = "GPU: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        self.log(f"output folder {self.out}; device {device}")
        bin_dir = self.prepare_data()
        train_tokens = sum(len(line.split()) + 1 for line in open(self.out / "data" / "train.txt"))
        base_flags, schedule_flags = self.train_flags(max(1, train_tokens // a.max_tokens))
        results = [self.train_and_score(bin_dir, v, s, base_flags, schedule_flags)
                   for s in a.seeds for v in a.variants]
        write_tables(results, self.out)
        print((self.out / "results.md").read_text())


def summarize_log_line(line):
    record = json.loads(line[line.index("{"):])
    keys = ["epoch", "train_loss", "train_nll_loss", "valid_loss", "train_skd_alpha",
            "train_skd_qn", "train_skd_clip"]
    return "  ".join(f"{k}={record[k]}" for k in keys if k in record)


def parse_training_log(text):
    valid = [json.loads(l[l.index("{"):]) for l in text.splitlines() if "| valid |" in l]
    train = [json.loads(l[l.index("{"):]) for l in text.splitlines() if "| train |" in l]
    out = {"best_valid_loss": min(float(r["valid_loss"]) for r in valid),
           "updates": int(train[-1]["train_num_updates"])}
    for key in ("skd_qn", "skd_clip", "skd_alpha"):
        if f"train_{key}" in train[-1]:
            out[key] = float(train[-1][f"train_{key}"])
    return out


def write_tables(results, out):
    variants = list(dict.fromkeys(r["variant"] for r in results))
    rows = []
    for v in variants:
        runs = [r for r in results if r["variant"] == v]

        def stat(key, fmt):
            values = [r[key] for r in runs if key in r]
            if not values:
                return "-"
            if len(values) == 1:
                return fmt.format(values[0])
            return fmt.format(statistics.mean(values)) + " ± " + fmt.format(statistics.stdev(values))

        rows.append({"model": VARIANT_NAMES[v], "seeds": len(runs),
                     "test NLL/sentence": stat("test_nll_per_sentence", "{:.3f}"),
                     "test ppl": stat("test_ppl", "{:.3f}"),
                     "best valid loss (base 2)": stat("best_valid_loss", "{:.4f}"),
                     "final alpha": stat("skd_alpha", "{:.3f}"),
                     "mean q_n": stat("skd_qn", "{:.3f}"), "clip rate": stat("skd_clip", "{:.3f}"),
                     "paper PTB NLL": f"{PAPER_TABLE2_PTB[v]:.2f}", "_mean": statistics.mean(
                         r["test_nll_per_sentence"] for r in runs)})
    header = [k for k in rows[0] if not k.startswith("_")]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["variant", "seed", "test_nll_per_sentence",
                                               "test_ppl", "best_valid_loss", "updates",
                                               "skd_alpha", "skd_qn", "skd_clip"])
        writer.writeheader()
        for r in results:
            writer.writerow({k: r.get(k, "") for k in writer.fieldnames})
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows]
    baseline = next((r for r in rows if r["model"] == "Baseline"), None)
    if baseline is not None:
        lines.append("")
        for r in rows:
            if r is baseline:
                continue
            verdict = "beat" if r["_mean"] < baseline["_mean"] else "did NOT beat"
            lines.append(f"- {r['model']} {verdict} the baseline on test NLL per sentence "
                         f"({r['_mean']:.3f} vs {baseline['_mean']:.3f}).")
    lines.append("\nLM test NLL per sentence in nats (sum over each sentence's tokens incl. </s>, "
                 "mean over sentences, as in the paper's Table 2); the paper's PTB numbers are "
                 "beside ours for the row they correspond to, not as a target (different data).")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per seed per variant")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--arch", default=None, help="fairseq architecture of the LM (default "
                   "skd_lstm_lm with word dim 128 and 128 hidden units; skd_lstm_lm_tiny with --smoke)")
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (a minute or two)")
    p.add_argument("fairseq_args", nargs=argparse.REMAINDER,
                   help="after --: extra flags passed to every fairseq-train (e.g. -- --fp16)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.fairseq_args and args.fairseq_args[0] == "--":
        args.fairseq_args = args.fairseq_args[1:]
    if args.arch is None:
        args.arch = "skd_lstm_lm_tiny" if args.smoke else "skd_lstm_lm"
    if args.epochs is None:
        args.epochs = 2 if args.smoke else 8
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    Study(args).main()


if __name__ == "__main__":
    main()
