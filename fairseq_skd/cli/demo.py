"""The offline SKD study: the paper's four variants for a language model and a translation
model, one command.

    fairseq-skd-demo --out outputs/demo            # ~15 minutes on 2 CPU cores: both tasks,
                                                   # seeds 1 2 3, mean and spread over them
    fairseq-skd-demo --task lm --seeds 1           # one seed of the LM: about a minute
    fairseq-skd-demo --smoke --out /tmp/demo       # a couple of minutes: tiny sizes, for CI

For each task it trains Baseline, +Noise, +SKD and +Noise+SKD (paper Tables 2 and 3) with the
same data, model, seeds and number of updates, on corpora generated offline by
``fairseq_skd.data.synthetic`` (English-like sentences whose words have near-synonyms; for
translation a made-up target language with synonyms of its own). It scores the LM with
``fairseq-skd-score-lm`` (test NLL per sentence) and the translation model with
``fairseq-generate`` (beam 1 and 12) and ``fairseq-skd-bleu``, and both with the prediction
diagnostics of ``fairseq-skd-score-lm`` / ``fairseq-skd-score-mt`` (the translation model
teacher-forced on the reference), measures each variant's median q_n and clip rate on the test
set, and writes to the output folder:

    commands.sh                      every command as it was run, to re-run any row by hand
    results.md, results.csv          the tables (mean +- std over seeds), printed at the end:
                                     per task the scores, then the prediction diagnostics
    <task>/reliability.png           the test set's reliability diagram, seeds pooled
    <task>/seed<N>/<variant>/        train.log (fairseq's full JSON log), checkpoints, scores
    <task>/seed<N>/results.md, *.png fairseq-skd-collect's tables and figures (alpha schedule
                                     and q_n trajectory, validation curves, reliability
                                     diagram) for that seed

It says plainly which variant did not beat the baseline, except with --smoke, whose numbers are
a plumbing check. The terminal shows which variant trains, a line per epoch with the time left,
the tables and where the output is; a failing step ends the study with the last lines of its
output. Uses the GPU when torch sees one.
"""

import argparse
import collections
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fairseq_skd.cli.requirements import require_packages
from fairseq_skd.cli.train import fairseq_train_problems, option_value
from fairseq_skd.data.synthetic import write_lm_corpus, write_parallel_corpus
from fairseq_skd.evaluation.qn import measure_qn_on_test_set
from fairseq_skd.evaluation.scoring import TOOLS as SCORE_TOOLS
from fairseq_skd.results import diagnostics, figures, layout, paper
from fairseq_skd.results.logs import EpochProgress, parse_log, training_summary
from fairseq_skd.results.tables import Column, markdown_table, text, write_results
from fairseq_skd.variants import ABLATIONS, ALL_NAMES, VARIANTS, criterion_flags, uses_skd_criterion

USER_DIR = str(Path(__file__).resolve().parents[1])
BIN = Path(sys.executable).parent
TAIL_LINES = 15  # of a failing command's output, printed with the error
INDENT = " " * 11  # under the text of a "[HH:MM:SS] " line
SMOKE_NOTE = ("tiny corpora and models, a plumbing check that every step runs; its numbers say "
              "nothing about SKD, and no variant is compared with the baseline.")
SIGMA = 0.1  # the paper's
QN_MAX = 0.5
NOISE_STD = 0.1  # ours: the paper does not give its noise level

