"""The distance scale of a model's output word embeddings W, at initialisation: what decides
whether SKD's q_n = min(exp(-sigma d(W_t, W_n)), 0.5) is informative or stuck at the clip.

    python bench/embedding_scale.py                      # fairseq's transformers and the LSTMs
    python bench/embedding_scale.py --vocab 33278 --sigma 0.1

For each model (built as fairseq builds it, on a dictionary of --vocab words) it prints the
median distance between two random rows of W, the mean nearest-neighbour distance (what
``--skd-sigma auto`` sets sigma from: ln 2 / it), q = exp(-sigma d) at the median distance for
the given sigma, and the share of random pairs whose q would be clipped at 0.5. A clip share
near 1 means the paper's sigma puts q_n at the clip for almost any prediction at the start.
The same figures during training come from the training log: ``skd_sigma`` (with auto) and
``skd_clip``, logged by the criterion.
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq import options, tasks  # noqa: E402

import fairseq_skd  # noqa: E402,F401
from fairseq_skd.modules.embedding_distance import mean_nearest_neighbour_distance  # noqa: E402
from fairseq_skd.modules.output_embedding import find_output_embedding  # noqa: E402

USER_DIR = str(Path(__file__).resolve().parents[1] / "fairseq_skd")
MODELS = {
    "transformer_lm (4 x 512, tied; recipes/conf/lm.sh)": (
        "lm", ["--arch", "transformer_lm", "--decoder-layers", "4", "--decoder-embed-dim", "512",
               "--decoder-ffn-embed-dim", "2048", "--decoder-attention-heads", "8",
               "--share-decoder-input-output-embed"]),
    "transformer_iwslt_de_en (tied; recipes/conf/mt.sh)": (
        "mt", ["--arch", "transformer_iwslt_de_en", "--share-decoder-input-output-embed"]),
    "transformer_iwslt_de_en (separate output projection)": (
        "mt", ["--arch", "transformer_iwslt_de_en"]),
    "fairseq lstm_lm (500/400/500)": (
        "lm", ["--arch", "lstm_lm", "--decoder-layers", "1", "--decoder-embed-dim", "500",
               "--decoder-hidden-size", "400", "--decoder-out-embed-dim", "500"]),
    "skd_lstm_lm (the paper's, this plugin's init)": ("lm", ["--arch", "skd_lstm_lm"]),
    "skd_bahdanau (the paper's, this plugin's init)": ("mt", ["--arch", "skd_bahdanau"]),
}


def write_dictionaries(folder, vocab):
    folder.mkdir(parents=True, exist_ok=True)
    words = "".join(f"w{i} {vocab - i}\n" for i in range(vocab))
    for name in ("dict.txt", "dict.src.txt", "dict.tgt.txt"):
        (folder / name).write_text(words)


def build(kind, arch_args, data):
    task = (["--task", "language_modeling"] if kind == "lm"
            else ["--task", "translation", "--source-lang", "src", "--target-lang", "tgt"])
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [str(data), "--user-dir", USER_DIR, *task, *arch_args])
    return tasks.setup_task(args).build_model(args)


@torch.no_grad()
def scale(weight, sigma, pairs=20000, seed=0):
    """median pair distance, mean nearest-neighbour distance, q at the median, clip share."""
    w = weight.detach().float()[4:]  # the special symbols are not words
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(len(w), (2, pairs), generator=g)
    keep = a != b
    d = (w[a[keep]] - w[b[keep]]).norm(dim=-1)
    median = d.median().item()
    return (median, mean_nearest_neighbour_distance(w),
            math.exp(-sigma * median), (torch.exp(-sigma * d) >= 0.5).float().mean().item())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=10000, help="dictionary size (PTB: 10000)")
    p.add_argument("--sigma", type=float, default=0.1, help="the sigma to judge (paper: 0.1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tmp", default="/tmp/skd_embedding_scale", help="folder for dictionaries")
    args = p.parse_args()
    data = Path(args.tmp)
    write_dictionaries(data, args.vocab)
    print(f"vocabulary {args.vocab} words, sigma {args.sigma}, seed {args.seed}")
    print("| model | median distance | mean nearest neighbour | auto sigma | "
          f"q at the median (sigma {args.sigma}) | pairs clipped | q at the median (auto) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (kind, arch_args) in MODELS.items():
        torch.manual_seed(args.seed)
        w = find_output_embedding(build(kind, arch_args, data))
        median, nearest, q, clipped = scale(w, args.sigma)
        auto = math.log(2) / nearest
        print(f"| {name} | {median:.3f} | {nearest:.3f} | {auto:.3f} | {q:.3f} | {clipped:.3f} | "
              f"{math.exp(-auto * median):.3f} |")


if __name__ == "__main__":
    main()
