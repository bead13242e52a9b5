"""Cost of kd_cross_entropy next to fairseq's cross_entropy, per training update, with a teacher
of the student's size: online with the teacher's whole distribution, online with its top-K, and
from a cache of its top-K; the cache's disk use and the time of the pass that makes it.

The model, the batches, the optimizer, the rotation of the criteria over the rounds (a balanced
Latin square), the two clocks and the memory measurement (the update's transient peak above the
persistent state, from torch.profiler's record of tensor allocations on CPU) are those of
bench/bench_criterion.py, which this script reuses: fairseq's ``lstm_lm`` (one layer, 10K
words by default), --batches random batches of --bsz x --tokens tokens cycled in the same order
for every criterion. The teacher is another ``lstm_lm`` of the same size (another seed), frozen
and in eval mode. kd_cross_entropy runs with --kd-alpha 0.5 and --kd-temperature (default 1),
SKD off, as a user distilling from a teacher would.

The cache is made as fairseq-skd-cache-teacher makes it (``CacheWriter``): the teacher run once
over the batches, a sample id per sentence, its top-K rows stored; "the caching pass / one
epoch" compares that pass with one update of cross_entropy on each batch (an epoch of the
benchmark's data). Disk use is the cache's bytes per target token.

Goals (the issue's): online full <= 1.5x time; online top-8 <= 1.5x time and <= 1.1x peak
memory; cached top-8 <= 1.05x time and <= 1.05x peak memory (time: the paired median per
clock, memory: the peak ratio).

    OMP_NUM_THREADS=1 python bench/bench_kd.py                       # about 3 minutes on a CPU core
    OMP_NUM_THREADS=1 python bench/bench_kd.py --steps 24 --json /tmp/bench_kd.json
"""

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from fairseq.criterions.cross_entropy import CrossEntropyCriterion  # noqa: E402

import fairseq_skd  # noqa: E402,F401
from bench_criterion import (Runner, balanced_orders, build_lstm_lm, quartiles,  # noqa: E402
                             random_batches, sync)
from bench_utils import add_lm_size_options, benchmark_parser, parse_options  # noqa: E402
from fairseq_skd.criterions.kd_cross_entropy import (KDCrossEntropyConfig,  # noqa: E402
                                                     KDCrossEntropyCriterion)
from fairseq_skd.criterions.teacher import CachedTeacher, CacheWriter, OnlineTeacher  # noqa: E402
from helpers import SPECIAL_SYMBOLS, Task, make_dictionary  # noqa: E402

CE = "cross_entropy"
GOALS = {"online full": [("time", 1.5)], "online top-K": [("time", 1.5), ("memory", 1.1)],
         "cached top-K": [("time", 1.05), ("memory", 1.05)]}


def with_ids(batches, bsz):
    """The batches with a sample id per sentence (batch i, row b: i * bsz + b)."""
    for i, batch in enumerate(batches):
        batch["id"] = torch.arange(i * bsz, (i + 1) * bsz, device=batch["target"].device)
    return batches


def make_cache(teacher, batches, folder, topk, temperature):
    """The teacher's top-K of every sentence of ``batches`` in ``folder``: (seconds, bytes)."""
    sync()
    start = time.perf_counter()
    writer = CacheWriter(folder, "train")
    for batch in batches:
        dist = teacher.distribution(batch, temperature, topk)
        width = batch["target"].size(1)
        for b in range(batch["target"].size(0)):
            at = slice(b * width, (b + 1) * width)
            writer.add(dist.ids[at], dist.probs[at], dist.target_nll[at])
    writer.finish()
    sync()
    seconds = time.perf_counter() - start
    return seconds, sum(p.stat().st_size for p in Path(folder).glob("train.*.bin"))


