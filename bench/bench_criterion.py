"""Cost of self_kd_cross_entropy (alpha > 0) next to fairseq's cross_entropy, per training update.

One run measures cross_entropy and one or more configurations of self_kd_cross_entropy
(--modes, default: the paper's ``predicted`` alone) on the same model and the same batches:

- model: fairseq's ``lstm_lm`` built programmatically, one layer, embeddings --embed (500), LSTM
  --hidden (400), output embeddings --out-embed (500), full softmax over a generated dictionary
  of --vocab (10000) symbols, dropout --dropout; built once with a fixed seed and deep-copied,
  so each criterion trains its own copy from the same initial weights with its own optimizer;
- data: --batches random batches of --bsz sentences x --tokens tokens (fixed seed, no padding,
  the target is the input shifted by one), cycled in the same order for every criterion;
- SKD: ``self_kd_cross_entropy`` with --skd-warmup-updates 0 and alpha fixed at --skd-alpha
  (skd_alpha_step = skd_alpha_max = --skd-alpha), one criterion per entry of --modes, each
  MODE[:key=value...] with MODE one of predicted, topk, full (--skd-soft-targets) and the
  shared settings --skd-sigma (a number or auto), --skd-distance, --label-smoothing, --skd-topk,
  --skd-topk-refresh, --skd-sigma-refresh overridable per entry with the keys sigma, distance,
  ls, k, topk_refresh, sigma_refresh (e.g. ``--modes predicted topk full full:distance=cosine
  topk:k=50:sigma=auto``); the update number is given to the model with
  ``model.set_num_updates`` before each update, as fairseq's trainer does; the script checks that alpha > 0 and that the
  SKD statistics were logged;
- an update is what fairseq's trainer does for one batch: zero_grad (set_to_none), forward,
  criterion, backward of loss / sample_size, optimizer step (SGD by default, --optimizer adam).

Time: --warmup rounds are discarded, then --steps rounds are timed. A round is one update of
every criterion on the same batch; the order within a round follows a balanced Latin square
(Williams design: every criterion is equally often in every position and, over the rows, right
after every other one; with an odd count of criteria the mirrored rows are added), one row per
round in turn. For two criteria (the default) this is the ABBA scheme: SKD first in even rounds,
CE first in odd ones. So drift of a shared machine and position/carry-over effects (e.g. the
cache left by the previous update) hit all criteria alike; use a multiple of the rows for
--steps (printed) for an exact balance. Two clocks: wall time (perf_counter; on CUDA every
update is bracketed by torch.cuda.synchronize(), and wall time is the figure that counts there)
and the process's CPU time (process_time). With --threads 1 on a CPU shared with other jobs,
CPU time counts only the work done, not the time this process waited for a core, and is much
steadier than wall time. For each clock: median ms per update with its interquartile range, the
ratio of the medians SKD/CE, and the median (IQR) of the per-round ratios SKD/CE, the most robust
figure on a noisy machine (the goals are checked against it).

Periodic work: ``topk`` recomputes each word's K nearest words every --skd-topk-refresh updates
and ``--skd-sigma auto`` the mean nearest-neighbour distance every --skd-sigma-refresh updates
(both at the first update, which is in the warm-up). A timed update that includes one is kept
(the median hardly sees it); the cost of one refresh is also measured on its own (after the
timed rounds, on the trained W) and shown amortised per update: "+refresh" columns, median time
+ refresh time / period, over CE's median.

Peak memory: for each criterion one extra (untimed) update, after the timed ones so that any
optimizer state exists, is measured on its own. Before it the gradients are set to None (as the
update's own zero_grad(set_to_none=True) would), so the update starts from the persistent state
(parameters + optimizer state, the same for all criteria; counted once per storage).

- CPU: torch.profiler with profile_memory=True records every allocation and free of tensor
  memory through PyTorch's CPU allocator, in order; their running sum is the tensor memory
  allocated above what was live when the update started, and its maximum is the update's
  transient peak. This counts exactly what the update's tensors need (activations saved for
  backward, the [N x V] logits, log-probabilities and their gradients, the gradients of the
  parameters, the criterion's temporaries) and is deterministic. The process RSS is not used:
  it depends on what glibc's malloc keeps cached from earlier updates (of any criterion), and
  even a fresh process per criterion would count allocator caching and fragmentation rather
  than what the criterion needs. Not counted: memory that libraries allocate outside PyTorch's
  allocator (e.g. oneDNN/MKL scratch), the same for all criteria since they run the same model.
- CUDA: torch.cuda.reset_peak_memory_stats() before the update; transient peak =
  max_memory_allocated() - memory_allocated() at its start.

Columns (MB = 2**20 bytes): "peak MB" = persistent + transient peak, what the goals are about;
"transient MB" the update's peak alone (the criterion's extra cost undiluted by the weights);
"of which forward MB" the transient peak reached by the end of forward + criterion, before the
backward (SKD's temporaries, e.g. the gathered rows of W, live there; the update's peak is
usually in the backward of the log-softmax, where they are gone).

Goals (from the issue; time: paired median per clock; memory: peak ratio): predicted <= 1.03
time and <= 1.05 peak memory on CPU, <= 1.01 and <= 1.02 on GPU; topk <= 1.05 time; full <= 1.3
time and <= 1.2 peak memory on GPU. A goal stated for the other device is printed with its ratio
only ("for reference"); on GPU only the wall clock decides (the CPU clock is for reference).

--profile additionally prints, for one update of each criterion, torch.profiler's table of the
operators with the most self time, to see where any extra time goes.

Usage (from the repository root; with the defaults about 1.5 minutes on an idle CPU core,
2-3 minutes on a busy one; each further mode adds about as much):

    OMP_NUM_THREADS=1 python bench/bench_criterion.py
    OMP_NUM_THREADS=1 python bench/bench_criterion.py --steps 60 --json /tmp/bench_criterion.json
    OMP_NUM_THREADS=1 python bench/bench_criterion.py --modes predicted topk full --steps 24
    OMP_NUM_THREADS=1 python bench/bench_criterion.py --modes full full:distance=cosine --sigma auto
    python bench/bench_criterion.py --device cuda --amp bf16 --threads 4 --modes predicted topk full
"""

