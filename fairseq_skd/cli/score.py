"""Score a checkpoint on a binarized subset: NLL per sentence (the paper's Table 2 metric for
language models) and per token, prediction diagnostics, and the NLL after temperature scaling.

    fairseq-skd-score-lm data-bin/ptb --path exp/ptb/skd/checkpoint_best.pt \\
        --subset test --output test.nll.tsv --json score_test.json
    # test: 3761 sentences, 82430 tokens, NLL/sentence 99.38 nats, ppl 92.7, ...
    fairseq-skd-score-mt data-bin/wmt15_en_fi --path exp/wmt15_en_fi/skd/checkpoint_best.pt \\
        --subset test --json score_test.json   # teacher-forced on the reference translations

What is computed, and the checks made before it, are described in
``fairseq_skd.evaluation.scoring``; the diagnostics (entropy, top-1 accuracy, mean probability of
the argmax, expected calibration error, NLL where the argmax is right / wrong) and the
temperature fit in ``fairseq_skd.evaluation.diagnostics``. Everything is in nats; means are per
scored token (``</s>`` included) unless they say per sentence.
"""

import argparse
import csv
import json
import logging
import sys
import time

from . import HelpFormatter
from ..evaluation.qn import parse_qn_sigma
from ..evaluation.scoring import TOOLS, ScoreError, score
from .requirements import output_folder_problem

DESCRIPTIONS = {
    "lm": "Per-sentence NLL (natural log, </s> included, mean over sentences), perplexity and "
          "prediction diagnostics of a fairseq language model checkpoint on a binarized subset, "
          "one sentence per sample (the metric of Hahn & Choi 2019, Table 2).",
    "mt": "Teacher-forced NLL (natural log, </s> included) per sentence and per token, "
          "perplexity and prediction diagnostics of a fairseq translation checkpoint on a "
          "binarized subset, against its reference translations.",
}


def qn_sigma(text):
    try:
        return parse_qn_sigma(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a number of sentences >= 1, not '{text}'")
    return value


def build_parser(kind):
    parser = argparse.ArgumentParser(prog=TOOLS[kind], description=DESCRIPTIONS[kind],
                                     formatter_class=HelpFormatter)
    parser.add_argument("data", metavar="DATA_BIN",
                        help="fairseq-preprocess output folder (dictionaries, <subset>.bin/.idx)")
    parser.add_argument("--path", required=True, metavar="CKPT", help="model checkpoint (.pt)")
    parser.add_argument("--subset", default="test", help="subset to score (test, valid, ...)")
    parser.add_argument("--calibration-subset", default="valid", metavar="SUBSET",
                        help="subset on which one temperature is fitted (minimum NLL) before "
                        "scoring --subset with it too; 'none' to skip")
    parser.add_argument("--cpu", action="store_true", help="score on CPU even when CUDA is available")
    parser.add_argument("--user-dir", default="auto",
                        help="extra fairseq user dir to import; 'auto' imports only this plugin "
                        "(fairseq_skd), which is always imported")
    parser.add_argument("--output", metavar="TSV",
                        help="write one row per sentence: index (line number in the subset, from 0), "
                        "tokens (incl. </s>), nll (nats)")
    parser.add_argument("--json", metavar="JSON", help="write the summary as JSON")
    parser.add_argument("--qn-sigma", type=qn_sigma, default="0.1", metavar="SIGMA",
                        help="sigma at which the median q_n and clip rate of the positions where "
                        "the argmax is not the target are measured (a number, 'auto' or 'none'; "
                        "default: 0.1, the paper's, whatever the model was trained with)")
    parser.add_argument("--max-sentences", type=positive_int, default=None, metavar="N",
                        help="score a fixed sample of N sentences of --subset (drawn with a "
                        "fixed seed: the same ones for every checkpoint of the same data), e.g. "
                        "of the training set; default: all")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per batch (optional cap)")
    return parser


def write_tsv(path, scores):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "tokens", "nll"])
        for index in sorted(scores):
            n, value = scores[index]
            writer.writerow([index, n, repr(value)])


def run(kind, argv=None):
    args = build_parser(kind).parse_args(argv)
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # keep stdout/stderr to the result
    start = time.time()
    calibration = None if args.calibration_subset.lower() == "none" else args.calibration_subset
    for flag, path in (("--output", args.output), ("--json", args.json)):
        if output_folder_problem(flag, path):
            sys.exit(f"{TOOLS[kind]}: error: {output_folder_problem(flag, path)}")
    try:
        summary, scores = score(args.data, args.path, kind, args.subset, calibration, args.cpu,
                                args.user_dir, args.max_tokens, args.batch_size, args.qn_sigma,
                                args.max_sentences)
    except ScoreError as e:
        sys.exit(f"{TOOLS[kind]}: error: {e}")
    summary["data"] = args.data
    if args.output:
        write_tsv(args.output, scores)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    calibrated = (f", T {summary['temperature']:.3f} (fitted on {calibration}): NLL/token "
                  f"{summary['calibrated_nll_per_token']:.4f}" if calibration else "")
    qn = (f"; median q_n {summary['median_qn']:.3f}, clip rate {summary['clip_rate']:.3f} "
          f"at sigma {summary['qn_sigma']:.3g}" if summary.get("median_qn") is not None else "")
    sample = (f" (a fixed sample of its {summary['subset_sentences']})"
              if summary["sentences"] < summary["subset_sentences"] else "")
    print(f"{summary['subset']}: {summary['sentences']} sentences{sample}, {summary['tokens']} tokens, "
          f"NLL/sentence {summary['nll_per_sentence']:.2f} nats, NLL/token "
          f"{summary['nll_per_token']:.4f}, ppl {summary['ppl']:.2f}{calibrated}; entropy "
          f"{summary['mean_entropy']:.3f}, top-1 {summary['top1_accuracy']:.3f}, max prob "
          f"{summary['mean_max_prob']:.3f}, ECE {summary['ece']:.3f}{qn} "
          f"({time.time() - start:.1f}s)", flush=True)


def main_lm(argv=None):
    run("lm", argv)


def main_mt(argv=None):
    run("mt", argv)
