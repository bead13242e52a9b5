"""What the benchmarks share: their common options, the device and its clock, the header they
print, models taking turns, and the JSON file they write for bench/gpu_report.py.

The dictionaries, tasks, sentences and models come from the tests' helpers (tests/helpers.py),
which each benchmark puts on sys.path.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from fairseq.utils import apply_to_sample

DEVICES = ["cpu", "cuda"]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def benchmark_parser(doc):
    """An ArgumentParser described by the first paragraph of ``doc`` (showing defaults), with
    the --device option every benchmark starts with."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    return parser


def add_lm_size_options(parser, dropout):
    """The sizes of an LSTM language model on a generated dictionary."""
    parser.add_argument("--vocab", type=int, default=10000,
                        help="dictionary size (specials included)")
    parser.add_argument("--embed", type=int, default=500, help="input word embedding dim")
    parser.add_argument("--hidden", type=int, default=400, help="LSTM size")
    parser.add_argument("--out-embed", type=int, default=500,
                        help="output word embedding dim (rows of W)")
    parser.add_argument("--dropout", type=float, default=dropout)


def add_run_options(parser, clock, clock_help):
    """--threads, --clock (default ``clock``; None: cpu on CPU, wall with --device cuda),
    --seed and --json."""
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=list(CLOCKS), default=clock, help=clock_help)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")


def parse_options(parser, argv):
    """The options, checked against this machine; the clock chosen (where there is a --clock),
    the thread count set."""
    opts = parser.parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if hasattr(opts, "clock"):
        if opts.device == "cuda" and opts.clock == "cpu":
            parser.error("--clock cpu measures nothing of the GPU's work: use wall time")
        opts.clock = opts.clock or ("wall" if opts.device == "cuda" else "cpu")
    torch.set_num_threads(opts.threads)
    return opts


def device_clock(opts):
    """The clock of --clock, read after the device has finished its queued work."""
    clock = CLOCKS[opts.clock]
    if opts.device != "cuda":
        return clock

    def synchronized():
        torch.cuda.synchronize()
        return clock()

    return synchronized


def to_device(sample, device):
    """Every tensor of ``sample`` (nested dicts and lists) on ``device``."""
    return apply_to_sample(lambda t: t.to(device), sample)


def tokens_per_second(step, batches, warmup, clock):
    """``step(batch)`` on the first ``warmup`` batches, then timed on every batch: tokens
    (``ntokens`` of each batch) per second of ``clock``."""
    for batch in batches[:warmup]:
        step(batch)
    start = clock()
    for batch in batches:
        step(batch)
    return sum(b["ntokens"] for b in batches) / (clock() - start)


def print_header(opts, models, setup):
    """torch, the device and threads, ``setup`` (sizes, data, clock), each model's size."""
    where = f" on {torch.cuda.get_device_name()}" if opts.device == "cuda" else ""
    print(f"torch {torch.__version__}{where}, {opts.threads} thread(s); {setup}")
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        print(f"  {name}: {n / 1e6:.2f}M parameters")


def take_turns(models, repeats, measures):
    """``measures[what](name, model)`` for every model in turn, ``repeats`` times, so that drift
    of the machine hits all models alike: {what: {name: median}}."""
    values = {what: {name: [] for name in models} for what in measures}
    for _ in range(repeats):
        for name, model in models.items():
            for what, measure in measures.items():
                values[what][name].append(measure(name, model))
    return {what: {name: statistics.median(v) for name, v in by_model.items()}
            for what, by_model in values.items()}


def goal(what, value, limit, device):
    """A goal ``value >= limit`` stated for ``device`` (limit None: none stated), as
    bench/gpu_report.py reads it."""
    return {"what": what, "value": value, "op": ">=", "limit": limit, "stated_for": device,
            "met": None if limit is None else value >= limit}


def write_json(opts, figures, goals):
    """--json: the options, torch and the device, ``figures`` and ``goals``."""
    out = {"config": vars(opts), "torch": torch.__version__,
           "device_name": torch.cuda.get_device_name() if opts.device == "cuda" else None,
           **figures, "goals": goals}
    Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {opts.json}")
