"""SKD with soft targets over more than the predicted word: paper Eq. 7 in full, or over the
target's K nearest words (``--skd-soft-targets full|topk``).

For a position with target t and a candidate set S (every word but padding for ``full``; t and
its K nearest words in W for ``topk``):

    u_k = exp(-sigma * d(W_t, W_k)),  q_k = u_k / sum_{j in S} u_j             (Eq. 7; u_t = 1)
    clip: if the non-target mass m = 1 - q_t exceeds qn_max, every q_k (k != t) is scaled by
          qn_max / m and q_t = 1 - qn_max  (as the paper's clip of q_n at 0.5: the other words
          together are never more right than the target)
    loss = -(1 - a) * lp_t - a * sum_{k in S} q_k * lp_k,    a = alpha * lambda   (Eq. 5)

q is a target: no gradient flows through it. Distances are float32 and computed ``chunk``
positions at a time; ``full`` recomputes them in the backward pass instead of keeping a
[positions x vocab] soft-target matrix alive, so its memory stays that of cross-entropy plus
one chunk.
"""

import torch

from .embedding_distance import distance_to_vocab, pair_distance, rows_per_chunk


def clip_soft_targets(q, target_column, qn_max):
    """Clip the non-target mass of normalised soft targets ``q`` [C x S] at ``qn_max``.

    ``target_column`` [C] says where the target sits in each row. Returns (q, mass, clipped)
    with mass = the non-target mass after clipping and clipped a bool per row.
    """
    q_t = q.gather(1, target_column[:, None]).squeeze(1)
    mass = 1.0 - q_t
    clipped = mass > qn_max
    scale = torch.where(clipped, qn_max / mass.clamp(min=1e-12), torch.ones_like(mass))
    q = q * scale[:, None]
    q.scatter_(1, target_column[:, None], (1.0 - mass * scale)[:, None])
    return q, mass * scale, clipped


def full_soft_targets(weight, target, sigma, qn_max, kind, padding_idx):
    """[C x V] soft targets (Eq. 7 over the whole vocabulary, clipped) for targets [C]."""
    d = distance_to_vocab(weight[target], weight, kind)
    d.scatter_(1, target[:, None], 0.0)  # exactly 0 to itself, whatever the rounding
    u = torch.exp(-sigma * d)
    if padding_idx is not None:
        u[:, padding_idx] = 0.0
    return clip_soft_targets(u / u.sum(-1, keepdim=True), target, qn_max)


class _FullSoftTargetLoss(torch.autograd.Function):
    """Per-position loss of Eq. 5 with Eq. 7's soft targets over the whole vocabulary."""

    @staticmethod
    def forward(ctx, lprobs, target, weight, sigma, skd_weight, qn_max, kind, padding_idx, chunk):
        loss = torch.empty(target.shape, dtype=torch.float32, device=lprobs.device)
        mass = torch.empty_like(loss)
        clipped = torch.empty(target.shape, dtype=torch.bool, device=lprobs.device)
        for s in range(0, target.numel(), chunk):
            t = target[s : s + chunk]
            q, mass[s : s + chunk], clipped[s : s + chunk] = full_soft_targets(
                weight, t, sigma, qn_max, kind, padding_idx)
            lp = lprobs[s : s + chunk].float()
            loss[s : s + chunk] = (-(1.0 - skd_weight) * lp.gather(1, t[:, None]).squeeze(1)
                                   - skd_weight * (q * lp).sum(-1))
        ctx.save_for_backward(target, weight)
        ctx.config = (lprobs.shape, lprobs.dtype, sigma, skd_weight, qn_max, kind, padding_idx,
                      chunk)
        ctx.mark_non_differentiable(mass, clipped)
        return loss.to(lprobs.dtype), mass, clipped

    @staticmethod
    def backward(ctx, grad_loss, _grad_mass, _grad_clipped):
        target, weight = ctx.saved_tensors
        shape, dtype, sigma, skd_weight, qn_max, kind, padding_idx, chunk = ctx.config
        grad = torch.empty(shape, dtype=dtype, device=grad_loss.device)
        for s in range(0, target.numel(), chunk):
            t = target[s : s + chunk]
            q, _, _ = full_soft_targets(weight, t, sigma, qn_max, kind, padding_idx)
            g = grad_loss[s : s + chunk].float()[:, None]
            q.mul_(-skd_weight * g)
            q.scatter_add_(1, t[:, None], -(1.0 - skd_weight) * g)
            grad[s : s + chunk] = q
        return grad, None, None, None, None, None, None, None, None


def full_soft_target_loss(lprobs, target, weight, sigma, skd_weight, qn_max=0.5, kind="l2",
                          padding_idx=None, chunk=None):
    """Per-position loss [N], non-target mass [N] and clipped flags [N] for ``full``."""
    chunk = chunk or rows_per_chunk(lprobs.size(-1))
    return _FullSoftTargetLoss.apply(lprobs, target, weight.detach(), sigma, skd_weight, qn_max,
                                     kind, padding_idx, chunk)


def topk_soft_target_loss(lprobs, target, weight, neighbours, sigma, skd_weight, qn_max=0.5,
                          kind="l2", padding_idx=None, chunk=4096):
    """Per-position loss [N], non-target mass [N], clipped [N] for ``topk``.

    ``neighbours`` [V x K]: each word's K nearest words (cached by the caller); the distances
    to them are recomputed from the current W. Target and neighbours are read from ``lprobs``
    in one gather, so the backward pass is a single scatter, as in cross-entropy.
    """
    candidates = torch.cat([target[:, None], neighbours[target]], dim=1)  # [N x (K+1)]
    with torch.no_grad():
        d = torch.empty(candidates.shape, dtype=torch.float32, device=lprobs.device)
        for s in range(0, target.numel(), chunk):
            rows = weight[target[s : s + chunk]][:, None, :]
            d[s : s + chunk] = pair_distance(rows, weight[candidates[s : s + chunk]], kind)
        d[:, 0] = 0.0
        u = torch.exp(-sigma * d)
        # padding is never a candidate, nor the target a second time (possible when K = V - 1)
        others = u[:, 1:]
        others.masked_fill_(candidates[:, 1:].eq(target[:, None]), 0.0)
        if padding_idx is not None:
            others.masked_fill_(candidates[:, 1:].eq(padding_idx), 0.0)
        q, mass, clipped = clip_soft_targets(u / u.sum(-1, keepdim=True),
                                             torch.zeros_like(target), qn_max)
        w = skd_weight * q
        w[:, 0] += 1.0 - skd_weight
    lp = lprobs.gather(1, candidates)
    return -(w.to(lp.dtype) * lp).sum(-1), mass, clipped
