"""Time per training step of fairseq_skd.hf.SKDTrainer next to transformers' own Trainer
(cross-entropy) on a tiny GPT-2, side by side.

Both train the same model (GPT-2 from a config, --layers x --dim, --vocab words; the same
initial weights) on the same random batches (--batch x --length tokens, a random prompt of each
sentence labelled -100) with the same optimizer; SKD runs with alpha > 0 from the first step
(predicted soft targets, a fixed sigma, so no periodic sigma refresh is timed). A callback times
each optimizer step (on_step_begin to on_step_end: forward, loss, backward, optimizer), the first
--warmup steps discarded. The two trainers take turns for --rounds rounds of --steps steps each
(ABBA: CE first in even rounds), so that drift of the machine hits both alike; the figure is the
median over the rounds of the ratio of their median step times (SKD / CE), with both medians.

Goal (the issue's): SKD / CE <= 1.05 on CPU.

    OMP_NUM_THREADS=1 python bench/bench_hf.py                # about a minute on a CPU core
    OMP_NUM_THREADS=1 python bench/bench_hf.py --json /tmp/bench_hf.json
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="steps discarded at each round's start")
    p.add_argument("--rounds", type=int, default=12,
                   help="single rounds' ratios ranged from 0.98 to 1.21 in one CPU run: take many")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="OUT")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback,
                              TrainingArguments, default_data_collator)

    from fairseq_skd.hf import SKDArguments, SKDTrainer

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    g = torch.Generator().manual_seed(args.seed)
    steps = args.warmup + args.steps
    data = []
    for i in range(args.batch * steps):
        ids = torch.randint(0, args.vocab, (args.length,), generator=g)
        labels = ids.clone()
        labels[: int(torch.randint(0, args.length // 4, (1,), generator=g))] = -100
        data.append({"input_ids": ids, "labels": labels})
    config = GPT2Config(vocab_size=args.vocab, n_positions=args.length, n_embd=args.dim,
                        n_layer=args.layers, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(args.seed)
    initial = GPT2LMHeadModel(config).state_dict()
    skd = SKDArguments(warmup_steps=0, alpha_step=0.5, sigma=0.1)
    medians = {"cross_entropy": [], "skd": []}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            order = ["cross_entropy", "skd"] if r % 2 == 0 else ["skd", "cross_entropy"]
            for name in order:
                model = GPT2LMHeadModel(config)
                model.load_state_dict(initial)
                clock = StepClock()
                training = TrainingArguments(
                    output_dir=out, max_steps=steps, per_device_train_batch_size=args.batch,
                    learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=steps,
                    disable_tqdm=True, use_cpu=True, seed=args.seed, data_seed=args.seed)
                kwargs = dict(model=model, args=training, train_dataset=data,
                              data_collator=default_data_collator, callbacks=[clock])
                trainer = SKDTrainer(**kwargs, skd=skd) if name == "skd" else Trainer(**kwargs)
                trainer.train()
                medians[name].append(statistics.median(clock.times[args.warmup:]))
    ratios = [s / c for s, c in zip(medians["skd"], medians["cross_entropy"])]
    ratio = statistics.median(ratios)
    print(f"torch {torch.__version__}, {args.threads} thread(s); GPT-2 {args.layers} x {args.dim}, "
          f"vocab {args.vocab}, {args.batch} x {args.length} tokens a step; {args.rounds} rounds of "
          f"{args.steps} timed steps")
    print("| round | Trainer (CE) ms/step | SKDTrainer ms/step | SKD / CE |\n|---|---:|---:|---:|")
    for r, (c, s) in enumerate(zip(medians["cross_entropy"], medians["skd"])):
        print(f"| {r + 1} | {1000 * c:.1f} | {1000 * s:.1f} | {s / c:.3f} |")
    met = ratio <= 1.05
    print(f"goal SKDTrainer / Trainer <= 1.05 per step: {'met' if met else 'NOT met'} ({ratio:.3f}, "
          "median over the rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "torch": torch.__version__,
                                               "medians_s": medians, "ratios": ratios,
                                               "ratio": ratio, "met": met}, indent=2) + "\n")


if __name__ == "__main__":
    main()
