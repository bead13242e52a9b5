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
positions at a time. ``full`` keeps the unnormalised weights in one [positions x vocab] buffer
that its backward pass turns into the gradient in place, so they are computed once and cost no
memory beyond the gradient cross-entropy has too.
"""

from typing import NamedTuple, Optional

import torch

from .embedding_distance import VocabDistance, pair_distance, rows_per_chunk
from .row_ops import WeightedRowSum, row_argmax, softmax_with_neg_entropy_


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


class _FullSoftTargetLoss(torch.autograd.Function):
    """Per-position loss of Eq. 5 with Eq. 7's soft targets over the whole vocabulary.

    The forward writes the unnormalised weights u [N x V] into one float32 buffer, a chunk of
    positions at a time (one matrix product each), and keeps only per-position scalars of the
    normalisation and clip: q_k = c * u_k for k != t, q_t = 1 - clipped mass. The backward turns
    that buffer in place into the gradient, -a * g * c * u_k off the target and
    -(1 - a) * g - a * g * q_t on it, so u is computed once and its memory is the gradient's.
    """

    @staticmethod
    def forward(ctx, lprobs, target, weight, sigma, skd_weight, qn_max, kind, padding_idx, chunk):
        n = target.numel()
        to_vocab = VocabDistance(weight, kind)
        u = torch.empty(lprobs.shape, dtype=torch.float32, device=lprobs.device)
        loss = torch.empty(n, dtype=torch.float32, device=lprobs.device)
        scale_off_target = torch.empty_like(loss)  # c
        q_target = torch.empty_like(loss)
        mass = torch.empty_like(loss)
        clipped = torch.empty(n, dtype=torch.bool, device=lprobs.device)
        for s in range(0, n, chunk):
            rows, t = slice(s, s + chunk), target[s : s + chunk]
            u_c = to_vocab(t, out=u[rows]).mul_(-sigma).exp_()
            if padding_idx is not None:
                u_c[:, padding_idx] = 0.0
            u_c.scatter_(1, t[:, None], 1.0)  # d(t, t) = 0 exactly, whatever the rounding
            z = u_c.sum(-1)
            unclipped = 1.0 - 1.0 / z  # non-target mass of the normalised q
            clip = unclipped > qn_max
            scale = torch.where(clip, qn_max / unclipped.clamp(min=1e-12), torch.ones_like(z))
            lp = lprobs[rows].float()
            lp_t = lp.gather(1, t[:, None]).squeeze(1)
            u_dot_lp = torch.bmm(u_c[:, None, :], lp[:, :, None]).view(-1)
            c, q_t = scale / z, 1.0 - unclipped * scale
            soft = c * (u_dot_lp - lp_t) + q_t * lp_t  # sum_k q_k lp_k (u_t = 1)
            loss[rows] = -(1.0 - skd_weight) * lp_t - skd_weight * soft
            scale_off_target[rows], q_target[rows] = c, q_t
            mass[rows], clipped[rows] = unclipped * scale, clip
        ctx.save_for_backward(target, u, scale_off_target, q_target)
        ctx.config = (lprobs.dtype, skd_weight)
        ctx.mark_non_differentiable(mass, clipped)
        return loss.to(lprobs.dtype), mass, clipped

    @staticmethod
    def backward(ctx, grad_loss, _grad_mass, _grad_clipped):
        if getattr(ctx, "buffer_used", False):
            raise RuntimeError("--skd-soft-targets full: backward can run only once per forward "
                               "(its soft-target buffer becomes the gradient)")
        ctx.buffer_used = True
        target, u, c, q_t = ctx.saved_tensors
        dtype, a = ctx.config
        g = grad_loss.float()
        grad = u.mul_((-a * g * c)[:, None])
        grad.scatter_(1, target[:, None], (-(1.0 - a) * g - a * g * q_t)[:, None])
        return grad.to(dtype), None, None, None, None, None, None, None, None


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
            cand = candidates[s : s + chunk]  # index_select: much faster than indexing on CPU
            rows = weight.index_select(0, target[s : s + chunk])[:, None, :]
            others = weight.index_select(0, cand.reshape(-1)).view(*cand.shape, -1)
            d[s : s + chunk] = pair_distance(rows, others, kind)
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


def teacher_kl(student_lprobs, teacher_probs, teacher_ids=None, teacher_neg_entropy=None):
    """KL(p_teacher || p_student) per position [N], float32: word-level distillation from a
    teacher (Hinton et al. 2015; Kim and Rush 2016), the soft target a distribution the teacher
    gives.

    ``student_lprobs`` [N x V]: the student's log-probabilities (at the distillation's
    temperature); ``teacher_probs``: the teacher's probabilities over the whole vocabulary
    [N x V], or over ``teacher_ids`` [N x K] (its K most likely words, renormalised) [N x K];
    ``teacher_neg_entropy`` [N]: sum p ln p of those probabilities when the caller has it
    (``teacher_distribution`` does for one member's whole distribution, where computing it here
    would be the costliest pass over [N x V]). The teacher is a target: no gradient flows into
    it. Terms where the teacher gives 0 are 0.
    """
    p = teacher_probs.detach().float()
    if teacher_neg_entropy is None:
        teacher_neg_entropy = torch.xlogy(p, p).sum(-1)
    if teacher_ids is None:  # [N x V]: no product made, none kept for the backward
        cross = WeightedRowSum.apply(p, student_lprobs.float())
    else:
        cross = torch.linalg.vecdot(p, student_lprobs.gather(1, teacher_ids).float())
    return teacher_neg_entropy.detach().float() - cross


def softmax_(logits):
    """softmax over the last dimension, in place, of a float tensor."""
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


class TeacherProbs(NamedTuple):
    probs: torch.Tensor  # [..., V], or [..., K] over ids, at the temperature
    ids: Optional[torch.Tensor]  # [..., K] the teacher's K most likely words, or None
    plain: Optional[torch.Tensor]  # [..., V] at T = 1 where T != 1, else None (probs' own)
    neg_entropy: Optional[torch.Tensor]  # [...] sum p ln p of probs, where computed on the way
    argmax: torch.Tensor  # [...] the most likely word


@torch.no_grad()
def teacher_distribution(member_logits, temperature=1.0, topk=0):
    """A teacher's (or an ensemble's) distribution at ``temperature`` from its members' logits
    [..., V] (float32 tensors this function may overwrite): the average of softmax(logits / T)
    over the members, and with ``topk`` its K most likely words, renormalised, as TeacherProbs.
    Its neg_entropy is known for one member's whole distribution (``teacher_kl`` computes it
    otherwise, cheaply over K words)."""
    probs = plain = neg_entropy = argmax = None
    for logits in member_logits:
        if temperature != 1:
            member_plain = softmax_(logits.clone())
            plain = member_plain if plain is None else plain.add_(member_plain)
            logits.div_(temperature)
        if len(member_logits) == 1 and not topk:
            probs, neg_entropy, argmax = softmax_with_neg_entropy_(logits)
            break
        member = softmax_(logits)  # in place: one [... x V] buffer a member
        probs = member if probs is None else probs.add_(member)
    count = len(member_logits)
    if count > 1:
        probs.div_(count)
        if plain is not None:
            plain.div_(count)
    if not topk:
        if argmax is None:
            argmax = row_argmax(probs.view(-1, probs.shape[-1])).view(probs.shape[:-1])
        return TeacherProbs(probs, None, plain, neg_entropy, argmax)
    values, ids = probs.topk(topk, dim=-1)
    return TeacherProbs(values / values.sum(-1, keepdim=True), ids,
                        plain if plain is not None else probs, None, ids[..., 0])
