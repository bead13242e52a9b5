"""Per-sentence negative log-likelihood of a fairseq language model (the paper's Table 2 metric).

    fairseq-skd-score-lm data-bin/ptb --path checkpoints/ptb/skd/checkpoint_best.pt \\
        --subset test --output test.nll.tsv --json score_test.json
    # test: 3761 sentences, 82430 tokens, NLL/sentence 99.38 nats, ppl 92.7 (...)

Every sentence of the subset is one sample (``--sample-break-mode eos``): the model reads
``</s> w_1 ... w_n`` and is scored on ``w_1 ... w_n </s>``, exactly the source/target pair that
fairseq's ``TokenBlockDataset``/``MonolingualDataset`` build for language modelling. The
sentence NLL is the sum of ``-ln p`` over those n + 1 targets, the end-of-sentence token
included (natural log); the reported figure is its mean over sentences, and the perplexity is
``exp(total NLL / total tokens)``. The tool fails when any sentence was not scored exactly
once, rather than print a number over part of the data (fairseq's own tools can silently
evaluate fewer sentences, see ENVIRONMENT.md).
"""

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
import warnings


class ScoreError(Exception):
    """A user-facing failure: missing file, incomplete scoring."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fairseq-skd-score-lm",
        description="Per-sentence NLL (natural log, </s> included, mean over sentences) and "
        "perplexity of a fairseq language model checkpoint on a binarized subset, one "
        "sentence per sample (the metric of Hahn & Choi 2019, Table 2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("data", metavar="DATA_BIN",
                        help="fairseq-preprocess --only-source output folder (dict.txt, <subset>.bin/.idx)")
    parser.add_argument("--path", required=True, metavar="CKPT", help="model checkpoint (.pt)")
    parser.add_argument("--subset", default="test", help="subset to score (test, valid, ...)")
    parser.add_argument("--cpu", action="store_true", help="score on CPU even when CUDA is available")
    parser.add_argument("--user-dir", default="auto",
                        help="extra fairseq user dir to import; 'auto' imports only this plugin "
                        "(fairseq_skd), which is always imported")
    parser.add_argument("--output", metavar="TSV",
                        help="write one row per sentence: index (line number in the subset, from 0), "
                        "tokens (incl. </s>), nll (nats)")
    parser.add_argument("--json", metavar="JSON", help="write the summary as JSON")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per batch (optional cap)")
    return parser


def load_model_and_task(checkpoint, data, user_dir="auto", use_cuda=False):
    """The checkpoint's model (eval mode) and its task, set up on ``data`` in eos break mode."""
    import fairseq_skd  # noqa: F401  registers the plugin's models and the checkpoint globals
    from fairseq import checkpoint_utils, utils

    if user_dir not in (None, "", "auto"):
        utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    if not os.path.isfile(checkpoint):
        raise ScoreError(f"checkpoint not found: {checkpoint}")
    if not os.path.isfile(os.path.join(data, "dict.txt")):
        raise ScoreError(f"not a fairseq data folder (no dict.txt): {data}")
    overrides = {"data": data, "sample_break_mode": "eos"}
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides)
    except FileNotFoundError as e:  # e.g. a translation checkpoint looks for dict.<lang>.txt
        raise ScoreError(f"cannot set up the task of {checkpoint} on {data}: {e}") from e
    from fairseq.tasks.language_modeling import LanguageModelingTask

    if not isinstance(task, LanguageModelingTask):
        raise ScoreError(f"{checkpoint} is not a language model: its task is "
                         f"{type(task).__name__}, not language_modeling")
    if len(models) != 1:
        raise ScoreError(f"expected one model in {checkpoint}, got {len(models)}")
    task_cfg = getattr(task, "cfg", None) or getattr(task, "args", None)
    if str(getattr(task_cfg, "sample_break_mode", "eos")) != "eos":
        raise ScoreError(f"could not set --sample-break-mode eos on the task of {checkpoint}")
    model = models[0]
    if use_cuda:
        model.cuda()
    model.eval()
    return model, task


def load_subset(task, data, subset):
    try:
        task.load_dataset(subset)
    except FileNotFoundError as e:
        prefix = os.path.join(data, subset)
        raise ScoreError(f"subset '{subset}' not found: no {prefix}.bin / {prefix}.idx ({e})") from e
    return task.dataset(subset)


