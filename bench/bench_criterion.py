"""Cost of self_kd_cross_entropy (alpha > 0) next to fairseq's cross_entropy, per training update.

One run measures both criteria on the same model and the same batches:

- model: fairseq's ``lstm_lm`` built programmatically, one layer, embeddings --embed (500), LSTM
  --hidden (400), output embeddings --out-embed (500), full softmax over a generated dictionary
  of --vocab (10000) symbols, dropout --dropout; built once with a fixed seed and deep-copied,
  so each criterion trains its own copy from the same initial weights with its own optimizer;
- data: --batches random batches of --bsz sentences x --tokens tokens (fixed seed, no padding,
  the target is the input shifted by one), cycled in the same order for both criteria;
- SKD: ``self_kd_cross_entropy`` with --skd-warmup-updates 0 and alpha fixed at --skd-alpha
  (skd_alpha_step = skd_alpha_max = --skd-alpha) and sigma --skd-sigma; the update number is
  passed on with ``criterion.set_num_updates`` before each update, as fairseq's trainer does;
  the script checks that alpha > 0 and that the SKD statistics were logged;
- an update is what fairseq's trainer does for one batch: zero_grad (set_to_none), forward,
  criterion, backward of loss / sample_size, optimizer step (SGD by default, --optimizer adam).

Time: --warmup update pairs are discarded, then --steps pairs are timed with the criteria
alternating ABBA (SKD first in even pairs, CE first in odd ones), so drift of a shared machine
and any first/second-in-pair effect hit both alike. Two clocks: wall time (perf_counter; on CUDA
every update is bracketed by torch.cuda.synchronize(), and wall time is the figure that counts
there) and the process's CPU time (process_time). With --threads 1 on a CPU shared with other
jobs, CPU time counts only the work done, not the time this process waited for a core, and is
much steadier than wall time. For each clock: median ms per update with its interquartile
range, the ratio of the medians SKD/CE, and the median (IQR) of the per-pair ratios SKD/CE, the
most robust figure on a noisy machine (the goals are checked against it).

Peak memory: for each criterion one extra (untimed) update, after the timed ones so that any
optimizer state exists, is measured on its own. Before it the gradients are set to None (as the
update's own zero_grad(set_to_none=True) would), so the update starts from the persistent state
(parameters + optimizer state, the same for both criteria; counted once per storage).

- CPU: torch.profiler with profile_memory=True records every allocation and free of tensor
  memory through PyTorch's CPU allocator, in order; their running sum is the tensor memory
  allocated above what was live when the update started, and its maximum is the update's
  transient peak. This counts exactly what the update's tensors need (activations saved for
  backward, the [N x V] logits, log-probabilities and their gradients, the gradients of the
  parameters, the criterion's temporaries) and is deterministic. The process RSS is not used:
  it depends on what glibc's malloc keeps cached from earlier updates (of either criterion), and
  even a fresh process per criterion would count allocator caching and fragmentation rather
  than what the criterion needs. Not counted: memory that libraries allocate outside PyTorch's
  allocator (e.g. oneDNN/MKL scratch), the same for both criteria since they run the same model.
- CUDA: torch.cuda.reset_peak_memory_stats() before the update; transient peak =
  max_memory_allocated() - memory_allocated() at its start.

Columns (MB = 2**20 bytes): "peak MB" = persistent + transient peak, what the goal is about; "transient MB" the
update's peak alone (the criterion's extra cost undiluted by the weights); "of which forward MB"
the transient peak reached by the end of forward + criterion, before the backward (SKD's
temporaries, e.g. the gathered rows of W, live there; the update's peak is usually in the
backward of the log-softmax, where they are gone). Goals (from the issue): time ratio <= 1.03
on CPU, peak memory ratio <= 1.05.

--profile additionally prints, for one update of each criterion, torch.profiler's table of the
operators with the most self time, to see where any extra time goes.

Usage (from the repository root; with the defaults about 1.5 minutes on an idle CPU core,
2-3 minutes on a busy one):

    OMP_NUM_THREADS=1 python bench/bench_criterion.py
    OMP_NUM_THREADS=1 python bench/bench_criterion.py --steps 60 --json /tmp/bench_criterion.json
    python bench/bench_criterion.py --device cuda --amp bf16 --threads 4
"""

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq.criterions.cross_entropy import CrossEntropyCriterion  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from fairseq.models import ARCH_CONFIG_REGISTRY  # noqa: E402
from fairseq.models.lstm_lm import LSTMLanguageModel  # noqa: E402

import fairseq_skd  # noqa: E402,F401
from fairseq_skd.criterions.self_kd_cross_entropy import SelfKDCrossEntropyCriterion  # noqa: E402

SKD, CE = "self_kd_cross_entropy", "cross_entropy"
END_OF_FORWARD = "bench_criterion::end_of_forward"