import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# the plugin of this checkout, and the tests' helpers (tests/helpers.py)
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fairseq.criterions.cross_entropy import CrossEntropyCriterion  # noqa: E402

import fairseq_skd  # noqa: E402,F401
from fairseq_skd.criterions.self_kd_cross_entropy import (  # noqa: E402
    SOFT_TARGETS,
    SelfKDCrossEntropyConfig,
    SelfKDCrossEntropyCriterion,
)
from fairseq_skd.modules.embedding_distance import (  # noqa: E402
    DISTANCES,
    mean_nearest_neighbour_distance,
    nearest_neighbours,
)
from fairseq_skd.modules.output_embedding import find_output_embedding  # noqa: E402
from fairseq_skd.modules.update_counter import attach_update_counter  # noqa: E402
from bench_utils import add_lm_size_options, benchmark_parser, parse_options  # noqa: E402
from helpers import SPECIAL_SYMBOLS, Task, build_model, make_dictionary  # noqa: E402

SKD, CE = "self_kd_cross_entropy", "cross_entropy"
END_OF_FORWARD = "bench_criterion::end_of_forward"


def build_lstm_lm(opts, dictionary):
    """fairseq's lstm_lm, one layer, full softmax."""
    model = build_model(
        "lstm_lm", dictionary, opts.seed,
        arch="lstm_lm", criterion="cross_entropy", dropout=opts.dropout,
        decoder_embed_dim=opts.embed, decoder_hidden_size=opts.hidden,
        decoder_out_embed_dim=opts.out_embed, decoder_layers=1,
        share_decoder_input_output_embed=False, adaptive_softmax_cutoff=None,
        tokens_per_sample=opts.tokens,
    )
    assert model.decoder.adaptive_softmax is None
    return model


def random_batches(opts, dictionary, device):
    g = torch.Generator().manual_seed(opts.seed)
    batches = []
    for _ in range(opts.batches):
        stream = torch.randint(dictionary.nspecial, len(dictionary), (opts.bsz, opts.tokens + 1),
                               generator=g)
        src, tgt = stream[:, :-1].contiguous(), stream[:, 1:].contiguous()
        batches.append({
            "net_input": {"src_tokens": src.to(device),
                          "src_lengths": torch.full((opts.bsz,), opts.tokens).to(device)},
            "target": tgt.to(device),
            "ntokens": tgt.numel(),
            "nsentences": opts.bsz,
        })
    return batches


