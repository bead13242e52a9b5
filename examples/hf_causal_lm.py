"""Train a small causal language model (the GPT-2 architecture, from a config: nothing is
downloaded) on a local text file with Hugging Face's Trainer, once with plain cross-entropy and
once with self-knowledge distillation (fairseq_skd.hf.SKDTrainer), and compare them on held-out
text.

    python examples/hf_causal_lm.py --train train.txt --valid valid.txt --out outputs/hf_lm

The text files hold one sentence a line; the words (split on spaces) are the tokens: a word-level
tokenizer is built from the training file (``tokenizers``). Both runs get the same model
initialisation, data order and number of steps; evaluation reports each model's plain NLL per
token (the SKD run's too) and its perplexity. Needs the hf extra: pip install ".[hf]".
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", required=True, help="training text, one sentence a line")
    p.add_argument("--valid", required=True, help="held-out text, one sentence a line")
    p.add_argument("--out", required=True, help="output folder (checkpoints, results.json)")
    p.add_argument("--steps", type=int, default=600, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dim", type=int, default=128, help="embedding and hidden size")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=64, help="tokens per sentence at most")
    p.add_argument("--skd-warmup-steps", type=int, default=None,
                   help="K, steps with alpha 0 (default: a quarter of --steps)")
    p.add_argument("--skd-alpha-step", type=float, default=None,
                   help="eta (default: alpha reaches 1 two thirds of the way from K to the end)")
    p.add_argument("--sigma", default="auto", help="a number, or auto")
    p.add_argument("--seed", type=int, default=1)
    return p


def word_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train([str(path)], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   unk_token="<unk>", eos_token="</s>")


def sentences(path, tokenizer, max_length):
    """Each line's token ids with </s> at the end, as {input_ids, labels}."""
    data = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ids = tokenizer(line.strip())["input_ids"][: max_length - 1] + [tokenizer.eos_token_id]
                data.append({"input_ids": ids, "labels": list(ids)})
    return data


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import torch
        from transformers import (DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, Trainer,
                                  TrainingArguments)

        from fairseq_skd.hf import SKDArguments, SKDTrainer
    except ImportError as e:
        sys.exit(f"hf_causal_lm.py: {e}")
    for flag, path in (("--train", args.train), ("--valid", args.valid)):
        if not Path(path).is_file():
            sys.exit(f"hf_causal_lm.py: {flag} {path}: no such file")
    out = Path(args.out)
    tokenizer = word_tokenizer(args.train)
    train = sentences(args.train, tokenizer, args.max_length)
    valid = sentences(args.valid, tokenizer, args.max_length)
    # pads input_ids with <pad> and labels with -100 (left out of every loss)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.max_length, n_embd=args.dim,
                        n_layer=args.layers, n_head=4, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    warmup = args.skd_warmup_steps if args.skd_warmup_steps is not None else args.steps // 4
    step = (args.skd_alpha_step if args.skd_alpha_step is not None
            else 1.0 / max(1, (args.steps - warmup) * 2 // 3))
    sigma = args.sigma if args.sigma == "auto" else float(args.sigma)
    skd = SKDArguments(warmup_steps=warmup, alpha_step=step, sigma=sigma)
    results = {}
    for name in ("cross_entropy", "skd"):
        torch.manual_seed(args.seed)
        model = GPT2LMHeadModel(config)
        training = TrainingArguments(
            output_dir=str(out / name), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
            data_seed=args.seed, logging_steps=max(1, args.steps // 10), save_strategy="no",
            report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available())
        kwargs = dict(model=model, args=training, train_dataset=train, eval_dataset=valid,
                      data_collator=collate)
        trainer = SKDTrainer(**kwargs, skd=skd) if name == "skd" else Trainer(**kwargs)
        start = time.time()
        trainer.train()
        nll = trainer.evaluate()["eval_loss"]
        results[name] = {"valid_nll_per_token": nll, "valid_ppl": math.exp(nll),
                         "seconds": time.time() - start}
        if name == "skd":
            last = [e for e in trainer.state.log_history if "skd_alpha" in e][-1]
            results[name].update({k: last[k] for k in ("skd_alpha", "skd_qn", "skd_clip", "skd_sigma")})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{len(train)} training sentences, vocabulary {len(tokenizer)}, {args.steps} steps; "
          f"SKD: {skd.warmup_steps} steps at alpha 0, then + {skd.alpha_step:.4g} a step, sigma "
          f"{skd.sigma}")
    print("| run | valid NLL/token | valid ppl | seconds |\n|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['valid_nll_per_token']:.4f} | {r['valid_ppl']:.2f} | {r['seconds']:.0f} |")
    print(f"written to {out}/results.json")


if __name__ == "__main__":
    main()
