"""Speed of skd_lstm_lm next to fairseq's own ``lstm_lm`` with one layer, on CPU or a GPU.

Both models are built programmatically with random weights and the same sizes (the paper's:
embeddings 500, one LSTM layer of 400, output embeddings 500, full softmax; fairseq's
``lstm_lm`` gets ``--decoder-layers 1`` and no adaptive softmax) and run on the same random
right-padded batches of sentences of similar lengths, as ``language_modeling
--sample-break-mode eos`` gives them:

1. training tokens/s: forward, cross-entropy, backward and an Adam step;
2. scoring tokens/s: forward only, no gradient (what fairseq-eval-lm and validation do).

The models take turns, repeated, and the median is kept, so drift of the machine hits both
alike. skd_lstm_lm runs the fused nn.LSTM over the whole sequence (cuDNN on a GPU); fairseq's
LSTMDecoder steps an LSTMCell through time in Python.

Goal for the training ratio (the issue's): >= 1.0 on CPU, >= 3.0 on a GPU. With --device cuda
the clock is wall time with torch.cuda.synchronize() around each timed loop. --json writes the
figures and the goal, with whether it was met, for bench/gpu_check.sh's report.

    OMP_NUM_THREADS=1 python bench/bench_lm_model.py            # ~1-2 minutes on one core
    OMP_NUM_THREADS=1 python bench/bench_lm_model.py --clock cpu   # on a busy machine
    python bench/bench_lm_model.py --device cuda --steps 20 --repeats 5 --json lm.json
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
# the plugin of this checkout, and the tests' helpers (tests/helpers.py)
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fairseq.data import data_utils  # noqa: E402
from fairseq.models import ARCH_CONFIG_REGISTRY  # noqa: E402
from fairseq.models.lstm_lm import LSTMLanguageModel  # noqa: E402

import fairseq_skd  # noqa: E402,F401
from bench_utils import (add_lm_size_options, add_run_options, benchmark_parser,  # noqa: E402
                         device_clock, goal, parse_options, print_header, take_turns, to_device,
                         tokens_per_second, write_json)
from helpers import (SPECIAL_SYMBOLS, Task, build_model, make_dictionary,  # noqa: E402
                     random_sentences)


# the goal for training tokens/s, skd_lstm_lm / lstm_lm, per device
TRAINING_GOAL = {"cpu": 1.0, "cuda": 3.0}


def build_models(opts, dictionary):
    common = dict(dropout=opts.dropout, decoder_embed_dim=opts.embed,
                  decoder_hidden_size=opts.hidden, decoder_out_embed_dim=opts.out_embed)
    skd = build_model("skd_lstm_lm", dictionary, opts.seed, **common)
    # its weights drawn next; criterion cross_entropy: lstm_lm builds no adaptive softmax
    args = argparse.Namespace(**common, decoder_layers=1, criterion="cross_entropy")
    ARCH_CONFIG_REGISTRY["lstm_lm"](args)
    lstm = LSTMLanguageModel.build_model(args, Task(dictionary))
    assert lstm.decoder.adaptive_softmax is None and len(lstm.decoder.layers) == 1
    return {"skd_lstm_lm": skd, "lstm_lm": lstm}


def random_batches(dictionary, n_batches, bsz, min_len, max_len, generator):
    """Sentences of random words and lengths, grouped by length into batches as fairseq's
    language_modeling does (its dataset is ordered by size), then put in random order. Each
    batch is ``</s> w1 .. wn`` -> ``w1 .. wn </s>``, right-padded (--sample-break-mode eos)."""
    lengths = torch.randint(min_len, max_len + 1, (n_batches * bsz,), generator=generator)
    sents = random_sentences(dictionary, lengths.sort().values, generator)
    pad, eos = dictionary.pad(), dictionary.eos()
    batches = []
    for i in torch.randperm(n_batches, generator=generator).tolist():
        chunk = sents[i * bsz : (i + 1) * bsz]
        batches.append({
            "src_tokens": data_utils.collate_tokens(
                chunk, pad, eos, left_pad=False, move_eos_to_beginning=True),
            "target": data_utils.collate_tokens(chunk, pad, eos, left_pad=False),
            "ntokens": sum(len(s) for s in chunk),
        })
    return batches


def loss_of(model, batch, pad):
    logits, _ = model(batch["src_tokens"])
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), batch["target"].view(-1),
                           ignore_index=pad, reduction="sum")


def bench_training(model, optimizer, batches, pad, warmup, clock):
    model.train()

    def step(batch):
        loss = loss_of(model, batch, pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return tokens_per_second(step, batches, warmup, clock)


def bench_scoring(model, batches, pad, clock):
    model.eval()
    with torch.no_grad():  # the first batch once untimed, as a warm-up
        return tokens_per_second(lambda batch: loss_of(model, batch, pad), batches, 1, clock)


def main(argv=None):
    parser = benchmark_parser(__doc__)
    add_lm_size_options(parser, dropout=0.3)
    parser.add_argument("--steps", type=int, default=8, help="timed batches per repeat")
    parser.add_argument("--bsz", type=int, default=32, help="sentences per batch")
    parser.add_argument("--min-len", type=int, default=10, help="shortest sentence (words)")
    parser.add_argument("--max-len", type=int, default=35, help="longest sentence (words)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median kept)")
    add_run_options(parser, "wall", "wall: elapsed time; cpu: this process's CPU time, steadier "
                    "on a machine shared with other jobs (meaningful with --threads 1; not with "
                    "--device cuda)")
    opts = parse_options(parser, argv)
    clock = device_clock(opts)

    dictionary = make_dictionary(opts.vocab - SPECIAL_SYMBOLS)
    models = {name: model.to(opts.device) for name, model in build_models(opts, dictionary).items()}
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-4)
                  for name, model in models.items()}
    g = torch.Generator().manual_seed(opts.seed)
    batches = to_device(
        random_batches(dictionary, opts.steps, opts.bsz, opts.min_len, opts.max_len, g),
        opts.device)
    pad = dictionary.pad()

    print_header(opts, models, f"vocab {len(dictionary)}, embed {opts.embed}, hidden "
                 f"{opts.hidden}, out embed {opts.out_embed}, dropout {opts.dropout}; {opts.bsz} "
                 f"sentences of {opts.min_len}-{opts.max_len} words per batch "
                 f"(~{sum(b['ntokens'] for b in batches) / len(batches):.0f} tokens), "
                 f"{opts.steps} batches x {opts.repeats} repeats, {opts.clock} clock")
    medians = take_turns(models, opts.repeats, {
        "training": lambda name, model: bench_training(model, optimizers[name], batches, pad, 1,
                                                       clock),
        "scoring": lambda name, model: bench_scoring(model, batches, pad, clock)})
    train_tps, score_tps = medians["training"], medians["scoring"]

    print()
    print(f"| measure (median of {opts.repeats}) | skd_lstm_lm | lstm_lm (1 layer) "
          "| ratio skd/lstm_lm | goal |")
    print("|---|---|---|---|---|")
    limit = TRAINING_GOAL[opts.device]
    train_ratio = train_tps["skd_lstm_lm"] / train_tps["lstm_lm"]
    print(f"| training tokens/s | {train_tps['skd_lstm_lm']:.0f} | {train_tps['lstm_lm']:.0f} "
          f"| {train_ratio:.2f} | >= {limit} |")
    print(f"| scoring tokens/s (no grad) | {score_tps['skd_lstm_lm']:.0f} "
          f"| {score_tps['lstm_lm']:.0f} | {score_tps['skd_lstm_lm'] / score_tps['lstm_lm']:.2f} "
          "| |")
    if opts.json:
        write_json(opts, {"training_tokens_per_s": train_tps, "scoring_tokens_per_s": score_tps},
                   [goal("training tokens/s, skd_lstm_lm / lstm_lm (1 layer)", train_ratio,
                         limit, opts.device)])


if __name__ == "__main__":
    main()
