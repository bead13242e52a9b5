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
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq.data import Dictionary, data_utils  # noqa: E402
from fairseq.models import ARCH_CONFIG_REGISTRY  # noqa: E402
from fairseq.models.lstm_lm import LSTMLanguageModel  # noqa: E402

import fairseq_skd  # noqa: E402,F401
from fairseq_skd.models.skd_lstm_lm import SKDLSTMLanguageModel  # noqa: E402


# the goal for training tokens/s, skd_lstm_lm / lstm_lm, per device
TRAINING_GOAL = {"cpu": 1.0, "cuda": 3.0}


class _Task:
    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = self.dictionary = dictionary


def make_dictionary(n_words):
    d = Dictionary()
    for i in range(n_words - d.nspecial):
        d.add_symbol(f"w{i}")
    return d


def build_models(opts, dictionary):
    common = dict(dropout=opts.dropout, decoder_embed_dim=opts.embed,
                  decoder_hidden_size=opts.hidden, decoder_out_embed_dim=opts.out_embed)
    task = _Task(dictionary)
    torch.manual_seed(opts.seed)
    args = argparse.Namespace(**common)
    ARCH_CONFIG_REGISTRY["skd_lstm_lm"](args)
    skd = SKDLSTMLanguageModel.build_model(args, task)
    # criterion cross_entropy: lstm_lm builds no adaptive softmax
    args = argparse.Namespace(**common, decoder_layers=1, criterion="cross_entropy")
    ARCH_CONFIG_REGISTRY["lstm_lm"](args)
    lstm = LSTMLanguageModel.build_model(args, task)
    assert lstm.decoder.adaptive_softmax is None and len(lstm.decoder.layers) == 1
    return {"skd_lstm_lm": skd, "lstm_lm": lstm}


def random_batches(dictionary, n_batches, bsz, min_len, max_len, generator):
    """Sentences of random words and lengths, grouped by length into batches as fairseq's
    language_modeling does (its dataset is ordered by size), then put in random order. Each
    batch is ``</s> w1 .. wn`` -> ``w1 .. wn </s>``, right-padded (--sample-break-mode eos)."""
    lengths = torch.randint(min_len, max_len + 1, (n_batches * bsz,), generator=generator)
    sents = [torch.cat([torch.randint(dictionary.nspecial, len(dictionary), (int(n),),
                                      generator=generator), torch.tensor([dictionary.eos()])])
             for n in lengths.sort().values]
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


def to_device(batches, device):
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]


def device_clock(clock, device):
    """``clock`` read after the device has finished its queued work."""
    if device != "cuda":
        return clock

    def synchronized():
        torch.cuda.synchronize()
        return clock()

    return synchronized


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

    for batch in batches[:warmup]:
        step(batch)
    start = clock()
    for batch in batches:
        step(batch)
    return sum(b["ntokens"] for b in batches) / (clock() - start)


def bench_scoring(model, batches, pad, clock):
    model.eval()
    with torch.no_grad():
        loss_of(model, batches[0], pad)  # warm-up
        start = clock()
        for batch in batches:
            loss_of(model, batch, pad)
    return sum(b["ntokens"] for b in batches) / (clock() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--vocab", type=int, default=10000, help="dictionary size")
    parser.add_argument("--embed", type=int, default=500, help="input word embedding dim")
    parser.add_argument("--hidden", type=int, default=400, help="LSTM size")
    parser.add_argument("--out-embed", type=int, default=500, help="output word embedding dim")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=8, help="timed batches per repeat")
    parser.add_argument("--bsz", type=int, default=32, help="sentences per batch")
    parser.add_argument("--min-len", type=int, default=10, help="shortest sentence (words)")
    parser.add_argument("--max-len", type=int, default=35, help="longest sentence (words)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, steadier on a "
                             "machine shared with other jobs (meaningful with --threads 1; "
                             "not with --device cuda)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    opts = parser.parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if opts.device == "cuda" and opts.clock == "cpu":
        parser.error("--clock cpu measures nothing of the GPU's work: use wall time")
    torch.set_num_threads(opts.threads)
    clock = device_clock(time.perf_counter if opts.clock == "wall" else time.process_time,
                         opts.device)

    dictionary = make_dictionary(opts.vocab)
    models = {name: model.to(opts.device) for name, model in build_models(opts, dictionary).items()}
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-4)
                  for name, model in models.items()}
    g = torch.Generator().manual_seed(opts.seed)
    batches = to_device(
        random_batches(dictionary, opts.steps, opts.bsz, opts.min_len, opts.max_len, g),
        opts.device)
    pad = dictionary.pad()

    where = f" on {torch.cuda.get_device_name()}" if opts.device == "cuda" else ""
    print(f"torch {torch.__version__}{where}, {opts.threads} thread(s); vocab {len(dictionary)}, "
          f"embed {opts.embed}, hidden {opts.hidden}, out embed {opts.out_embed}, dropout "
          f"{opts.dropout}; {opts.bsz} sentences of {opts.min_len}-{opts.max_len} words per "
          f"batch (~{sum(b['ntokens'] for b in batches) / len(batches):.0f} tokens), "
          f"{opts.steps} batches x {opts.repeats} repeats, {opts.clock} clock")
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        print(f"  {name}: {n / 1e6:.2f}M parameters")

    train_tps = {name: [] for name in models}
    score_tps = {name: [] for name in models}
    for _ in range(opts.repeats):
        for name, model in models.items():
            train_tps[name].append(bench_training(model, optimizers[name], batches, pad, 1, clock))
            score_tps[name].append(bench_scoring(model, batches, pad, clock))
    train_tps = {k: statistics.median(v) for k, v in train_tps.items()}
    score_tps = {k: statistics.median(v) for k, v in score_tps.items()}

    print()
    print(f"| measure (median of {opts.repeats}) | skd_lstm_lm | lstm_lm (1 layer) "
          "| ratio skd/lstm_lm | goal |")
    print("|---|---|---|---|---|")
    goal = TRAINING_GOAL[opts.device]
    train_ratio = train_tps["skd_lstm_lm"] / train_tps["lstm_lm"]
    print(f"| training tokens/s | {train_tps['skd_lstm_lm']:.0f} | {train_tps['lstm_lm']:.0f} "
          f"| {train_ratio:.2f} | >= {goal} |")
    print(f"| scoring tokens/s (no grad) | {score_tps['skd_lstm_lm']:.0f} "
          f"| {score_tps['lstm_lm']:.0f} | {score_tps['skd_lstm_lm'] / score_tps['lstm_lm']:.2f} "
          "| |")
    if opts.json:
        out = {"config": vars(opts), "torch": torch.__version__,
               "device_name": torch.cuda.get_device_name() if opts.device == "cuda" else None,
               "training_tokens_per_s": train_tps, "scoring_tokens_per_s": score_tps,
               "goals": [{"what": "training tokens/s, skd_lstm_lm / lstm_lm (1 layer)",
                          "value": train_ratio, "op": ">=", "limit": goal,
                          "stated_for": opts.device, "met": train_ratio >= goal}]}
        Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {opts.json}")


if __name__ == "__main__":
    main()
