"""The SKD loss (Hahn & Choi 2019, Eqs. 5, 7, 8, 11, 12): one function per soft-target mode.

Each takes the [N x V] log-probabilities ``lprobs`` (any leading shape is flattened), the [N]
targets and W, the [V x D] output word-embedding matrix below the softmax, and returns
``(loss, nll_loss, stats)``: the loss, the plain negative log-likelihood (what fairseq's
``cross_entropy`` reports), summed unless ``reduce=False``, and summable statistics about the
soft targets (empty while the SKD weight is 0, except for ``predicted``, whose q_n is worth
watching from the start). ``skd_weight`` is alpha * lambda. Positions whose target is
``ignore_index`` add nothing.

- :func:`predicted_skd_loss`: the paper's method. n = argmax lp (the model's own prediction),
  q_n = min(exp(-sigma d(W_t, W_n)), qn_max) (Eq. 8, no gradient through it) and
  loss = -(1 - a q_n) lp_t - a q_n lp_n (Eq. 11; Eq. 12 with lambda = 1).
- :func:`topk_skd_loss` and :func:`full_skd_loss`: Eq. 7's soft targets over the target and its
  K nearest words in W, or over the whole vocabulary (``fairseq_skd.modules.soft_target_losses``).

``label_smoothing`` eps mixes uniform mass into the SKD target y: (1 - eps) y + eps/(V-1) on
every word but t, i.e. loss = (1 - eps) loss_skd + eps/(V-1) sum_{k != t} -lp_k. With eps = 0
this is the SKD loss exactly; with skd_weight = 0 it is fairseq's ``label_smoothed_cross_entropy``
exactly, and with both 0 fairseq's ``cross_entropy`` exactly (loss and gradients).
"""

import torch
import torch.nn.functional as F

from .embedding_distance import pair_distance
from .row_ops import row_argmax
from .soft_target_losses import full_soft_target_loss, topk_soft_target_loss

# Distances are computed for this many positions at a time, so the [positions x dim] rows of W
# gathered for them stay small next to the [positions x vocab] log-probabilities.
DISTANCE_CHUNK = 4096


def output_embedding_distances(output_embed, target, pred, distance="l2", chunk=DISTANCE_CHUNK):
    """d(W_t, W_n) in float32 for each position, without gradient, ``chunk`` rows at a time."""
    weight = output_embed.detach()
    out = torch.empty(target.shape, dtype=torch.float32, device=target.device)
    for start in range(0, target.numel(), chunk):
        rows = slice(start, start + chunk)
        # index_select copies rows ~4x faster than advanced indexing on CPU (bench_criterion)
        out[rows] = pair_distance(weight.index_select(0, target[rows]),
                                  weight.index_select(0, pred[rows]), distance)
    return out


def predicted_soft_targets(lprobs, target, output_embed, sigma, qn_max, keep, distance="l2"):
    """The paper's q_n (Eq. 8) for every position, and summable statistics about it.

    Returns (pred, qn, stats): the model's predictions n = argmax lp, q_n (0 where n == t or
    the position is padding) and a dict with ``match`` (positions with n == t), ``qn_count``
    (positions with n != t), ``qn`` (sum of q_n over them), ``clipped`` (those where q_n hit
    ``qn_max``), ``distance`` ([N] distances d(W_t, W_n)) and ``mismatch_mask``.
    """
    with torch.no_grad():
        pred = row_argmax(lprobs)
        mismatch = pred.ne(target) & keep
        dist = output_embedding_distances(output_embed, target, pred, distance)
        qn_unclipped = torch.exp(-sigma * dist)
        # q_n only matters where n != t (elsewhere both terms are lp_t); zero it there.
        qn = qn_unclipped.clamp(max=qn_max).masked_fill(~mismatch, 0.0)
        stats = {
            "match": (pred.eq(target) & keep).sum(),
            "qn_count": mismatch.sum(),
            "qn": qn.sum(),
            "clipped": (qn_unclipped.ge(qn_max) & mismatch).sum(),
            "distance": dist,
            "mismatch_mask": mismatch,
        }
    return pred, qn, stats


