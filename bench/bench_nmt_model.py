"""Speed of skd_bahdanau next to fairseq's own ``lstm`` (one layer, attention on), on CPU or a GPU.

Both models are built programmatically with random weights and the same dimensions (source and
target embeddings, a bidirectional encoder of --hidden per direction, a decoder LSTM of
--hidden, output embeddings of --readout) and run on the same random batches:

1. training tokens/s: forward, cross-entropy, backward and an Adam step on padded batches;
2. beam search sentences/s through fairseq's SequenceGenerator (the output length is forced to
   --gen-len with min_len = max_len, so both models produce the same number of tokens);
3. beam search time per sentence of skd_bahdanau for outputs of 10, 20 and 40 tokens: with a
   per-step cost that does not depend on the prefix, time per token stays flat.

Times are process CPU time by default on CPU (--clock cpu), which other jobs on a shared machine
disturb much less than wall-clock time; use --clock wall with --threads > 1. With --device cuda
the clock is wall time, read after torch.cuda.synchronize().

Goals (the issue's): training ratio >= 0.8 on CPU and >= 1.0 on a GPU; beam search >= 0.8 on
CPU. --json writes the figures and the goals, with whether each was met, for
bench/gpu_check.sh's report.

    OMP_NUM_THREADS=1 python bench/bench_nmt_model.py            # ~2 minutes on one core
    python bench/bench_nmt_model.py --device cuda --json nmt.json
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
# the plugin of this checkout, and the tests' helpers (tests/helpers.py)
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fairseq.data import data_utils  # noqa: E402
from fairseq.models import ARCH_CONFIG_REGISTRY  # noqa: E402
from fairseq.models.lstm import LSTMModel  # noqa: E402
from fairseq.sequence_generator import SequenceGenerator  # noqa: E402

import fairseq_skd  # noqa: E402,F401
from bench_utils import (add_run_options, benchmark_parser, device_clock, goal,  # noqa: E402
                         parse_options, print_header, take_turns, to_device, tokens_per_second,
                         write_json)
from helpers import Task, build_model, make_dictionary  # noqa: E402


# the goals, skd_bahdanau / lstm, per device (None: none stated)
GOALS = {"training": {"cpu": 0.8, "cuda": 1.0}, "generation": {"cpu": 0.8, "cuda": None}}


def build_models(opts, dictionary):
    common = dict(dropout=opts.dropout, encoder_embed_dim=opts.embed, decoder_embed_dim=opts.embed,
                  encoder_hidden_size=opts.hidden, decoder_hidden_size=opts.hidden,
                  decoder_out_embed_dim=opts.readout)
    skd = build_model("skd_bahdanau", dictionary, opts.seed, **common)
    # its weights drawn next
    args = argparse.Namespace(**common, encoder_layers=1, decoder_layers=1,
                              encoder_bidirectional=True, decoder_attention="1",
                              criterion="cross_entropy")
    ARCH_CONFIG_REGISTRY["lstm"](args)
    lstm = LSTMModel.build_model(args, Task(dictionary))
    return {"skd_bahdanau": skd, "lstm": lstm}


def random_batch(dictionary, bsz, min_len, max_len, generator):
    def sentences():
        out = []
        for _ in range(bsz):
            n = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
            words = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=generator)
            out.append(torch.cat([words, torch.tensor([dictionary.eos()])]))
        return out

    # sorted by source length, longest first, as fairseq's LanguagePairDataset collates
    # (fairseq's lstm encoder needs it)
    pairs = sorted(zip(sentences(), sentences()), key=lambda p: -len(p[0]))
    src, tgt = [s for s, _ in pairs], [t for _, t in pairs]
    pad, eos = dictionary.pad(), dictionary.eos()
    return {
        "net_input": {
            "src_tokens": data_utils.collate_tokens(src, pad, eos, left_pad=True),
            "src_lengths": torch.tensor([len(s) for s in src]),
            "prev_output_tokens": data_utils.collate_tokens(
                tgt, pad, eos, left_pad=False, move_eos_to_beginning=True),
        },
        "target": data_utils.collate_tokens(tgt, pad, eos, left_pad=False),
        "ntokens": sum(len(t) for t in tgt),
        "id": torch.arange(bsz),
    }


def bench_training(model, batches, pad, warmup, clock):
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(batch):
        logits, _ = model(**batch["net_input"])
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch["target"].view(-1),
                               ignore_index=pad, reduction="sum")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return tokens_per_second(step, batches, warmup, clock)


def bench_generation(model, dictionary, batches, beam, out_len, clock, repeats=1):
    """Seconds per sentence (median over repeats) with exactly ``out_len`` words + </s>."""
    model.eval()
    generator = SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=0,
                                  max_len_b=out_len, min_len=out_len)
    sample = lambda b: {"id": b["id"], "net_input": {  # noqa: E731
        "src_tokens": b["net_input"]["src_tokens"], "src_lengths": b["net_input"]["src_lengths"]}}
    with torch.no_grad():
        generator.generate([model], sample(batches[0]))  # warm-up
        times = []
        for _ in range(repeats):
            start = clock()
            n = 0
            for batch in batches:
                hypos = generator.generate([model], sample(batch))
                assert all(len(h[0]["tokens"]) == out_len + 1 for h in hypos)
                n += len(hypos)
            times.append((clock() - start) / n)
    return statistics.median(times)


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--vocab", type=int, default=8000, help="words in the (joined) dictionary")
    parser.add_argument("--embed", type=int, default=256, help="source and target embedding dim")
    parser.add_argument("--hidden", type=int, default=256,
                        help="encoder LSTM size per direction and decoder LSTM size")
    parser.add_argument("--readout", type=int, default=256, help="output embedding dim")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--train-batches", type=int, default=6)
    parser.add_argument("--train-bsz", type=int, default=32, help="sentences per training batch")
    parser.add_argument("--min-len", type=int, default=15, help="shortest sentence (words)")
    parser.add_argument("--max-len", type=int, default=30, help="longest sentence (words)")
    parser.add_argument("--beam", type=int, default=12)
    parser.add_argument("--gen-bsz", type=int, default=8, help="sentences per generation batch")
    parser.add_argument("--gen-batches", type=int, default=2)
    parser.add_argument("--gen-len", type=int, default=20, help="forced output length (words)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 20, 40],
                        help="output lengths for the scaling table")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median kept)")
    # process CPU time by default on CPU: with one thread it is what the model costs, and other
    # jobs on a shared machine disturb it much less than wall-clock time
    add_run_options(parser, None, "process CPU time (right for --threads 1 on a shared machine) "
                    "or wall-clock time; default: cpu on CPU, wall with --device cuda")
    opts = parse_options(parser, argv)
    clock = device_clock(opts)

    dictionary = make_dictionary(opts.vocab)
    models = {name: model.to(opts.device) for name, model in build_models(opts, dictionary).items()}
    g = torch.Generator().manual_seed(opts.seed)
    train_batches = [random_batch(dictionary, opts.train_bsz, opts.min_len, opts.max_len, g)
                     for _ in range(opts.train_batches)]
    gen_batches = [random_batch(dictionary, opts.gen_bsz, opts.min_len, opts.max_len, g)
                   for _ in range(opts.gen_batches)]
    train_batches, gen_batches = to_device((train_batches, gen_batches), opts.device)

    print_header(opts, models, f"vocab {len(dictionary)}, embed {opts.embed}, hidden "
                 f"{opts.hidden} (encoder: per direction), readout {opts.readout}, dropout "
                 f"{opts.dropout}; source/target {opts.min_len}-{opts.max_len} words, source "
                 f"left-padded; {opts.clock} time")

    # 1 and 2
    medians = take_turns(models, opts.repeats, {
        "training": lambda name, model: bench_training(model, train_batches, dictionary.pad(),
                                                       1, clock),
        "generation": lambda name, model: 1.0 / bench_generation(
            model, dictionary, gen_batches, opts.beam, opts.gen_len, clock)})
    train_tps, gen_sps = medians["training"], medians["generation"]

    print()
    print(f"| measure (median of {opts.repeats}) | skd_bahdanau | lstm | ratio skd/lstm | goal |")
    print("|---|---|---|---|---|")
    ratios = {"training": train_tps["skd_bahdanau"] / train_tps["lstm"],
              "generation": gen_sps["skd_bahdanau"] / gen_sps["lstm"]}
    limit = {what: GOALS[what][opts.device] for what in GOALS}
    goal_text = {what: "" if g is None else f">= {g}" for what, g in limit.items()}
    print(f"| training target tokens/s (bsz {opts.train_bsz}) | {train_tps['skd_bahdanau']:.0f} "
          f"| {train_tps['lstm']:.0f} | {ratios['training']:.2f} | {goal_text['training']} |")
    print(f"| beam {opts.beam} sentences/s ({opts.gen_len} words out, bsz {opts.gen_bsz}) "
          f"| {gen_sps['skd_bahdanau']:.2f} | {gen_sps['lstm']:.2f} "
          f"| {ratios['generation']:.2f} | {goal_text['generation']} |")

    # 3: time per sentence against output length
    print()
    print("| output words | skd_bahdanau s/sentence | per output token (ms) | lstm s/sentence |")
    print("|---|---|---|---|")
    scaling = {}
    for length in opts.lengths:
        per_sentence = {name: bench_generation(model, dictionary, gen_batches, opts.beam, length,
                                               clock, repeats=opts.repeats)
                        for name, model in models.items()}
        scaling[length] = per_sentence
        print(f"| {length} | {per_sentence['skd_bahdanau']:.4f} "
              f"| {1000 * per_sentence['skd_bahdanau'] / (length + 1):.2f} "
              f"| {per_sentence['lstm']:.4f} |")

    if opts.json:
        names = {"training": "training target tokens/s, skd_bahdanau / lstm",
                 "generation": f"beam {opts.beam} sentences/s, skd_bahdanau / lstm"}
        write_json(opts, {"training_tokens_per_s": train_tps, "generation_sentences_per_s": gen_sps,
                          "seconds_per_sentence_by_length": scaling},
                   [goal(names[what], ratios[what], limit[what], opts.device) for what in GOALS])


if __name__ == "__main__":
    main()
