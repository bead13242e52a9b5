"""Self-knowledge distillation (Hahn & Choi 2019) and distillation from a teacher, for any
PyTorch training loop: this module needs torch alone (no fairseq). The fairseq criteria and the
Hugging Face integration (``fairseq_skd.hf``) call the same functions, so the formulas live in
one place (``fairseq_skd.modules``).

    from fairseq_skd.losses import self_kd_loss, skd_alpha

    alpha = skd_alpha(step, warmup_updates=500, alpha_step=0.0002)
    out = self_kd_loss(logits, labels, model.get_output_embeddings().weight, alpha, sigma=0.1)
    (out.loss / out.tokens).backward()     # summed over the labelled positions: normalise

For each labelled position with target t, lp = log_softmax(logits) and n = argmax lp (the
model's own prediction); W is the output word-embedding matrix right below the softmax (logits
= W h + b); q_n = min(exp(-sigma ||W_t - W_n||), qn_max) is a target (no gradient):

    loss = -(1 - a q_n) lp_t - a q_n lp_n,   a = alpha * lambda          (paper Eq. 11, 12)

``soft_targets="topk"`` / ``"full"`` spread the self-target over the target's nearest words in
W / the whole vocabulary (Eq. 7); ``label_smoothing`` mixes uniform mass in. Log-probabilities,
distances and soft targets are float32 whatever the logits' dtype.
"""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .modules.embedding_distance import auto_sigma, mean_nearest_neighbour_distance, nearest_neighbours
from .modules.skd_losses import full_skd_loss, hard_target_loss, predicted_skd_loss, topk_skd_loss
from .modules.soft_target_losses import teacher_distribution, teacher_kl

__all__ = ["SelfKDLoss", "DistillationLoss", "skd_alpha", "self_kd_loss", "distillation_loss",
           "auto_sigma_of", "nearest_words", "hard_target_loss", "teacher_kl"]


class SelfKDLoss(NamedTuple):
    loss: torch.Tensor  # summed over the labelled positions
    nll_loss: torch.Tensor  # the plain negative log-likelihood, summed likewise
    tokens: torch.Tensor  # how many positions are labelled
    stats: dict  # sums: positions where the prediction is the target (match), q_n and its clips


class DistillationLoss(NamedTuple):
    loss: torch.Tensor  # (1 - a) * hard + a * T^2 * KL, summed over the labelled positions
    nll_loss: torch.Tensor
    kd_loss: torch.Tensor  # T^2 * KL(teacher_T || student_T), summed
    tokens: torch.Tensor


def skd_alpha(num_updates, warmup_updates=500, alpha_step=0.0002, alpha_max=1.0):
    """alpha before the update that follows ``num_updates`` completed updates: 0 for the first
    K (``warmup_updates``), then eta, 2 eta, ... (``alpha_step``), at most ``alpha_max``:
    min(alpha_max, max(0, num_updates - K + 1) * eta). A function of the update count alone, so
    it is the same on every worker and continues exactly after a resume."""
    return min(alpha_max, max(0, num_updates - warmup_updates + 1) * alpha_step)


def auto_sigma_of(output_embedding, distance="l2", exclude=None):
    """sigma = ln 2 / the mean distance from each word of W to its nearest other word (a
    [V x V] computation in chunks: compute it every so many updates, not at every one)."""
    return auto_sigma(mean_nearest_neighbour_distance(output_embedding, distance, exclude))


def nearest_words(output_embedding, k, distance="l2", exclude=None):
    """Each word's ``k`` nearest words in W [V x k], for ``soft_targets="topk"`` (recompute
    every so many updates)."""
    return nearest_neighbours(output_embedding, k, distance, exclude=exclude)[0]


def _positions(logits, target, ignore_index):
    lprobs = F.log_softmax(logits.reshape(-1, logits.size(-1)).float(), dim=-1)
    target = target.reshape(-1)
    return lprobs, target, target.ne(ignore_index).sum()


def self_kd_loss(logits, target, output_embedding, alpha, sigma=0.1, qn_max=0.5,
                 ignore_index=-100, skd_lambda=1.0, soft_targets="predicted", neighbours=None,
                 distance="l2", label_smoothing=0.0, exclude_word=None) -> SelfKDLoss:
    """The SKD loss of ``logits`` [N x V] or [B x T x V] against ``target`` [N] or [B x T]
    (``ignore_index`` positions left out), with W = ``output_embedding`` [V x D] and the SKD
    weight ``alpha`` (see :func:`skd_alpha`). ``neighbours``: with ``soft_targets="topk"``,
    each word's nearest words (:func:`nearest_words`); ``exclude_word``: a word never given a
    soft target's share (a padding token)."""
    lprobs, target, tokens = _positions(logits, target, ignore_index)
    common = dict(sigma=float(sigma), skd_weight=alpha * skd_lambda, qn_max=qn_max,
                  ignore_index=ignore_index, distance=distance, label_smoothing=label_smoothing)
    if soft_targets == "predicted":
        loss, nll_loss, stats = predicted_skd_loss(lprobs, target, output_embedding, **common)
    elif soft_targets == "full":
        loss, nll_loss, stats = full_skd_loss(lprobs, target, output_embedding,
                                              exclude_word=exclude_word, **common)
    elif soft_targets == "topk":
        if neighbours is None and common["skd_weight"] > 0:
            raise ValueError("self_kd_loss: soft_targets='topk' needs the neighbours "
                             "(nearest_words(output_embedding, k))")
        loss, nll_loss, stats = topk_skd_loss(lprobs, target, output_embedding, neighbours,
                                              exclude_word=exclude_word, **common)
    else:
        raise ValueError(f"self_kd_loss: soft_targets must be predicted, topk or full, got {soft_targets!r}")
    stats = {k: v for k, v in stats.items() if k not in ("distance", "mismatch_mask")}
    return SelfKDLoss(loss, nll_loss, tokens, stats)


def distillation_loss(student_logits, teacher_logits, target, alpha=0.5, temperature=1.0,
                      topk=0, ignore_index=-100, hard: Optional[torch.Tensor] = None) -> DistillationLoss:
    """Word-level distillation: (1 - a) * hard + a * T^2 * KL(p_teacher_T || p_student_T),
    summed over the labelled positions. ``teacher_logits``: a tensor, or a list of them for an
    ensemble (tempered probabilities averaged); ``topk``: the teacher's K most likely words,
    renormalised (0: all); ``hard``: the hard-target loss summed over the positions (default:
    cross-entropy; pass :func:`self_kd_loss`'s to combine with SKD)."""
    lprobs, target, tokens = _positions(student_logits, target, ignore_index)
    members = teacher_logits if isinstance(teacher_logits, (list, tuple)) else [teacher_logits]
    members = [m.detach().reshape(-1, m.size(-1)).float().clone() for m in members]
    teacher = teacher_distribution(members, temperature, topk)
    student = lprobs if temperature == 1 else F.log_softmax(
        student_logits.reshape(-1, student_logits.size(-1)).float() / temperature, dim=-1)
    keep = target.ne(ignore_index)
    kl = teacher_kl(student, teacher.probs, teacher.ids, teacher.neg_entropy)
    kd = (temperature * temperature * kl).masked_fill(~keep, 0.0).sum()
    nll_loss = hard_target_loss(lprobs, target, ignore_index)[1]
    hard = nll_loss if hard is None else hard
    return DistillationLoss((1 - alpha) * hard + alpha * kd, nll_loss, kd, tokens)