def score_sentences(model, task, dataset, max_tokens=4096, batch_size=None, use_cuda=False):
    """Return ``{index: (tokens, nll)}`` for every sentence of ``dataset``.

    ``tokens`` counts the targets (the words and ``</s>``), ``nll`` is their summed ``-ln p``.
    """
    import torch
    from fairseq import utils

    pad = task.target_dictionary.pad()
    max_positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    try:
        itr = task.get_batch_iterator(
            dataset=dataset,
            max_tokens=max_tokens,
            max_sentences=batch_size,
            max_positions=max_positions,
            ignore_invalid_inputs=False,
            required_batch_size_multiple=1,  # fairseq's default 8 drops the last sentences
            seed=1,
            num_workers=0,
        ).next_epoch_itr(shuffle=False)
    except Exception as e:  # fairseq raises a bare Exception for a too long sentence
        if "is invalid" in str(e):
            raise ScoreError(f"a sentence is longer than the model allows ({max_positions}): {e}") from e
        raise

    scores = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # fairseq asks for it on CPU too
        for sample in itr:
            if not sample or "net_input" not in sample:
                continue
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            net_output = model(**sample["net_input"])
            lprobs = model.get_normalized_probs(net_output, log_probs=True, sample=sample).float()
            target = sample["target"]
            if lprobs.shape[:2] != target.shape:
                raise ScoreError(f"model output {tuple(lprobs.shape)} does not match targets {tuple(target.shape)}")
            token_lprobs = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            mask = target.ne(pad)
            nll = -token_lprobs.masked_fill(~mask, 0.0).sum(dim=1)
            ntok = mask.sum(dim=1)
            for index, n, value in zip(sample["id"].tolist(), ntok.tolist(), nll.tolist()):
                if index in scores:
                    raise ScoreError(f"sentence {index} was scored twice")
                scores[index] = (n, value)
    return scores


def check_complete(scores, dataset, subset):
    """Fail unless every sentence of the subset was scored once, with the right length."""
    expected = len(dataset)
    if len(scores) != expected:
        missing = sorted(set(range(expected)) - set(scores))
        raise ScoreError(
            f"scored {len(scores)} of {expected} sentences of '{subset}'; missing e.g. {missing[:10]}"
        )
    sizes = dataset.sizes
    for index, (n, _) in scores.items():
        if n != int(sizes[index]):
            raise ScoreError(f"sentence {index}: scored {n} tokens, the dataset has {int(sizes[index])}")


def summarize(scores, subset, checkpoint):
    sentences = len(scores)
    tokens = sum(n for n, _ in scores.values())
    total = sum(v for _, v in scores.values())
    return {
        "subset": subset,
        "sentences": sentences,
        "tokens": tokens,
        "nll_per_sentence": total / sentences,
        "nll_per_token": total / tokens,
        "ppl": math.exp(total / tokens),
        "checkpoint": checkpoint,
    }


def write_tsv(path, scores):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "tokens", "nll"])
        for index in sorted(scores):
            n, value = scores[index]
            writer.writerow([index, n, repr(value)])


def score(data, checkpoint, subset="test", cpu=False, user_dir="auto", max_tokens=4096, batch_size=None):
    """Score ``subset`` of ``data`` with ``checkpoint``; returns (summary, per-sentence scores)."""
    import torch

    use_cuda = torch.cuda.is_available() and not cpu
    model, task = load_model_and_task(checkpoint, data, user_dir, use_cuda)
    dataset = load_subset(task, data, subset)
    scores = score_sentences(model, task, dataset, max_tokens, batch_size, use_cuda)
    check_complete(scores, dataset, subset)
    return summarize(scores, subset, checkpoint), scores


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # keep stdout/stderr to the result
    start = time.time()
    try:
        summary, scores = score(args.data, args.path, args.subset, args.cpu, args.user_dir,
                                args.max_tokens, args.batch_size)
    except ScoreError as e:
        sys.exit(f"fairseq-skd-score-lm: error: {e}")
    summary["data"] = args.data
    if args.output:
        write_tsv(args.output, scores)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    print(
        f"{summary['subset']}: {summary['sentences']} sentences, {summary['tokens']} tokens, "
        f"NLL/sentence {summary['nll_per_sentence']:.2f} nats, ppl {summary['ppl']:.2f} "
        f"({args.path}, {time.time() - start:.1f}s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