class _Task:
    """What LSTMLanguageModel.build_model and FairseqCriterion need of a task."""

    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary
        self.dictionary = dictionary


def make_dictionary(size):
    """A fairseq Dictionary of exactly ``size`` symbols (the 4 special ones included)."""
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    assert len(d) == size
    return d


def build_model(opts, task):
    args = argparse.Namespace(
        arch="lstm_lm", criterion="cross_entropy", dropout=opts.dropout,
        decoder_embed_dim=opts.embed, decoder_hidden_size=opts.hidden,
        decoder_out_embed_dim=opts.out_embed, decoder_layers=1,
        share_decoder_input_output_embed=False, adaptive_softmax_cutoff=None,
        tokens_per_sample=opts.tokens,
    )
    ARCH_CONFIG_REGISTRY["lstm_lm"](args)
    torch.manual_seed(opts.seed)
    model = LSTMLanguageModel.build_model(args, task)
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
        self.times = []
        self.last_logging_output = None

    def update(self, batch, after_forward=None):
        """One training update as fairseq's trainer does it (no logging reduction);
        ``after_forward()`` is called between the criterion's forward and the backward."""
        if hasattr(self.criterion, "set_num_updates"):  # cross_entropy has none
            self.criterion.set_num_updates(self.num_updates)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none",
                        help="torch.autocast dtype for forward and criterion (fp16: with a "
                        "GradScaler on CUDA)")
    parser.add_argument("--vocab", type=int, default=10000, help="dictionary size (specials included)")
    parser.add_argument("--embed", type=int, default=500, help="input embedding dim")
    parser.add_argument("--hidden", type=int, default=400, help="LSTM size")
    parser.add_argument("--out-embed", type=int, default=500, help="output embedding dim (rows of W)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--bsz", type=int, default=32, help="sentences per batch")
    parser.add_argument("--tokens", type=int, default=35, help="tokens per sentence")
    parser.add_argument("--batches", type=int, default=8, help="distinct random batches (cycled)")
    parser.add_argument("--steps", type=int, default=40, help="timed update pairs (one per criterion)")
    parser.add_argument("--warmup", type=int, default=5, help="update pairs run first and discarded")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--skd-alpha", type=float, default=0.5, help="alpha, constant from update 0")
    parser.add_argument("--skd-sigma", type=str, default="0.1", help="--skd-sigma of the criterion")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top operators for one update of each")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    opts = parser.parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if opts.steps < 2:
        parser.error("--steps must be at least 2 (quartiles)")
    if opts.skd_alpha <= 0:
        parser.error("--skd-alpha must be > 0 (this benchmark measures SKD with alpha > 0)")
    torch.set_num_threads(opts.threads)

    dictionary = make_dictionary(opts.vocab)
    task = _Task(dictionary)
    model = build_model(opts, task).to(opts.device).train()
    skd = SelfKDCrossEntropyCriterion(
        task, sentence_avg=False, skd_sigma=opts.skd_sigma, skd_warmup_updates=0,
        skd_alpha_step=opts.skd_alpha, skd_alpha_max=opts.skd_alpha)
    ce = CrossEntropyCriterion(task, sentence_avg=False)
    runners = {SKD: Runner(SKD, skd, copy.deepcopy(model), opts),
               CE: Runner(CE, ce, copy.deepcopy(model), opts)}
    del model
    batches = random_batches(opts, dictionary, opts.device)
    n_params = sum(p.numel() for p in runners[CE].model.parameters())

    print(f"torch {torch.__version__}, {opts.device}"
          + (f" ({torch.cuda.get_device_name()})" if opts.device == "cuda" else
             f", {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
          + f", amp {opts.amp}")
    print(f"lstm_lm: vocab {len(dictionary)}, embed {opts.embed}, hidden {opts.hidden}, out-embed "
          f"{opts.out_embed}, 1 layer, dropout {opts.dropout}, {n_params / 1e6:.2f}M parameters; "
          f"batches {opts.bsz} x {opts.tokens} tokens ({opts.batches} distinct); "
          f"{opts.optimizer} lr {opts.lr}")
    print(f"SKD: alpha {opts.skd_alpha} from update 0, sigma {opts.skd_sigma}; "
          f"{opts.warmup} warm-up + {opts.steps} timed update pairs, ABBA order")

    # Timed updates, ABBA: SKD first in even pairs, CE first in odd ones.
    order = [SKD, CE]
    for i in range(opts.warmup + opts.steps):
        batch = batches[i % len(batches)]
        pair = {name: runners[name].timed_update(batch)
                for name in (order if i % 2 == 0 else order[::-1])}
        if i >= opts.warmup:
            for name, seconds in pair.items():
                runners[name].times.append(seconds)

    log = runners[SKD].last_logging_output
    assert skd.alpha > 0 and "skd_qn_count" in log, "the SKD path was not taken"
    qn_count, positions = int(log["skd_qn_count"]), int(log["skd_positions"])

    memory = {}
    batch = batches[0]
    for name, runner in runners.items():
        runner.prepare_memory_measurement()
        persistent = runner.persistent_bytes()
        transient, forward = runner.transient_peak_bytes(batch)
        memory[name] = {"persistent_mb": persistent / 2**20, "transient_mb": transient / 2**20,
                        "forward_transient_mb": forward / 2**20,
                        "peak_mb": (persistent + transient) / 2**20}

    results, ratios = {}, {}
    for clock, index in (("wall", 0), ("cpu", 1)):
        for name, runner in runners.items():
            ms = [1000 * t[index] for t in runner.times]
            q1, med, q3 = quartiles(ms)
            results.setdefault(name, {}).update({
                f"{clock}_ms_median": med, f"{clock}_ms_q1": q1, f"{clock}_ms_q3": q3,
                f"{clock}_ms_all": ms})
        paired = [s[index] / c[index] for s, c in zip(runners[SKD].times, runners[CE].times)]
        r1, r_med, r3 = quartiles(paired)
        ratios.update({
            f"{clock}_time_ratio_of_medians":
                results[SKD][f"{clock}_ms_median"] / results[CE][f"{clock}_ms_median"],
            f"{clock}_time_paired_ratio_median": r_med,
            f"{clock}_time_paired_ratio_q1": r1, f"{clock}_time_paired_ratio_q3": r3})
    for name in runners:
        results[name].update(memory[name])
    ratios["peak_memory_ratio"] = results[SKD]["peak_mb"] / results[CE]["peak_mb"]
    ratios["transient_memory_ratio"] = results[SKD]["transient_mb"] / results[CE]["transient_mb"]
    ratios["forward_transient_memory_ratio"] = (results[SKD]["forward_transient_mb"]
                                                / results[CE]["forward_transient_mb"])
    memory_method = ("torch.cuda max_memory_allocated" if opts.device == "cuda"
                     else "torch.profiler profile_memory (CPU tensor allocations)")

    print()
    print("| criterion | wall ms/update: median (IQR) | CPU ms/update: median (IQR) "
          "| peak MB | transient MB | of which forward MB |")
    print("|---|---|---|---|---|---|")
    for name in (CE, SKD):
        r = results[name]
        print(f"| {name} | {r['wall_ms_median']:.1f} ({r['wall_ms_q1']:.1f}-{r['wall_ms_q3']:.1f}) "
              f"| {r['cpu_ms_median']:.1f} ({r['cpu_ms_q1']:.1f}-{r['cpu_ms_q3']:.1f}) "
              f"| {r['peak_mb']:.1f} | {r['transient_mb']:.1f} | {r['forward_transient_mb']:.1f} |")
    cells = [f"{ratios[f'{c}_time_ratio_of_medians']:.3f}; paired {ratios[f'{c}_time_paired_ratio_median']:.3f} "
             f"({ratios[f'{c}_time_paired_ratio_q1']:.3f}-{ratios[f'{c}_time_paired_ratio_q3']:.3f})"
             for c in ("wall", "cpu")]
    print(f"| SKD/CE | {cells[0]} | {cells[1]} | {ratios['peak_memory_ratio']:.3f} "
          f"| {ratios['transient_memory_ratio']:.3f} | {ratios['forward_transient_memory_ratio']:.3f} |")
    print()
    print("time ratios: ratio of the medians; paired = median (IQR) over the timed pairs of "
          "SKD time / CE time")
    goal = "time SKD/CE <= 1.03" + (" on CPU" if opts.device == "cpu" else "")
    for clock in ("wall", "cpu"):
        value = ratios[f"{clock}_time_paired_ratio_median"]
        print(f"goal {goal}, {clock} clock (paired median): "
              f"{'met' if value <= 1.03 else 'NOT met'} ({value:.3f})")
    print(f"goal peak memory SKD/CE <= 1.05: "
          f"{'met' if ratios['peak_memory_ratio'] <= 1.05 else 'NOT met'} "
          f"({ratios['peak_memory_ratio']:.3f})")
    print(f"memory: {memory_method}; peak = persistent (parameters + optimizer state: "
          f"{results[CE]['persistent_mb']:.1f} MB) + transient (the update's peak on top of them, "
          "gradients included)")
    print(f"SKD check: alpha {skd.alpha}, last batch: prediction != target at {qn_count} of "
          f"{positions} positions")

    if opts.profile:
        for name, runner in runners.items():
            print(f"\n{name}: one update, top operators by self time")
            print(runner.profile_table(batch, opts.profile_rows))

    if opts.json:
        out = {"config": vars(opts), "torch": torch.__version__, "memory_method": memory_method,
               "n_params": n_params, "criteria": results, "ratios": ratios}
        Path(opts.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"\nwrote {opts.json}")


if __name__ == "__main__":
    main()