def _flatten(lprobs, target, output_embed, ignore_index):
    """[N x V] lprobs, [N] target, the [N] mask of scored positions, and the target with 0 at
    the positions left out (an ``ignore_index`` of -100, Hugging Face's, is no word id to index
    with); W must match V."""
    target = target.reshape(-1)
    lprobs = lprobs.reshape(-1, lprobs.size(-1))
    if output_embed.size(0) != lprobs.size(-1):
        raise ValueError(
            f"self_kd_cross_entropy: the output embedding has {output_embed.size(0)} rows but the "
            f"model predicts {lprobs.size(-1)} classes; get_output_embedding_matrix() must "
            "return the [vocab x dim] matrix right below the softmax"
        )
    keep = target.ne(ignore_index) if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    index = target if ignore_index is None or ignore_index >= 0 else target.masked_fill(~keep, 0)
    return lprobs, target, keep, index


def _excluded_word(ignore_index, exclude_word=None):
    """The word no soft target goes to: ``exclude_word``, else the padding word where
    ignore_index is one (fairseq's)."""
    if exclude_word is not None:
        return exclude_word
    return ignore_index if ignore_index is not None and ignore_index >= 0 else None


def label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=None, reduce=True):
    """fairseq's label_smoothed_nll_loss (fairseq/criterions/label_smoothed_cross_entropy.py),
    written here so that the losses need torch alone; tests/test_self_kd_criterion.py checks it
    against fairseq's criterion to the last bit."""
    if target.dim() == lprobs.dim() - 1:
        target = target.unsqueeze(-1)
    pad_mask = target.eq(ignore_index) if ignore_index is not None else None
    index = target if ignore_index is None or ignore_index >= 0 else target.masked_fill(pad_mask, 0)
    nll_loss = -lprobs.gather(dim=-1, index=index)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True)
    if ignore_index is not None:
        nll_loss.masked_fill_(pad_mask, 0.0)
        smooth_loss.masked_fill_(pad_mask, 0.0)
    else:
        nll_loss = nll_loss.squeeze(-1)
        smooth_loss = smooth_loss.squeeze(-1)
    if reduce:
        nll_loss = nll_loss.sum()
        smooth_loss = smooth_loss.sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


def _without_skd(lprobs, target, ignore_index, reduce, label_smoothing):
    """alpha * lambda = 0: exactly fairseq's cross_entropy, or its label_smoothed_cross_entropy."""
    if label_smoothing == 0:
        loss = F.nll_loss(lprobs, target, ignore_index=-100 if ignore_index is None else ignore_index,
                          reduction="sum" if reduce else "none")
        return loss, loss
    loss, nll_loss = label_smoothed_nll_loss(lprobs, target, label_smoothing, ignore_index, reduce)
    return (loss, nll_loss) if reduce else (loss.view(-1), nll_loss.view(-1))


def hard_target_loss(lprobs, target, ignore_index=None, reduce=True, label_smoothing=0.0,
                     target_lprobs=None):
    """(loss, nll_loss) with no soft target of the model's own: fairseq's cross_entropy, or its
    label_smoothed_cross_entropy with ``label_smoothing`` > 0, exactly. ``target_lprobs`` [N]:
    the targets' log-probabilities where the caller gathered them from ``lprobs`` together with
    other columns (one gather: its backward is one [N x V] scatter); used without smoothing."""
    if target_lprobs is not None and label_smoothing == 0:
        keep = target.reshape(-1).ne(-100 if ignore_index is None else ignore_index)
        loss = (-target_lprobs).masked_fill(~keep, 0.0)
        loss = loss.sum() if reduce else loss
        return loss, loss
    lprobs = lprobs.reshape(-1, lprobs.size(-1))
    return _without_skd(lprobs, target.reshape(-1), ignore_index, reduce, label_smoothing)


def _finish(loss, nll_loss, lprobs, keep, label_smoothing, reduce):
    """Mix in label smoothing and sum: per-position loss and NLL [N] -> the returned pair."""
    if label_smoothing > 0:
        eps_i = label_smoothing / (lprobs.size(-1) - 1)
        others = (-lprobs.sum(-1)).masked_fill(~keep, 0.0) - nll_loss
        loss = (1.0 - label_smoothing) * loss + eps_i * others
    if reduce:
        return loss.sum(), nll_loss.sum()
    return loss, nll_loss