class Runner:
    """One criterion with its own copy of the model and its own optimizer."""

    def __init__(self, name, criterion, model, opts):
        self.name, self.criterion, self.model = name, criterion, model
        params = list(model.parameters())
        if opts.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=opts.lr)
        else:
            self.optimizer = torch.optim.SGD(params, lr=opts.lr)
        self.device = opts.device
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(opts.amp)
        self.scaler = (torch.amp.GradScaler("cuda")
                       if opts.amp == "fp16" and opts.device == "cuda" else None)
        self.num_updates = 0
        attach_update_counter(model)  # the criterion would at its first forward
        self.times = []
        self.last_logging_output = None

    def update(self, batch, after_forward=None):
        """One training update as fairseq's trainer does it (no logging reduction);
        ``after_forward()`` is called between the criterion's forward and the backward."""
        self.model.set_num_updates(self.num_updates)  # as FairseqTask.train_step does
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            loss, sample_size, logging_output = self.criterion(self.model, batch)
        loss = loss / sample_size
        if after_forward is not None:
            after_forward()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.num_updates += 1
        self.last_logging_output = logging_output

    def timed_update(self, batch):
        """(wall seconds, CPU seconds of this process) of one update."""
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        self.update(batch)
        sync()
        return time.perf_counter() - start, time.process_time() - start_cpu

    def prepare_memory_measurement(self):
        """Free what the last update left that the next one frees anyway (the gradients, the
        logging output), so the measured update starts from the persistent state alone."""
        self.optimizer.zero_grad(set_to_none=True)
        self.last_logging_output = None

    def persistent_bytes(self):
        """Parameters, gradients and optimizer state of this runner (each storage once)."""
        tensors = list(self.model.parameters())
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        storages = {}
        for t in tensors:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return sum(storages.values())

    def transient_peak_bytes(self, batch):
        """Peak of the memory allocated during one update above what was live at its start:
        (over the whole update, over its forward and criterion only)."""
        if self.device == "cuda":
            forward_peak = []
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            self.update(batch, after_forward=lambda: forward_peak.append(
                torch.cuda.max_memory_allocated() - base))
            sync()
            return torch.cuda.max_memory_allocated() - base, forward_peak[0]
        from torch.profiler import ProfilerActivity, profile, record_function

        def mark():
            with record_function(END_OF_FORWARD):
                pass

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.update(batch, after_forward=mark)
        events = prof.profiler.kineto_results.events()
        end_of_forward = next(e.start_ns() for e in events if e.name() == END_OF_FORWARD)
        memory = sorted((e for e in events if e.name() == "[memory]"
                         and e.device_type() == torch.autograd.DeviceType.CPU),
                        key=lambda e: e.start_ns())
        current = peak = forward_peak = 0
        for e in memory:
            current += e.nbytes()
            peak = max(peak, current)
            if e.start_ns() < end_of_forward:
                forward_peak = peak
        return peak, forward_peak

    def profile_table(self, batch, rows):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            self.update(batch)
            sync()
        key = "self_device_time_total" if self.device == "cuda" else "self_cpu_time_total"
        return prof.key_averages().table(sort_by=key, row_limit=rows)


def sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def quartiles(values):
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


# Per-entry keys of --modes MODE[:key=value...] -> (criterion argument, type).
MODE_KEYS = {
    "sigma": ("skd_sigma", str),
    "sigma_refresh": ("skd_sigma_refresh", int),
    "distance": ("skd_distance", str),
    "ls": ("label_smoothing", float),
    "label_smoothing": ("label_smoothing", float),
    "k": ("skd_topk", int),
    "topk": ("skd_topk", int),
    "topk_refresh": ("skd_topk_refresh", int),
}

# Goals of the issue: mode -> [(what, limit, device the goal is stated for)].
GOALS = {
    "predicted": [("time", 1.03, "cpu"), ("memory", 1.05, "cpu"),
                  ("time", 1.01, "cuda"), ("memory", 1.02, "cuda")],
    "topk": [("time", 1.05, None)],
    "full": [("time", 1.3, "cuda"), ("memory", 1.2, "cuda")],
}


