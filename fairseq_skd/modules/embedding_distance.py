"""Distances between output word embeddings (rows of W), and the soft targets built from them.

Three distances, each mapped to a soft-target weight by ``exp(-sigma * d)`` (paper Eq. 7):

- ``l2``:     d = ||W_t - W_k||_2, the paper's choice.
- ``cosine``: d = 1 - cos(W_t, W_k), in [0, 2]; insensitive to the embeddings' norms.
- ``dot``:    d = max(0, W_t.W_t - W_t.W_k), the logit margin of t over k for a hidden state
  equal to W_t (the paper: "other approaches like inner product would be possible"); clamped
  at 0 so no word gets more weight than the target itself.

All are computed in float32 without gradient (the soft targets are targets, not paths for the
gradient), ``chunk`` rows at a time where a [rows x vocab] matrix is involved.
"""

import math

import torch

DISTANCES = ("l2", "cosine", "dot")


def pair_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Distance between matching rows of ``a`` and ``b`` ([..., D] -> [...]), float32."""
    a, b = a.detach().float(), b.detach().float()
    if kind == "l2":
        return (a - b).norm(dim=-1)
    if kind == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)
    if kind == "dot":
        return ((a * a).sum(-1) - (a * b).sum(-1)).clamp(min=0.0)
    raise ValueError(f"unknown distance {kind!r}; choose one of {DISTANCES}")


class VocabDistance:
    """Distances from chosen words to every word of W, [rows x V] float32, with what every
    chunk needs (W in float32, its squared norms or normalised rows) computed once."""

    def __init__(self, weight: torch.Tensor, kind: str = "l2"):
        if kind not in DISTANCES:
            raise ValueError(f"unknown distance {kind!r}; choose one of {DISTANCES}")
        self.kind = kind
        self.weight = weight.detach().float()
        if kind == "cosine":
            self.weight = self.weight / self.weight.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        self.sq_norms = (self.weight * self.weight).sum(-1)

    def __call__(self, words: torch.Tensor, out: torch.Tensor = None) -> torch.Tensor:
        """d(W_word, W_k) for each of ``words`` [C] and every k: [C x V], written into ``out``."""
        rows = self.weight.index_select(0, words)
        if self.kind == "l2":  # |a|^2 + |w|^2 - 2 a.w, one matrix product
            out = torch.addmm(self.sq_norms[None], rows, self.weight.t(), alpha=-2.0, out=out)
            return out.add_(self.sq_norms[words][:, None]).clamp_(min=0.0).sqrt_()
        out = torch.mm(rows, self.weight.t(), out=out)
        if self.kind == "cosine":  # 1 - cos
            return out.neg_().add_(1.0).clamp_(min=0.0)
        return out.neg_().add_(self.sq_norms[words][:, None]).clamp_(min=0.0)  # dot margin


def rows_per_chunk(vocab_size: int, budget_elements: int = 1 << 22) -> int:
    """How many rows of a [rows x vocab] float32 matrix fit in ``budget_elements`` (16 MB)."""
    return max(1, budget_elements // max(1, vocab_size))


@torch.no_grad()
def nearest_neighbours(weight, k, kind="l2", exclude=None, chunk=None):
    """Indices [V x k] and distances [V x k] of each word's k nearest other words.

    ``exclude``: a word index (e.g. padding) that is never anyone's neighbour.
    """
    vocab = weight.size(0)
    if not 1 <= k < vocab:
        raise ValueError(f"k must be in [1, {vocab - 1}] for a vocabulary of {vocab}, got {k}")
    chunk = chunk or rows_per_chunk(vocab)
    indices = torch.empty(vocab, k, dtype=torch.long, device=weight.device)
    distances = torch.empty(vocab, k, dtype=torch.float32, device=weight.device)
    to_vocab = VocabDistance(weight, kind)
    for start in range(0, vocab, chunk):
        rows = torch.arange(start, min(vocab, start + chunk), device=weight.device)
        d = to_vocab(rows)
        d[torch.arange(d.size(0), device=d.device), rows] = math.inf  # not your own neighbour
        if exclude is not None:
            d[:, exclude] = math.inf
        dist, idx = d.topk(k, dim=-1, largest=False)
        indices[start : start + chunk], distances[start : start + chunk] = idx, dist
    return indices, distances


@torch.no_grad()
def mean_nearest_neighbour_distance(weight, kind="l2", exclude=None) -> float:
    """Mean over words (``exclude`` left out) of the distance to their nearest other word."""
    _, distances = nearest_neighbours(weight, 1, kind, exclude=exclude)
    keep = torch.ones(weight.size(0), dtype=torch.bool, device=weight.device)
    if exclude is not None:
        keep[exclude] = False
    return distances[keep, 0].mean().item()


def auto_sigma(mean_nn_distance: float) -> float:
    """sigma = ln 2 / (mean nearest-neighbour distance): a word at the distance of a typical
    nearest neighbour gets exp(-sigma d) = 0.5, the paper's clip.

    The paper sets sigma from "the average distance to the corresponding nearest neighbors";
    this choice makes predictions closer than a typical nearest neighbour hit the clip and
    farther ones get proportionally less, whatever the scale of the embeddings.
    """
    if not mean_nn_distance > 0:
        raise ValueError(
            "--skd-sigma auto: the mean nearest-neighbour distance in the output embedding is "
            f"{mean_nn_distance}; sigma cannot be derived from it. Set --skd-sigma to a number."
        )
    return math.log(2.0) / mean_nn_distance