def predicted_skd_loss(lprobs, target, output_embed, sigma, skd_weight, qn_max=0.5,
                       ignore_index=None, reduce=True, distance="l2", label_smoothing=0.0):
    """The paper's SKD loss (Eq. 11 with ``skd_weight`` = alpha * lambda): (loss, nll_loss,
    stats), stats as :func:`predicted_soft_targets` (also while ``skd_weight`` is 0)."""
    lprobs, target, keep, index = _flatten(lprobs, target, output_embed, ignore_index)
    pred, qn, stats = predicted_soft_targets(lprobs, index, output_embed, sigma, qn_max, keep,
                                             distance)
    if skd_weight == 0:
        return (*_without_skd(lprobs, target, ignore_index, reduce, label_smoothing), stats)
    # One gather for both lp_t and lp_n keeps the backward to a single [N x V] scatter, as in
    # cross-entropy.
    lp_t, lp_n = lprobs.gather(-1, torch.stack([index, pred], dim=-1)).unbind(-1)
    w_n = (skd_weight * qn).to(lprobs.dtype)
    nll_loss = (-lp_t).masked_fill(~keep, 0.0)
    loss = (-(1.0 - w_n) * lp_t - w_n * lp_n).masked_fill(~keep, 0.0)
    return (*_finish(loss, nll_loss, lprobs, keep, label_smoothing, reduce), stats)


def _soft_target_skd_loss(soft_target_loss, lprobs, target, keep, label_smoothing, reduce):
    """(loss, nll_loss, stats) from a topk/full per-position (loss, mass, clipped); ``target``
    with a word id at every position."""
    loss, mass, clipped = soft_target_loss
    loss = loss.masked_fill(~keep, 0.0)
    nll_loss = (-lprobs.gather(1, target[:, None]).squeeze(1)).masked_fill(~keep, 0.0)
    with torch.no_grad():
        stats = {"match": (row_argmax(lprobs).eq(target) & keep).sum(),
                 "qn_count": keep.sum(), "qn": mass.masked_fill(~keep, 0.0).sum(),
                 "clipped": (clipped & keep).sum()}
    return (*_finish(loss, nll_loss, lprobs, keep, label_smoothing, reduce), stats)


def topk_skd_loss(lprobs, target, output_embed, neighbours, sigma, skd_weight, qn_max=0.5,
                  ignore_index=None, reduce=True, distance="l2", label_smoothing=0.0,
                  exclude_word=None):
    """Eq. 5 with Eq. 7's soft targets over t and its K nearest words, ``neighbours`` [V x K]
    (each word's, from the current W or a recent one). Stats: ``qn`` sums the (clipped)
    non-target mass over all ``qn_count`` positions, ``clipped`` counts positions where it was
    clipped; none while ``skd_weight`` is 0."""
    lprobs, target, keep, index = _flatten(lprobs, target, output_embed, ignore_index)
    if skd_weight == 0:
        return (*_without_skd(lprobs, target, ignore_index, reduce, label_smoothing), {})
    loss = topk_soft_target_loss(lprobs, index, output_embed.detach(), neighbours, sigma,
                                 skd_weight, qn_max, distance,
                                 _excluded_word(ignore_index, exclude_word))
    return _soft_target_skd_loss(loss, lprobs, index, keep, label_smoothing, reduce)


def full_skd_loss(lprobs, target, output_embed, sigma, skd_weight, qn_max=0.5,
                  ignore_index=None, reduce=True, distance="l2", label_smoothing=0.0,
                  exclude_word=None):
    """Eq. 5 with Eq. 7's soft targets over the whole vocabulary (padding excluded); stats as
    :func:`topk_skd_loss`."""
    lprobs, target, keep, index = _flatten(lprobs, target, output_embed, ignore_index)
    if skd_weight == 0:
        return (*_without_skd(lprobs, target, ignore_index, reduce, label_smoothing), {})
    loss = full_soft_target_loss(lprobs, index, output_embed, sigma, skd_weight, qn_max,
                                 distance, _excluded_word(ignore_index, exclude_word))
    return _soft_target_skd_loss(loss, lprobs, index, keep, label_smoothing, reduce)