def skd_config(spec, opts):
    """--modes entry MODE[:key=value...] -> fields of the criterion's SelfKDCrossEntropyConfig."""
    mode, *overrides = spec.split(":")
    if mode not in SOFT_TARGETS:
        raise ValueError(f"--modes {spec!r}: the mode must be one of {SOFT_TARGETS}")
    kwargs = {"skd_soft_targets": mode, "skd_sigma": opts.skd_sigma,
              "skd_sigma_refresh": opts.skd_sigma_refresh, "skd_distance": opts.skd_distance,
              "label_smoothing": opts.label_smoothing, "skd_topk": opts.skd_topk,
              "skd_topk_refresh": opts.skd_topk_refresh}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in MODE_KEYS:
            raise ValueError(f"--modes {spec!r}: {item!r} is not key=value with key one of "
                             f"{sorted(MODE_KEYS)}")
        name, convert = MODE_KEYS[key]
        try:
            kwargs[name] = convert(value)
        except ValueError:
            raise ValueError(f"--modes {spec!r}: {key} must be a {convert.__name__}, got "
                             f"{value!r}") from None
    return kwargs


def describe(kwargs):
    mode = kwargs["skd_soft_targets"]
    sigma = kwargs["skd_sigma"]
    text = f"{mode}: sigma {sigma}"
    if str(sigma).strip().lower() == "auto":
        text += f" (refresh every {kwargs['skd_sigma_refresh']})"
    text += f", distance {kwargs['skd_distance']}"
    if mode == "topk":
        text += f", K {kwargs['skd_topk']} (neighbours refreshed every {kwargs['skd_topk_refresh']})"
    if kwargs["label_smoothing"] > 0:
        text += f", label smoothing {kwargs['label_smoothing']}"
    return text


def balanced_orders(n):
    """Rows of a balanced Latin square (Williams design) of n items: each item is equally often
    in each position and right after each other item; n rows for even n, 2n for odd n."""
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        if len(first) % 2:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    rows = [[(x + r) % n for x in first] for r in range(n)]
    if n % 2 and n > 1:
        rows += [row[::-1] for row in rows]
    return rows


def refreshes(criterion, first_update, count):
    """Update numbers in [first_update, first_update + count) at which ``criterion`` recomputes
    its neighbour table or sigma (the first forward, update 0, always does)."""
    periods = []
    if criterion.soft_targets == "topk":
        periods.append(criterion.topk_refresh)
    if criterion.auto_sigma:
        periods.append(criterion.sigma_refresh)
    return [u for u in range(first_update, first_update + count)
            if u == 0 or any(u % p == 0 for p in periods)]


def refresh_cost(criterion, model):
    """(wall s, CPU s, work) of one recomputation of the neighbour table and/or auto sigma,
    and the update period of each, on the model's current W."""
    output_embed = find_output_embedding(model)
    parts = []
    if criterion.soft_targets == "topk":
        parts.append((f"K={criterion.topk} nearest words", criterion.topk_refresh,
                      lambda: nearest_neighbours(output_embed, criterion.topk, criterion.distance,
                                                 exclude=criterion.padding_idx)))
    if criterion.auto_sigma:
        parts.append(("auto sigma", criterion.sigma_refresh,
                      lambda: mean_nearest_neighbour_distance(output_embed, criterion.distance,
                                                              exclude=criterion.padding_idx)))
    out = []
    for what, period, work in parts:
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        sync()
        out.append({"what": what, "period": period, "wall_ms": 1000 * (time.perf_counter() - start),
                    "cpu_ms": 1000 * (time.process_time() - start_cpu)})
    return out