# Sizes and budgets (ours; the paper's are in the recipes). The demo's budget is a few hundred
# updates, not the paper's tens of thousands, so K and eta are scaled with it: SKD starts after
# a quarter of the updates and alpha reaches 1 two thirds of the way from there to the end.
TASK_SETTINGS = {
    "lm": {
        "corpus": (6000, 400, 400), "smoke_corpus": (600, 100, 100), "epochs": 6, "smoke_epochs": 2,
        # W's init std gives rows ~12.8 apart at word dim 128 (as the preset's 0.4 at dim 500),
        # so q_n starts below the clip at the paper's sigma
        "arch": ["--arch", "skd_lstm_lm", "--decoder-embed-dim", "128",
                 "--decoder-hidden-size", "128", "--decoder-out-embed-dim", "128",
                 "--decoder-out-embed-std", "0.8"],
        "smoke_arch": ["--arch", "skd_lstm_lm_tiny"],
        "train": ["--task", "language_modeling", "--sample-break-mode", "eos",
                  "--tokens-per-sample", "128", "--optimizer", "adam", "--lr", "0.002",
                  "--clip-norm", "1.0", "--dropout", "0.2", "--max-tokens", "2000"],
    },
    "mt": {
        "corpus": (3000, 200, 200), "smoke_corpus": (300, 40, 40), "epochs": 12, "smoke_epochs": 2,
        "arch": ["--arch", "skd_bahdanau", "--encoder-embed-dim", "64", "--encoder-hidden-size",
                 "64", "--decoder-embed-dim", "64", "--decoder-hidden-size", "96",
                 "--decoder-attention-dim", "64", "--decoder-out-embed-dim", "64"],
        "smoke_arch": ["--arch", "skd_bahdanau_tiny"],
        "train": ["--task", "translation", "--source-lang", "en", "--target-lang", "xx",
                  "--optimizer", "adam", "--lr", "0.005", "--clip-norm", "1.0",
                  "--dropout", "0.1", "--max-tokens", "1000",
                  # validation BLEU per epoch for the Fig. 4 curves; checkpoints still by loss
                  "--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}'],
    },
}


class Study:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.commands = self.out / "commands.sh"
        self.device_flags = [] if torch.cuda.is_available() else ["--cpu"]
        self.runs_done, self.runs_total = 0, len(args.tasks) * len(args.seeds) * len(args.variants)

    def say(self, message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def show(self, path):
        """``path`` as a person finds it: relative to the output folder."""
        try:
            return str(Path(path).relative_to(self.out))
        except ValueError:
            return str(path)

    def run(self, argv, what, log_file=None, epochs=None):
        """Run a command (``what`` it does, for an error) and record it in commands.sh. With
        ``log_file``, its output is appended there and a line printed for each finished epoch
        (``epochs``: the last one, for the time estimate); otherwise it is returned. A failing
        command ends the study with its last lines of output."""
        argv = [str(a) for a in argv]
        with open(self.commands, "a") as f:
            if log_file is None:
                f.write(shlex.join(argv) + "\n")
            else:
                log = shlex.quote(str(log_file))
                f.write(f"mkdir -p {shlex.quote(str(log_file.parent))} && {shlex.join(argv)} "
                        f"2>&1 | tee -a {log}\n")
        if log_file is None:
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                self.fail(what, argv, proc.returncode, (proc.stdout + proc.stderr).splitlines())
            return proc.stdout
        last_lines = collections.deque(maxlen=TAIL_LINES)
        progress = EpochProgress(epochs)
        with open(log_file, "a") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                log.write(line)
                last_lines.append(line.rstrip("\n"))
                epoch_line = progress.feed(line)
                if epoch_line:
                    print(f"{INDENT}{epoch_line}", flush=True)
        if proc.wait() != 0:
            self.fail(what, argv, proc.returncode, last_lines, log_file)
        return None

    def fail(self, what, argv, status, output_lines, log_file=None):
        lines = [line for line in output_lines if line.strip()][-TAIL_LINES:]
        where = f" (all of it in {log_file})" if log_file else ""
        sys.exit(f"fairseq-skd-demo: error: {what} failed: {Path(argv[0]).name} exited with "
                 f"status {status}. The last lines of its output{where}:\n"
                 + "".join(f"    {line}\n" for line in lines or ["(no output)"])
                 + f"The command (also in {self.commands}):\n    {shlex.join(argv)}")

    # --- data ------------------------------------------------------------------------------

    def prepare(self, task):
        spec = TASK_SETTINGS[task]
        data, bin_dir = self.out / task / "data", self.out / task / "data-bin"
        if (bin_dir / ".done").exists():
            return data, bin_dir
        sizes = spec["smoke_corpus"] if self.args.smoke else spec["corpus"]
        self.say(f"{task}: generating a synthetic corpus of {sizes[0]} training sentences in "
                 f"{self.show(data)}")
        preprocess = [BIN / "fairseq-preprocess", "--destdir", bin_dir, "--workers", "1"]
        if task == "lm":
            write_lm_corpus(data, *sizes, seed=1)
            self.run(preprocess + ["--only-source", "--trainpref", data / "train.txt",
                                   "--validpref", data / "valid.txt", "--testpref", data / "test.txt"],
                     f"{task}: binarizing the corpus")
        else:
            write_parallel_corpus(data, *sizes, seed=1)
            self.run(preprocess + ["--source-lang", "en", "--target-lang", "xx",
                                   "--trainpref", data / "train", "--validpref", data / "valid",
                                   "--testpref", data / "test"], f"{task}: binarizing the corpus")
        (bin_dir / ".done").touch()
        return data, bin_dir

    # --- training and scoring ----------------------------------------------------------------

    def train_flags(self, task, data):
        spec = TASK_SETTINGS[task]
        epochs = self.args.epochs or spec["smoke_epochs" if self.args.smoke else "epochs"]
        max_tokens = int(spec["train"][spec["train"].index("--max-tokens") + 1])
        train_file = data / ("train.txt" if task == "lm" else "train.xx")
        tokens = sum(len(line.split()) + 1 for line in open(train_file))
        per_epoch = max(1, tokens // max_tokens)
        total = per_epoch * epochs
        warmup = max(1, total // 4)
        alpha_step = 1.0 / max(1, (total - warmup) * 2 // 3)
        flags = [*spec["smoke_arch" if self.args.smoke else "arch"], *spec["train"],
                 "--max-epoch", epochs, "--required-batch-size-multiple", "1",
                 "--update-epoch-batch-itr", "True", "--log-format", "json",
                 "--log-interval", max(1, per_epoch // 5),
                 "--no-progress-bar", "--num-workers", "0", "--keep-last-epochs", "2",
                 *self.device_flags]
        return flags, (warmup, f"{alpha_step:.6g}")

    def train_command(self, bin_dir, save_dir, variant, seed, flags, schedule):
        """fairseq-train's command line (without the program) for one run."""
        return [bin_dir, "--user-dir", USER_DIR, "--save-dir", save_dir, "--seed", seed, *flags,
                *criterion_flags(variant, SIGMA, *schedule, NOISE_STD), *self.args.fairseq_args]

    def train(self, task, bin_dir, exp_dir, variant, seed, flags, schedule):
        save_dir = exp_dir / variant
        log_file = save_dir / layout.TRAIN_LOG
        self.runs_done += 1
        name = (f"{task}, seed {seed}: {ALL_NAMES[variant]} "
                f"(run {self.runs_done} of {self.runs_total})")
        if (save_dir / ".trained").exists():
            self.say(f"{name}: trained before, reused ({self.show(save_dir)})")
            return save_dir
        save_dir.mkdir(parents=True, exist_ok=True)
        argv = [BIN / "fairseq-skd-train", "--nproc", self.args.nproc,
                *self.train_command(bin_dir, save_dir, variant, seed, flags, schedule)]
        epochs = int(option_value([str(a) for a in argv], "--max-epoch"))
        self.say(f"{name}: training {epochs} epochs, fairseq's log in {self.show(log_file)}")
        self.run(argv, f"training {ALL_NAMES[variant]} ({task}, seed {seed})", log_file, epochs)
        (save_dir / ".trained").touch()
        return save_dir

    def score_test_set(self, task, bin_dir, save_dir):
        """fairseq-skd-score-lm / -mt on the test set (translation teacher-forced on the
        reference): the NLL, the prediction diagnostics and the reliability table."""
        result = save_dir / layout.score_file("test")
        if not result.exists():
            self.run([BIN / SCORE_TOOLS[task], bin_dir, "--path", save_dir / "checkpoint_best.pt",
                      "--subset", "test", "--json", result, *self.device_flags],
                     f"scoring {self.show(save_dir)} on the test set")
        score = json.loads(result.read_text())
        values = {key: score.get(key) for key in diagnostics.SCORE_KEYS}
        values["reliability"] = score.get("reliability")
        if task == "lm":
            values.update(test_nll_per_sentence=score["nll_per_sentence"], test_ppl=score["ppl"])
        return values

    def score_mt(self, data, bin_dir, save_dir):
        scores = {}
        for beam in layout.BEAMS:
            result = save_dir / layout.bleu_file("test", beam)
            if not result.exists():
                generated = save_dir / f"generate_test_beam{beam}.txt"
                output = self.run([BIN / "fairseq-generate", bin_dir, "--user-dir", USER_DIR,
                                   "--path", save_dir / "checkpoint_best.pt", "--gen-subset", "test",
                                   "--beam", beam, "--max-tokens", "4000",
                                   "--max-len-a", "1.2", "--max-len-b", "10",
                                   "--required-batch-size-multiple", "1", *self.device_flags],
                                  f"translating the test set with {self.show(save_dir)}, beam {beam}")
                generated.write_text(output)
                self.run([BIN / "fairseq-skd-bleu", "--generate-output", generated,
                          "--reference", data / "test.xx", "--bpe", "none",
                          "--detokenize-lang", "none", "--json", result],
                         f"BLEU of {self.show(generated)}")
            scores[f"test_bleu_beam{beam}"] = json.loads(result.read_text())["bleu"]
        return scores

    def run_task(self, task):
        data, bin_dir = self.prepare(task)
        flags, schedule = self.train_flags(task, data)
        results = []
        for seed in self.args.seeds:
            exp_dir = self.out / task / f"seed{seed}"
            for variant in self.args.variants:
                save_dir = self.train(task, bin_dir, exp_dir, variant, seed, flags, schedule)
                result = {"task": task, "variant": variant, "seed": seed}
                if task == "mt":
                    result.update(self.score_mt(data, bin_dir, save_dir))
                result.update(self.score_test_set(task, bin_dir, save_dir))
                result.update(measure_qn_on_test_set(save_dir / "checkpoint_best.pt", bin_dir,
                                                     SIGMA, QN_MAX))
                result.update(training_columns(variant, save_dir / layout.TRAIN_LOG))
                print(f"{INDENT}{test_line(result)}", flush=True)
                results.append(result)
            self.run([BIN / "fairseq-skd-collect", exp_dir, "--task", task, "--experiment",
                      f"{task}/seed{seed}", "--subsets", "test", "--no-paper"],
                     f"collecting {self.show(exp_dir)}")
            self.say(f"{task}, seed {seed}: tables and figures in {self.show(exp_dir)}/: "
                     + ", ".join(p.name for p in per_seed_outputs(exp_dir)))
        return results

    def main(self):
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.commands.write_text("#!/usr/bin/env bash\n# Every command fairseq-skd-demo ran, "
                                 "in order.\nset -euo pipefail\n")
        device = "GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        self.say(f"fairseq-skd-demo: the offline SKD study in {self.out.resolve()} ({device}; tasks "
                 f"{' '.join(a.tasks)}; seeds {' '.join(map(str, a.seeds))}; variants "
                 f"{', '.join(ALL_NAMES[v] for v in a.variants)})")
        if a.smoke:
            self.say(f"--smoke: {SMOKE_NOTE}")
        results = [r for task in a.tasks for r in self.run_task(task)]
        drawn = write_reliability_diagrams(results, self.out)
        write_tables(results, self.out, a.smoke, drawn)
        print("\n" + (self.out / "results.md").read_text(), end="")
        print(self.where(), flush=True)

    def where(self):
        """Where everything is, as the last thing the study prints."""
        rows = [("results.md, results.csv", "the tables above")]
        rows += [(f"{task}/reliability.png", "the test set's reliability diagram, seeds pooled")
                 for task in self.args.tasks if (self.out / task / "reliability.png").exists()]
        for task in self.args.tasks:
            for seed in self.args.seeds:
                exp_dir = self.out / task / f"seed{seed}"
                rows.append((f"{self.show(exp_dir)}/", "this seed's table (results.md, .csv) and "
                             "figures: " + ", ".join(p.name for p in per_seed_outputs(exp_dir)
                                                     if p.suffix == ".png")))
        rows += [("<task>/seed<N>/<variant>/", f"fairseq's full log ({layout.TRAIN_LOG}), "
                  "checkpoints, score files"),
                 ("commands.sh", "every command as it was run, to re-run any step by hand")]
        width = max(len(name) for name, _ in rows)
        return (f"\nThe study's output is in {self.out.resolve()}/:\n"
                + "".join(f"  {name:<{width}}  {what}\n" for name, what in rows))


def per_seed_outputs(exp_dir):
    """fairseq-skd-collect's files in one seed's folder."""
    return sorted(p for p in Path(exp_dir).iterdir() if p.is_file() and p.name.startswith(
        ("results.", "fig", "valid_loss", "reliability")))


def test_line(result):
    """A trained variant's test-set numbers, printed under its epochs."""
    if result["task"] == "lm":
        score = (f"test NLL/sentence {result['test_nll_per_sentence']:.2f} "
                 f"(ppl {result['test_ppl']:.2f})")
    else:
        score = "test BLEU " + ", ".join(f"{result[f'test_bleu_beam{b}']:.2f} (beam {b})"
                                         for b in layout.BEAMS)
    return (f"{score}; on the test set: median q_n {result['median_qn']:.3f}, "
            f"clip rate {result['clip_rate']:.3f}")


def training_columns(variant, log_file):
    """best_valid_loss, best_epoch, train_valid_gap, updates and final_alpha of a training
    (None where its log has none)."""
    summary = training_summary(parse_log(log_file))
    alpha = summary["alpha"]
    if alpha is None and not uses_skd_criterion(variant):
        alpha = 0.0  # fairseq's cross_entropy logs no alpha: it trains with none
    return {"best_valid_loss": summary["best_valid_loss"], "best_epoch": summary["best_epoch"],
            "train_valid_gap": summary["train_valid_gap"], "updates": summary["updates"],
            "final_alpha": alpha}


METRICS = {
    "lm": [("test_nll_per_sentence", "test NLL/sentence", "{:.3f}", "lower"),
           ("test_ppl", "test ppl", "{:.3f}", None)],
    "mt": [("test_bleu_beam1", "test BLEU beam 1", "{:.2f}", "higher"),
           ("test_bleu_beam12", "test BLEU beam 12", "{:.2f}", "higher")],
}
# The paper's numbers for the same rows, beside ours as a reference point (different data).
PAPER_COLUMNS = {"lm": "paper: PTB NLL/sentence", "mt": "paper: En-Fi test BLEU beam 1 / 12"}


def paper_cell(task, variant):
    if task == "lm":
        values = [paper.nll_per_sentence("ptb", variant)]
    else:
        values = [paper.bleu("wmt15_en_fi", variant, beam) for beam in layout.BEAMS]
    return "-" if None in values else " / ".join(f"{v:.2f}" for v in values)


TRAINING_COLUMNS = [("best_valid_loss", "best valid loss (base 2)", "{:.4f}"),
                    ("final_alpha", "final alpha", "{:.3f}"), ("median_qn", "median q_n", "{:.3f}"),
                    ("clip_rate", "clip rate", "{:.3f}")]


def mean_and_spread(values, fmt):
    if None in values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    spread = fmt.replace("{:+", "{:")  # a signed mean, an unsigned spread
    return f"{fmt.format(statistics.mean(values))} ± {spread.format(statistics.stdev(values))}"


def verdict(variant, values, baseline, metric, fmt, better):
    """One plain line: did the variant beat the baseline, and is the difference larger than
    the spread over seeds (the larger of the two standard deviations)?"""
    value, base = statistics.mean(values), statistics.mean(baseline)
    if fmt.format(value) == fmt.format(base):
        return f"- {variant} tied with the baseline on {metric} ({fmt.format(value)})."
    won = value < base if better == "lower" else value > base
    line = (f"- {variant} {'beat' if won else 'did NOT beat'} the baseline on {metric} "
            f"({fmt.format(value)} vs {fmt.format(base)})")
    if len(values) > 1 and len(baseline) > 1:
        spread = max(statistics.stdev(values), statistics.stdev(baseline))
        if abs(value - base) <= spread:
            line += f", but by less than the spread over seeds ({fmt.format(spread)}): no clear difference"
    else:
        line += "; one seed, so no spread to tell a difference from noise"
    return line + "."


CSV_FIELDS = ["task", "variant", "seed", "test_nll_per_sentence", "test_ppl", "test_bleu_beam1",
              "test_bleu_beam12", "best_valid_loss", "updates", "final_alpha", "median_qn",
              "clip_rate", "median_distance", *(key for key, _, _ in diagnostics.COLUMNS)]


def seeds_said(seeds):
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {' '.join(map(str, seeds))}"


def write_reliability_diagrams(results, out):
    """<task>/reliability.png for each task: a curve per variant, its seeds pooled (bin counts
    summed, each bin's confidence and accuracy weighted by its counts). Returns
    {task: :class:`fairseq_skd.results.figures.Drawn`} of the figures drawn."""
    drawn = {}
    for task in dict.fromkeys(r["task"] for r in results):
        runs = [r for r in results if r["task"] == task]
        seeds = sorted({r["seed"] for r in runs})
        pooled = {variant: diagnostics.pool_reliability(
                      [r.get("reliability") for r in runs if r["variant"] == variant])
                  for variant in dict.fromkeys(r["variant"] for r in runs)}
        fig = figures.reliability_diagram(pooled, f"{layout.TASK_NAMES[task]}, {seeds_said(seeds)}")
        if fig is None:
            continue
        (out / task).mkdir(parents=True, exist_ok=True)
        fig.savefig(out / task / "reliability.png", dpi=120)
        pooling = ("" if len(seeds) == 1 else "; the seeds pooled: bin counts summed, each bin's "
                   "confidence and accuracy weighted by its counts")
        drawn[task] = figures.Drawn(f"{task}/reliability.png",
                                    f"{figures.RELIABILITY_CAPTION}; {seeds_said(seeds)}{pooling}",
                                    figures.plotted_variants(fig))
    return drawn


def diagnostics_table(task, runs, seeds, smoke):
    """The task's prediction diagnostics: a row per variant, mean ± std over seeds."""
    spread = "" if smoke or len(seeds) == 1 else ", mean ± std over seeds"
    lines = [f"## {layout.TASK_NAMES[task]}: prediction diagnostics on the test set{spread}", ""]
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        vr = [r for r in runs if r["variant"] == variant]
        row = {"model": ALL_NAMES[variant]}
        for key, _, template in diagnostics.COLUMNS:
            if key == "best_epoch" and len(vr) > 1:
                template = "{:.1f}"  # a mean of whole epochs
            row[key] = mean_and_spread([r.get(key) for r in vr], template)
        rows.append(row)
    return lines + markdown_table([Column("model", text("model"), align="left")]
                                  + [Column(header, text(key))
                                     for key, header, _ in diagnostics.COLUMNS], rows)


def write_tables(results, out, smoke=False, reliability=None):
    """results.md and results.csv of the study: per task, a table of the scores with a row per
    variant (mean ± std over seeds) and a line per variant saying whether it beat the baseline
    (none with ``smoke``, whose numbers are a plumbing check), then the table of the prediction
    diagnostics and the reliability diagram (``reliability``: {task: Drawn}) under it."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in results):
        runs = [r for r in results if r["task"] == task]
        seeds = sorted({r["seed"] for r in runs})
        if smoke:
            lines += [f"## {layout.TASK_TITLES[task]}: plumbing check (--smoke), not a result", "",
                      f"A --smoke run: {SMOKE_NOTE}", ""]
        elif len(seeds) == 1:
            lines += [f"## {layout.TASK_TITLES[task]}: seed {seeds[0]} (one seed: no spread)", ""]
        else:
            lines += [f"## {layout.TASK_TITLES[task]}: {len(seeds)} seeds "
                      f"({' '.join(map(str, seeds))}), mean ± std over seeds", ""]
        columns = METRICS[task] + TRAINING_COLUMNS
        rows, means = [], {}
        for variant in dict.fromkeys(r["variant"] for r in runs):
            vr = [r for r in runs if r["variant"] == variant]
            row = {key: mean_and_spread([r[key] for r in vr], fmt) for key, _, fmt, *_ in columns}
            rows.append({**row, "model": ALL_NAMES[variant], "paper": paper_cell(task, variant)})
            means[variant] = [r[METRICS[task][0][0]] for r in vr]
        lines += markdown_table([Column("model", text("model"), align="left")]
                                + [Column(label, text(key)) for key, label, *_ in columns]
                                + [Column(PAPER_COLUMNS[task], text("paper"))], rows)
        key, name, fmt, better = METRICS[task][0]
        lines.append("")
        if "baseline" in means and not smoke:
            lines += [verdict(ALL_NAMES[v], values, means["baseline"], name, fmt, better)
                      for v, values in means.items() if v != "baseline" and None not in values]
            lines.append("")
        lines += [*diagnostics_table(task, runs, seeds, smoke), ""]
        drawn = (reliability or {}).get(task)
        if drawn:
            curves = dict.fromkeys(v for panel in drawn.curves.values() for v in panel)
            lines += [f"`{drawn.file}`: {drawn.caption}; curves: "
                      + ", ".join(ALL_NAMES[v] for v in curves), ""]
    lines.append(
        "LM: test NLL per sentence in nats (sum over each sentence's tokens incl. </s>, mean over "
        "sentences, as in the paper's Table 2). MT: detokenized sacreBLEU on the test set. "
        "best valid loss: the lowest validation NLL per token (base 2). final alpha: the SKD "
        "weight over the last epoch of training (0 for the variants trained without SKD). "
        f"median q_n / clip rate: q_n = min(exp(-{SIGMA} d(W_t, W_n)), {QN_MAX}) measured on "
        "the test set after training, over the positions where the trained model's prediction "
        "n differs from the target t (the per-seed tables' train q_n is another quantity: the "
        "training log's mean over the last epoch); a clip rate near 1 means sigma did not suit "
        "the embedding scale. Same seeds, data and budget for every variant; tables and figures "
        "per seed in <task>/seed<N>/. The paper's numbers (PTB, WMT'15 En-Fi) are beside ours "
        "for the row they correspond to, not as a target: different data, sizes and budgets.")
    lines += ["", diagnostics.LEGEND]
    write_results(out, "\n".join(lines) + "\n", results, CSV_FIELDS)


def build_parser():
    p = argparse.ArgumentParser(prog="fairseq-skd-demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--task", choices=[*layout.TASKS, "both"], default="both",
                   help="lm: language model (Table 2); mt: translation (Table 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="one run per seed per variant; tables give mean ± std "
                   "(default: 1 2 3; 1 with --smoke)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs per run (default: 6 LM / 12 MT; 2 with --smoke)")
    p.add_argument("--variants", nargs="+", choices=list(ALL_NAMES),
                   default=list(VARIANTS), help="which rows to train (default: the paper's four)")
    p.add_argument("--ablation", action="store_true",
                   help="also train the options beyond the paper, each one change from +SKD "
                   "(or from the baseline): " + "; ".join(name for name, _ in ABLATIONS.values()))
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel workers per training: GPUs, or CPU workers sharing the "
                   "cores (fairseq-skd-train --nproc)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (a couple of minutes)")
    p.add_argument("fairseq_args", nargs=argparse.REMAINDER,
                   help="after --: extra flags for every fairseq-train (e.g. -- --fp16)")
    return p


def argument_problem(args):
    """What is wrong with the command line, checked before anything is written, or None."""
    if args.nproc < 1:
        return f"--nproc must be at least 1, got {args.nproc}"
    if args.epochs is not None and args.epochs < 1:
        return f"--epochs must be at least 1, got {args.epochs}"
    bad_seeds = [seed for seed in args.seeds if not 0 <= seed < 2**32]
    if bad_seeds:
        return f"--seeds must be between 0 and 2**32 - 1 (fairseq's range), got {bad_seeds[0]}"
    if len(set(args.seeds)) != len(args.seeds):
        return f"--seeds {' '.join(map(str, args.seeds))}: each seed once (a repeated seed " \
               "trains the same run twice and counts it as two)"
    out = Path(args.out).absolute()
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        return f"--out {args.out}: {existing} is a file, not a folder"
    # every run's fairseq-train command line, parsed as fairseq-train will (no data needed)
    command_lines = []
    for task in args.tasks:
        spec = TASK_SETTINGS[task]
        for variant in args.variants:
            argv = ["DATA", "--user-dir", USER_DIR, *spec["smoke_arch" if args.smoke else "arch"],
                    *spec["train"], *criterion_flags(variant, SIGMA, 1, 0.1, NOISE_STD),
                    *args.fairseq_args]
            command_lines.append((f"{task} {variant}", [str(a) for a in argv]))
    refused = fairseq_train_problems(command_lines)
    if refused:
        label, message = refused[0]
        return (f"the {label} run's fairseq-train would refuse its command line ({message}); "
                "flags after -- go to every variant, the cross_entropy baseline's included")
    return None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fairseq_args and args.fairseq_args[0] == "--":
        args.fairseq_args = args.fairseq_args[1:]
    args.tasks = list(layout.TASKS) if args.task == "both" else [args.task]
    if args.seeds is None:
        args.seeds = [1] if args.smoke else [1, 2, 3]
    if args.ablation:
        args.variants = list(args.variants) + [v for v in ABLATIONS if v not in args.variants]
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    # fairseq-skd-collect and fairseq-skd-bleu, which it runs after training, need these
    require_packages("fairseq-skd-demo", ["matplotlib", "sacrebleu", "sacremoses"])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # fairseq's INFO lines when the demo loads a checkpoint itself (measure_qn_on_test_set);
    # the tools it runs write theirs into their logs
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    Study(args).main()


if __name__ == "__main__":
    main()