def main(argv=None):
    parser = benchmark_parser(__doc__)
    add_lm_size_options(parser, dropout=0.1)
    parser.add_argument("--bsz", type=int, default=32, help="sentences per batch")
    parser.add_argument("--tokens", type=int, default=35, help="tokens per sentence")
    parser.add_argument("--batches", type=int, default=8, help="distinct random batches (cycled)")
    parser.add_argument("--steps", type=int, default=24, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=4, help="rounds run first and discarded")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--topk", type=int, default=8, help="K of the top-K and cached modes")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    opts = parse_options(parser, argv)

    dictionary = make_dictionary(opts.vocab - SPECIAL_SYMBOLS)
    task = Task(dictionary)
    model = build_lstm_lm(opts, dictionary).to(opts.device).train()
    teacher_opts = copy.copy(opts)
    teacher_opts.seed = opts.seed + 1
    teacher = OnlineTeacher([build_lstm_lm(teacher_opts, dictionary).to(opts.device)])
    batches = with_ids(random_batches(opts, dictionary, opts.device), opts.bsz)
    cache_dir = tempfile.TemporaryDirectory()
    cache_seconds, cache_bytes = make_cache(teacher, batches, cache_dir.name, opts.topk,
                                            opts.temperature)
    kd = dict(sentence_avg=False, kd_alpha=0.5, kd_temperature=opts.temperature)
    teachers = {
        "online full": (teacher, KDCrossEntropyConfig(**kd, kd_topk=0)),
        "online top-K": (teacher, KDCrossEntropyConfig(**kd, kd_topk=opts.topk)),
        "cached top-K": (CachedTeacher(str(Path(cache_dir.name) / "train"), opts.topk,
                                       dictionary.pad()),
                         KDCrossEntropyConfig(**kd, kd_topk=opts.topk)),
    }
    runners = {name: Runner(name, KDCrossEntropyCriterion(cfg, task, teacher=t),
                            copy.deepcopy(model), opts)
               for name, (t, cfg) in teachers.items()}
    runners[CE] = Runner(CE, CrossEntropyCriterion(task, sentence_avg=False), copy.deepcopy(model), opts)
    names = [*teachers, CE]
    orders = [[names[i] for i in row] for row in balanced_orders(len(names))]
    print(f"torch {torch.__version__}, {opts.device}, {torch.get_num_threads()} thread(s); lstm_lm "
          f"vocab {len(dictionary)}, {opts.embed}/{opts.hidden}/{opts.out_embed}, student and "
          f"teacher of the same size; {opts.bsz} x {opts.tokens} tokens per batch; K "
          f"{opts.topk}, T {opts.temperature}; {opts.warmup} + {opts.steps} rounds")

    for i in range(opts.warmup + opts.steps):
        batch = batches[i % len(batches)]
        for name in orders[i % len(orders)]:
            seconds = runners[name].timed_update(batch)
            if i >= opts.warmup:
                runners[name].times.append(seconds)
    assert all(float(runners[n].last_logging_output["kd_positions"]) > 0 for n in teachers)

    results = {}
    for name in names:
        runner = runners[name]
        runner.prepare_memory_measurement()
        persistent = runner.persistent_bytes()
        transient, _ = runner.transient_peak_bytes(batches[0])
        results[name] = {"peak_mb": (persistent + transient) / 2**20,
                         "transient_mb": transient / 2**20}
        for clock, index in (("wall", 0), ("cpu", 1)):
            results[name][f"{clock}_ms_median"] = quartiles([1000 * t[index] for t in runner.times])[1]
    ratios = {}
    for name in teachers:
        ratios[name] = {"peak_memory_ratio": results[name]["peak_mb"] / results[CE]["peak_mb"]}
        for clock, index in (("wall", 0), ("cpu", 1)):
            paired = [k[index] / c[index] for k, c in zip(runners[name].times, runners[CE].times)]
            ratios[name][f"{clock}_time_paired_ratio_median"] = quartiles(paired)[1]
    epoch_seconds = len(batches) * results[CE]["wall_ms_median"] / 1000
    positions = len(batches) * opts.bsz * opts.tokens

    print("\n| criterion | wall ms/update | CPU ms/update | time / CE (wall; CPU, paired medians) "
          "| peak MB | peak / CE |")
    print("|---|---:|---:|---|---:|---:|")
    for name in names:
        r = results[name]
        ratio = ("" if name == CE else f"{ratios[name]['wall_time_paired_ratio_median']:.3f}; "
                 f"{ratios[name]['cpu_time_paired_ratio_median']:.3f}")
        peak = "" if name == CE else f"{ratios[name]['peak_memory_ratio']:.3f}"
        label = name.replace("top-K", f"top-{opts.topk}")
        print(f"| {label} | {r['wall_ms_median']:.1f} | {r['cpu_ms_median']:.1f} | {ratio} "
              f"| {r['peak_mb']:.1f} | {peak} |")
    print(f"\ncache: {cache_bytes / positions:.1f} bytes per target token (top-{opts.topk}: int32 "
          f"ids, float16 probabilities, float32 teacher NLL); the caching pass took "
          f"{cache_seconds:.2f} s, {cache_seconds / epoch_seconds:.2f} of one epoch of "
          f"cross_entropy updates on the same {len(batches)} batches ({epoch_seconds:.2f} s)")
    goals = []
    for name, limits in GOALS.items():
        for what, limit in limits:
            # on a GPU the CPU clock measures nothing of the GPU's work: the wall clock alone
            clocks = ("wall",) if opts.device == "cuda" else ("wall", "cpu")
            values = ([(c, ratios[name][f"{c}_time_paired_ratio_median"]) for c in clocks]
                      if what == "time" else [("peak", ratios[name]["peak_memory_ratio"])])
            for label, value in values:
                met = value <= limit
                print(f"goal {name.replace('top-K', f'top-{opts.topk}')}: {what} / CE <= {limit} "
                      f"({label}): {'met' if met else 'NOT met'} ({value:.3f})")
                goals.append({"config": name, "what": what, "clock": label, "limit": limit,
                              "value": value, "met": met})
    if opts.json:
        out = {"config": vars(opts), "torch": torch.__version__, "criteria": results,
               "ratios": ratios, "goals": goals, "cache_bytes_per_token": cache_bytes / positions,
               "cache_pass_over_epoch": cache_seconds / epoch_seconds}
        Path(opts.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"\nwrote {opts.json}")
    cache_dir.cleanup()


if __name__ == "__main__":
    main()