def fmt_ratio(r, clock):
    return (f"{r[f'{clock}_time_ratio_of_medians']:.3f}; paired "
            f"{r[f'{clock}_time_paired_ratio_median']:.3f} ({r[f'{clock}_time_paired_ratio_q1']:.3f}-"
            f"{r[f'{clock}_time_paired_ratio_q3']:.3f})")


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none",
                        help="torch.autocast dtype for forward and criterion (fp16: with a "
                        "GradScaler on CUDA)")
    add_lm_size_options(parser, dropout=0.1)
    parser.add_argument("--bsz", type=int, default=32, help="sentences per batch")
    parser.add_argument("--tokens", type=int, default=35, help="tokens per sentence")
    parser.add_argument("--batches", type=int, default=8, help="distinct random batches (cycled)")
    parser.add_argument("--steps", type=int, default=40,
                        help="timed rounds (one update of every criterion each)")
    parser.add_argument("--warmup", type=int, default=5, help="rounds run first and discarded")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--modes", nargs="+", default=["predicted"], metavar="MODE[:key=value]",
                        help="SKD configurations measured next to cross_entropy: "
                        f"{'|'.join(SOFT_TARGETS)} (--skd-soft-targets), optionally with "
                        f"per-entry settings :key=value, key one of {', '.join(MODE_KEYS)}")
    parser.add_argument("--skd-alpha", type=float, default=0.5, help="alpha, constant from update 0")
    parser.add_argument("--skd-sigma", "--sigma", type=str, default="0.1",
                        help="--skd-sigma of the criterion: a number or auto")
    parser.add_argument("--skd-sigma-refresh", type=int, default=100,
                        help="with --skd-sigma auto: updates between recomputations")
    parser.add_argument("--skd-distance", "--distance", choices=list(DISTANCES), default="l2")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="--label-smoothing of self_kd_cross_entropy (the baseline stays "
                        "plain cross_entropy)")
    parser.add_argument("--skd-topk", type=int, default=10, help="K of the topk mode")
    parser.add_argument("--skd-topk-refresh", type=int, default=100,
                        help="updates between recomputations of topk's nearest-word table")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top operators for one update of each")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    opts = parse_options(parser, argv)
    if opts.steps < 2:
        parser.error("--steps must be at least 2 (quartiles)")
    if opts.skd_alpha <= 0:
        parser.error("--skd-alpha must be > 0 (this benchmark measures SKD with alpha > 0)")
    if len(set(opts.modes)) != len(opts.modes):
        parser.error(f"--modes: an entry is repeated: {opts.modes}")
    if CE in opts.modes:
        parser.error(f"--modes: {CE} is always measured, as the baseline")

    dictionary = make_dictionary(opts.vocab - SPECIAL_SYMBOLS)
    task = Task(dictionary)
    model = build_lstm_lm(opts, dictionary).to(opts.device).train()
    configs, runners = {}, {}
    for spec in opts.modes:
        try:
            configs[spec] = skd_config(spec, opts)
            cfg = SelfKDCrossEntropyConfig(
                sentence_avg=False, skd_warmup_updates=0, skd_alpha_step=opts.skd_alpha,
                skd_alpha_max=opts.skd_alpha, **configs[spec])
            criterion = SelfKDCrossEntropyCriterion(cfg, task)
        except ValueError as e:
            parser.error(str(e))
        runners[spec] = Runner(spec, criterion, copy.deepcopy(model), opts)
    runners[CE] = Runner(CE, CrossEntropyCriterion(task, sentence_avg=False),
                         copy.deepcopy(model), opts)
    del model
    skd_names = list(configs)
    batches = random_batches(opts, dictionary, opts.device)
    n_params = sum(p.numel() for p in runners[CE].model.parameters())
    names = skd_names + [CE]
    orders = [[names[i] for i in row] for row in balanced_orders(len(names))]

    print(f"torch {torch.__version__}, {opts.device}"
          + (f" ({torch.cuda.get_device_name()})" if opts.device == "cuda" else
             f", {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
          + f", amp {opts.amp}")
    print(f"lstm_lm: vocab {len(dictionary)}, embed {opts.embed}, hidden {opts.hidden}, out-embed "
          f"{opts.out_embed}, 1 layer, dropout {opts.dropout}, {n_params / 1e6:.2f}M parameters; "
          f"batches {opts.bsz} x {opts.tokens} tokens ({opts.batches} distinct); "
          f"{opts.optimizer} lr {opts.lr}")
    print(f"SKD: alpha {opts.skd_alpha} from update 0; configurations:")
    for spec in skd_names:
        print(f"  {spec} = {describe(configs[spec])}")
    balance = ("" if opts.steps % len(orders) == 0 else
               f" (not a multiple of the {len(orders)} orders: the balance is approximate)")
    print(f"{opts.warmup} warm-up + {opts.steps} timed rounds of {len(names)} updates{balance}; "
          f"orders, one per round in turn: "
          + " / ".join(" ".join("CE" if n == CE else n for n in row) for row in orders))

    # Timed rounds: one update of every criterion on the same batch, in the order of the round.
    for i in range(opts.warmup + opts.steps):
        batch = batches[i % len(batches)]
        round_times = {name: runners[name].timed_update(batch) for name in orders[i % len(orders)]}
        if i >= opts.warmup:
            for name, seconds in round_times.items():
                runners[name].times.append(seconds)

    checks = {}
    for spec in skd_names:
        criterion, log = runners[spec].criterion, runners[spec].last_logging_output
        assert criterion.alpha > 0 and "skd_qn_count" in log, f"{spec}: the SKD path was not taken"
        checks[spec] = {"alpha": criterion.alpha, "qn_count": int(log["skd_qn_count"]),
                        "positions": int(log["skd_positions"]),
                        "qn_mean": float(log["skd_qn_sum"]) / max(1, int(log["skd_qn_count"])),
                        "clipped": int(log["skd_clipped"]),
                        "timed_refreshes": refreshes(criterion, opts.warmup, opts.steps),
                        "memory_update_refreshes": bool(refreshes(
                            criterion, opts.warmup + opts.steps, 1))}

    memory = {}
    batch = batches[0]
    for name in names:
        runner = runners[name]
        runner.prepare_memory_measurement()
        persistent = runner.persistent_bytes()
        transient, forward = runner.transient_peak_bytes(batch)
        memory[name] = {"persistent_mb": persistent / 2**20, "transient_mb": transient / 2**20,
                        "forward_transient_mb": forward / 2**20,
                        "peak_mb": (persistent + transient) / 2**20}
    refresh = {spec: refresh_cost(runners[spec].criterion, runners[spec].model)
               for spec in skd_names}

    results, ratios = {}, {spec: {} for spec in skd_names}
    for clock, index in (("wall", 0), ("cpu", 1)):
        for name in names:
            ms = [1000 * t[index] for t in runners[name].times]
            q1, med, q3 = quartiles(ms)
            results.setdefault(name, {}).update({
                f"{clock}_ms_median": med, f"{clock}_ms_q1": q1, f"{clock}_ms_q3": q3,
                f"{clock}_ms_all": ms})
        for spec in skd_names:
            paired = [s[index] / c[index] for s, c in zip(runners[spec].times, runners[CE].times)]
            r1, r_med, r3 = quartiles(paired)
            ce_median = results[CE][f"{clock}_ms_median"]
            amortised = sum(part[f"{clock}_ms"] / part["period"] for part in refresh[spec])
            ratios[spec].update({
                f"{clock}_time_ratio_of_medians": results[spec][f"{clock}_ms_median"] / ce_median,
                f"{clock}_time_paired_ratio_median": r_med,
                f"{clock}_time_paired_ratio_q1": r1, f"{clock}_time_paired_ratio_q3": r3,
                f"{clock}_refresh_ms_per_update": amortised,
                f"{clock}_time_ratio_with_refresh":
                    (results[spec][f"{clock}_ms_median"] + amortised) / ce_median})
    for name in names:
        results[name].update(memory[name])
    for spec in skd_names:
        for key, column in (("peak_memory_ratio", "peak_mb"), ("transient_memory_ratio", "transient_mb"),
                            ("forward_transient_memory_ratio", "forward_transient_mb")):
            ratios[spec][key] = results[spec][column] / results[CE][column]
    memory_method = ("torch.cuda max_memory_allocated" if opts.device == "cuda"
                     else "torch.profiler profile_memory (CPU tensor allocations)")

    print()
    print("| criterion | wall ms/update: median (IQR) | CPU ms/update: median (IQR) "
          "| peak MB | transient MB | of which forward MB |")
    print("|---|---|---|---|---|---|")
    for name in [CE] + skd_names:
        r = results[name]
        print(f"| {name} | {r['wall_ms_median']:.1f} ({r['wall_ms_q1']:.1f}-{r['wall_ms_q3']:.1f}) "
              f"| {r['cpu_ms_median']:.1f} ({r['cpu_ms_q1']:.1f}-{r['cpu_ms_q3']:.1f}) "
              f"| {r['peak_mb']:.1f} | {r['transient_mb']:.1f} | {r['forward_transient_mb']:.1f} |")
    for spec in skd_names:
        r = ratios[spec]
        print(f"| {spec}/CE | {fmt_ratio(r, 'wall')} | {fmt_ratio(r, 'cpu')} "
              f"| {r['peak_memory_ratio']:.3f} | {r['transient_memory_ratio']:.3f} "
              f"| {r['forward_transient_memory_ratio']:.3f} |")
    print()
    print("time ratios: ratio of the medians; paired = median (IQR) over the timed rounds of "
          "SKD time / CE time in the same round")
    periodic = [spec for spec in skd_names if refresh[spec]]
    if periodic:
        print()
        print("| criterion | periodic work: ms wall / CPU, every N updates | +refresh ms/update "
              "wall / CPU | +refresh time ratio wall / CPU | timed updates that included one |")
        print("|---|---|---|---|---|")
        for spec in periodic:
            r = ratios[spec]
            work = "; ".join(f"{p['what']}: {p['wall_ms']:.0f} / {p['cpu_ms']:.0f}, every "
                             f"{p['period']}" for p in refresh[spec])
            print(f"| {spec} | {work} | {r['wall_refresh_ms_per_update']:.1f} / "
                  f"{r['cpu_refresh_ms_per_update']:.1f} | {r['wall_time_ratio_with_refresh']:.3f} / "
                  f"{r['cpu_time_ratio_with_refresh']:.3f} | "
                  f"{len(checks[spec]['timed_refreshes'])} of {opts.steps} |")
        print("+refresh: (median + one refresh's time / its period) / CE's median; the refresh is "
              "timed once on its own, on the trained W")

    print()
    goals = []
    for spec in skd_names:
        mode = configs[spec]["skd_soft_targets"]
        for what, limit, device in GOALS[mode]:
            here = device is None or device == opts.device
            where = "" if device is None else f" on {'GPU' if device == 'cuda' else 'CPU'}"
            if what == "time":
                values = [(clock, ratios[spec][f"{clock}_time_paired_ratio_median"])
                          for clock in ("wall", "cpu")]
                text = "time"
            else:
                values = [("peak", ratios[spec]["peak_memory_ratio"])]
                text = "peak memory"
            for label, value in values:
                met = value <= limit
                # on CUDA the process's CPU time is not the update's time: wall time decides
                decides = here and not (opts.device == "cuda" and label == "cpu")
                status = ("met" if met else "NOT met") if decides else "for reference only"
                suffix = f", {label} clock (paired median)" if what == "time" else ""
                print(f"goal {spec}: {text} /CE <= {limit}{where}{suffix}: {status} ({value:.3f})")
                goals.append({"config": spec, "what": what, "clock": label, "limit": limit,
                              "stated_for": device, "value": value,
                              "met": met if decides else None})
    print(f"memory: {memory_method}; peak = persistent (parameters + optimizer state: "
          f"{results[CE]['persistent_mb']:.1f} MB) + transient (the update's peak on top of them, "
          "gradients included)")
    for spec in skd_names:
        c = checks[spec]
        if configs[spec]["skd_soft_targets"] == "predicted":
            detail = (f"prediction != target at {c['qn_count']} of {c['positions']} positions, "
                      f"mean q_n there {c['qn_mean']:.3f}, clipped {c['clipped']}")
        else:
            detail = (f"mean non-target mass {c['qn_mean']:.3f} over {c['qn_count']} positions, "
                      f"clipped at {c['clipped']}")
        print(f"SKD check {spec}: alpha {c['alpha']}, last batch: {detail}")
        if c["memory_update_refreshes"]:
            print(f"note {spec}: the update whose memory is measured includes a refresh of the "
                  "neighbour table or sigma (its peak counts that too)")

    if opts.profile:
        for name in names:
            print(f"\n{name}: one update, top operators by self time")
            print(runners[name].profile_table(batch, opts.profile_rows))

    if opts.json:
        out = {"config": vars(opts), "torch": torch.__version__, "memory_method": memory_method,
               "n_params": n_params, "skd_configs": configs, "orders": orders,
               "criteria": results, "ratios": ratios, "refresh": refresh, "checks": checks,
               "goals": goals}
        Path(opts.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"\nwrote {opts.json}")


if __name__ == "__main__":
    main()
