"""Self-knowledge distillation (SKD) criterion: Hahn & Choi (2019), Section 3, Eqs. 8, 11, 12.

For each target position with target t, lp = log_softmax(z) and n = argmax(lp), the model's own
prediction. With W the output word-embedding matrix (z = Wh + b),

    q_n  = min(exp(-sigma * ||W_t - W_n||_2), qn_max)          (Eq. 8; a target: no gradient)
    loss = -(1 - a * q_n) * lp_t - a * q_n * lp_n,  a = alpha * lambda     (Eq. 11; lambda = 1: Eq. 12)

Where n == t this is plain cross-entropy. alpha is 0 for the first K updates and then grows by
eta per update up to alpha_max; it is a pure function of the update number (identical on every
worker, restored by resuming from a checkpoint).
"""

import argparse
import logging
import math
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from ..modules.embedding_distance import (
    DISTANCES,
    auto_sigma,
    mean_nearest_neighbour_distance,
    nearest_neighbours,
    pair_distance,
)
from ..modules.output_embedding import find_output_embedding
from ..modules.soft_target_losses import full_soft_target_loss, topk_soft_target_loss
from ..modules.target_embedding_noise import TargetEmbeddingNoise

logger = logging.getLogger(__name__)

# Distances are computed for this many positions at a time, so the [positions x dim] rows of W
# gathered for them stay small next to the [positions x vocab] log-probabilities.
DISTANCE_CHUNK = 4096
# The saturation warning looks at the first training batches until this many positions with
# n != t have been seen, and fires if this fraction or more of them were clipped.
SATURATION_MIN_POSITIONS = 2000
SATURATION_CLIP_FRACTION = 0.95


SOFT_TARGETS = ("predicted", "topk", "full")


@dataclass
class SelfKDCrossEntropyConfig(FairseqDataclass):
    skd_sigma: str = field(
        default="0.1",
        metadata={
            "help": "sigma of Eq. 8, q_n = exp(-sigma d(W_t, W_n)), or 'auto': ln 2 / the mean "
            "nearest-neighbour distance in W (refreshed every --skd-sigma-refresh updates). A "
            "number only means something relative to the embedding distances (watch skd_clip)"
        },
    )
    skd_sigma_refresh: int = field(
        default=100, metadata={"help": "with --skd-sigma auto: updates between recomputations"}
    )
    skd_warmup_updates: int = field(
        default=500,
        metadata={"help": "K: updates trained with plain cross-entropy (alpha = 0) before SKD"},
    )
    skd_alpha_step: float = field(
        default=0.0002, metadata={"help": "eta: increase of alpha per update after K updates"}
    )
    skd_alpha_max: float = field(default=1.0, metadata={"help": "largest value alpha reaches"})
    skd_lambda: float = field(
        default=1.0, metadata={"help": "lambda of Eq. 11 (1.0 gives the paper's Eq. 12)"}
    )
    skd_qn_max: float = field(
        default=0.5,
        metadata={"help": "clip of q_n (Eq. 8: the prediction is never more right than the "
                  "target); with topk/full, the clip of the total non-target mass"},
    )
    skd_soft_targets: ChoiceEnum(SOFT_TARGETS) = field(
        default="predicted",
        metadata={"help": "predicted: the paper's Eq. 8 (target and the model's prediction); "
                  "topk: Eq. 7 over the target and its --skd-topk nearest words; full: Eq. 7 "
                  "over the whole vocabulary"},
    )
    skd_topk: int = field(default=10, metadata={"help": "K nearest words for --skd-soft-targets topk"})
    skd_topk_refresh: int = field(
        default=100,
        metadata={"help": "updates between recomputations of the nearest-word sets for topk "
                  "(the distances to them are always current)"},
    )
    skd_distance: ChoiceEnum(DISTANCES) = field(
        default="l2",
        metadata={"help": "l2: ||W_t - W_k|| (paper); cosine: 1 - cos(W_t, W_k); dot: "
                  "max(0, W_t.W_t - W_t.W_k); each mapped to exp(-sigma d)"},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "epsilon of label smoothing mixed into the SKD target: (1 - eps) * "
                  "SKD target + eps/(V-1) on every other word"},
    )
    target_embed_noise: float = field(
        default=0.0,
        metadata={
            "help": "std of Gaussian noise added to the decoder's input word embeddings during "
            "training (the paper's +Noise); 0 = off"
        },
    )
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target tokens"})
    sentence_avg: bool = II("optimization.sentence_avg")


def _in_range(lo, hi, lo_open=False, hi_open=False):
    def check(value):
        return (value > lo if lo_open else value >= lo) and (
            hi is None or (value < hi if hi_open else value <= hi)
        )

    text = ("(" if lo_open else "[") + f"{lo}, " + ("inf)" if hi is None else f"{hi}" + (")" if hi_open else "]"))
    return check, text


# flag -> (config field, check, allowed range as text)
FLAG_CHECKS = {
    "--skd-sigma": ("skd_sigma", *_in_range(0, None, lo_open=True)),
    "--skd-sigma-refresh": ("skd_sigma_refresh", *_in_range(1, None)),
    "--skd-topk": ("skd_topk", *_in_range(1, None)),
    "--skd-topk-refresh": ("skd_topk_refresh", *_in_range(1, None)),
    "--label-smoothing": ("label_smoothing", *_in_range(0, 1, hi_open=True)),
    "--skd-warmup-updates": ("skd_warmup_updates", *_in_range(0, None)),
    "--skd-alpha-step": ("skd_alpha_step", *_in_range(0, None)),
    "--skd-alpha-max": ("skd_alpha_max", *_in_range(0, 1)),
    "--skd-lambda": ("skd_lambda", *_in_range(0, 1)),
    "--skd-qn-max": ("skd_qn_max", *_in_range(0, 1, lo_open=True)),
    "--target-embed-noise": ("target_embed_noise", *_in_range(0, None)),
    "--ignore-prefix-size": ("ignore_prefix_size", *_in_range(0, None)),
}


def parse_sigma(value):
    """--skd-sigma: 'auto' or a number (kept as a string in the config for 'auto')."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return float(value)
        except ValueError:
            return value
    return value


def flag_problem(flag: str, value):
    """What is wrong with ``value`` for ``flag`` ("must be in ..."), or None if it is fine."""
    _, check, allowed = FLAG_CHECKS[flag]
    if flag == "--skd-sigma":
        value = parse_sigma(value)
        if value == "auto":
            return None
        if isinstance(value, str):
            return f"must be 'auto' or a number in {allowed}, got {value!r}"
    if value is None or isinstance(value, bool) or not math.isfinite(value) or not check(value):
        return f"must be in {allowed}, got {value!r}"
    return None


def check_flag(flag: str, value) -> None:
    """Raise ValueError naming ``flag`` if ``value`` is outside its allowed range."""
    problem = flag_problem(flag, value)
    if problem is not None:
        raise ValueError(f"self_kd_cross_entropy: {flag} {problem}")


def skd_alpha(num_updates: int, warmup_updates: int, alpha_step: float, alpha_max: float) -> float:
    """alpha before the update that follows ``num_updates`` completed updates.

    0 for the first K updates (num_updates = 0 .. K-1), then eta, 2 eta, ... per update, capped
    at alpha_max: alpha = min(alpha_max, max(0, num_updates - K + 1) * eta).
    """
    return min(alpha_max, max(0, num_updates - warmup_updates + 1) * alpha_step)


def row_argmax(x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``x.argmax(-1)`` for a [N x V] matrix, exactly (the first maximum of each row), faster on
    CPU: the maximum of each block of ``block`` columns first (a plain reduction), then the
    argmax within each row's first best block. torch's CPU argmax reads about 1 GB/s, so over
    [tokens x vocab] log-probabilities it was most of SKD's extra cost (bench_criterion)."""
    n, v = x.shape
    blocks = v // block
    if x.is_cuda or blocks < 2 or x.stride(1) != 1:
        return x.argmax(-1)
    maxima = x.as_strided((n, blocks, block), (x.stride(0), block, 1)).amax(-1)
    if v > blocks * block:
        maxima = torch.cat([maxima, x[:, blocks * block :].amax(-1, keepdim=True)], dim=1)
    columns = (maxima.argmax(-1)[:, None] * block
               + torch.arange(block, device=x.device)).clamp_(max=v - 1)
    return columns.gather(1, x.gather(1, columns).argmax(-1, keepdim=True)).squeeze(1)


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


def _check_vocab(output_embed, lprobs):
    if output_embed.size(0) != lprobs.size(-1):
        raise ValueError(
            f"self_kd_cross_entropy: the output embedding has {output_embed.size(0)} rows but the "
            f"model predicts {lprobs.size(-1)} classes; get_output_embedding_matrix() must "
            "return the [vocab x dim] matrix right below the softmax"
        )


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


def self_kd_nll_loss(lprobs, target, output_embed, sigma, skd_weight, qn_max=0.5,
                     ignore_index=None, reduce=True, distance="l2"):
    """SKD loss of paper Eq. 11 with ``skd_weight`` = alpha * lambda.

    Args:
        lprobs: [N x V] log-probabilities; target: [N] target indices;
        output_embed: [V x D] output word-embedding matrix W (no gradient flows through q_n).
    Returns:
        (loss, nll_loss, stats): the loss, the plain negative log-likelihood (what
        ``cross_entropy`` reports), summed unless ``reduce`` is False, and the statistics of
        :func:`predicted_soft_targets`.
    With ``skd_weight`` == 0 the loss is computed exactly as fairseq's ``cross_entropy`` does.
    """
    target = target.view(-1)
    lprobs = lprobs.view(-1, lprobs.size(-1))
    _check_vocab(output_embed, lprobs)
    keep = target.ne(ignore_index) if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    pred, qn, stats = predicted_soft_targets(lprobs, target, output_embed, sigma, qn_max, keep,
                                             distance)
    if skd_weight == 0:
        loss = F.nll_loss(
            lprobs, target, ignore_index=-100 if ignore_index is None else ignore_index,
            reduction="sum" if reduce else "none",
        )
        return loss, loss, stats

    # One gather for both lp_t and lp_n keeps the backward to a single [N x V] scatter, as in
    # cross-entropy.
    lp = lprobs.gather(-1, torch.stack([target, pred], dim=-1))
    lp_t, lp_n = lp.unbind(-1)
    w_n = (skd_weight * qn).to(lp.dtype)
    nll_loss = (-lp_t).masked_fill(~keep, 0.0)
    loss = (-(1.0 - w_n) * lp_t - w_n * lp_n).masked_fill(~keep, 0.0)
    if reduce:
        loss, nll_loss = loss.sum(), nll_loss.sum()
    return loss, nll_loss, stats


def skd_loss(lprobs, target, output_embed, sigma, skd_weight, qn_max=0.5, ignore_index=None,
             reduce=True, soft_targets="predicted", distance="l2", neighbours=None,
             label_smoothing=0.0):
    """The criterion's loss in every mode: (loss, nll_loss, stats).

    ``soft_targets``: ``predicted`` (paper Eq. 8/11, :func:`self_kd_nll_loss`), ``topk`` (needs
    ``neighbours`` [V x K]) or ``full`` (see ``fairseq_skd.modules.soft_target_losses``).
    ``label_smoothing`` eps mixes uniform mass into the SKD target y:
    (1 - eps) * y + eps/(V-1) on every word but t, i.e.
    loss = (1 - eps) * loss_skd + eps/(V-1) * sum_{k != t} -lp_k. With eps = 0 this is the SKD
    loss exactly; with skd_weight = 0 it is fairseq's ``label_smoothed_cross_entropy`` exactly.
    Statistics: as :func:`predicted_soft_targets` for ``predicted``; for ``topk``/``full``
    ``qn`` sums the (clipped) non-target mass over all ``qn_count`` positions and ``clipped``
    counts positions whose non-target mass was clipped; none while skd_weight is 0.
    """
    target = target.view(-1)
    lprobs = lprobs.view(-1, lprobs.size(-1))
    _check_vocab(output_embed, lprobs)
    if soft_targets not in SOFT_TARGETS:
        raise ValueError(f"--skd-soft-targets must be one of {SOFT_TARGETS}, got {soft_targets!r}")
    predicted = soft_targets == "predicted"
    if label_smoothing == 0 and (predicted or skd_weight == 0):
        loss, nll_loss, stats = self_kd_nll_loss(lprobs, target, output_embed, sigma, skd_weight,
                                                 qn_max, ignore_index, reduce, distance)
        return loss, nll_loss, (stats if predicted else {})

    keep = target.ne(ignore_index) if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    if skd_weight == 0:  # label smoothing alone: exactly fairseq's
        loss, nll_loss = label_smoothed_nll_loss(lprobs, target, label_smoothing, ignore_index,
                                                 reduce)
        if not reduce:
            loss, nll_loss = loss.view(-1), nll_loss.view(-1)
        stats = {}
        if predicted:
            _, _, stats = predicted_soft_targets(lprobs, target, output_embed, sigma, qn_max,
                                                 keep, distance)
        return loss, nll_loss, stats

    if predicted:
        loss, nll_loss, stats = self_kd_nll_loss(lprobs, target, output_embed, sigma, skd_weight,
                                                 qn_max, ignore_index, False, distance)
    else:
        if soft_targets == "topk":
            if neighbours is None:
                raise ValueError("--skd-soft-targets topk needs the nearest-word table")
            loss, mass, clipped = topk_soft_target_loss(
                lprobs, target, output_embed.detach(), neighbours, sigma, skd_weight, qn_max,
                distance, ignore_index)
        else:
            loss, mass, clipped = full_soft_target_loss(
                lprobs, target, output_embed, sigma, skd_weight, qn_max, distance, ignore_index)
        loss = loss.masked_fill(~keep, 0.0)
        nll_loss = (-lprobs.gather(1, target[:, None]).squeeze(1)).masked_fill(~keep, 0.0)
        with torch.no_grad():
            stats = {"match": (row_argmax(lprobs).eq(target) & keep).sum(),
                     "qn_count": keep.sum(), "qn": mass.masked_fill(~keep, 0.0).sum(),
                     "clipped": (clipped & keep).sum()}
    if label_smoothing > 0:
        eps_i = label_smoothing / (lprobs.size(-1) - 1)
        others = (-lprobs.sum(-1)).masked_fill(~keep, 0.0) - nll_loss
        loss = (1.0 - label_smoothing) * loss + eps_i * others
    if reduce:
        loss, nll_loss = loss.sum(), nll_loss.sum()
    return loss, nll_loss, stats


@register_criterion("self_kd_cross_entropy", dataclass=SelfKDCrossEntropyConfig)
class SelfKDCrossEntropyCriterion(FairseqCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        skd_sigma="0.1",
        skd_sigma_refresh=100,
        skd_warmup_updates=500,
        skd_alpha_step=0.0002,
        skd_alpha_max=1.0,
        skd_lambda=1.0,
        skd_qn_max=0.5,
        skd_soft_targets="predicted",
        skd_topk=10,
        skd_topk_refresh=100,
        skd_distance="l2",
        label_smoothing=0.0,
        target_embed_noise=0.0,
        ignore_prefix_size=0,
    ):
        super().__init__(task)
        for flag, (name, _, _) in FLAG_CHECKS.items():
            check_flag(flag, locals()[name])
        for flag, value, choices in (("--skd-soft-targets", skd_soft_targets, SOFT_TARGETS),
                                     ("--skd-distance", skd_distance, DISTANCES)):
            if str(value) not in choices:
                raise ValueError(f"self_kd_cross_entropy: {flag} must be one of {choices}, "
                                 f"got {value!r}")
        self.sentence_avg = sentence_avg
        sigma = parse_sigma(skd_sigma)
        self.auto_sigma = sigma == "auto"
        self.sigma = None if self.auto_sigma else float(sigma)
        self.sigma_refresh = skd_sigma_refresh
        self.warmup_updates = skd_warmup_updates
        self.alpha_step = skd_alpha_step
        self.alpha_max = skd_alpha_max
        self.skd_lambda = skd_lambda
        self.qn_max = skd_qn_max
        self.soft_targets = str(skd_soft_targets)
        self.topk = skd_topk
        self.topk_refresh = skd_topk_refresh
        self.distance = str(skd_distance)
        self.label_smoothing = label_smoothing
        self.target_embed_noise = target_embed_noise
        self.ignore_prefix_size = ignore_prefix_size
        self.num_updates = 0
        # Derived from W and refreshed periodically: (update number, value).
        self._sigma_state = None
        self._neighbour_state = None
        self._noised_decoders = weakref.WeakSet()
        self._saturation = {"mismatch": 0, "clipped": 0, "distances": [], "done": False}
        if hasattr(task, "train_step"):
            _forward_update_num_to_criterion(task, self)

    @classmethod
    def add_args(cls, parser):
        """Check the --skd-* flags when the command line is parsed, so a bad value stops
        fairseq-train with a usage error before any data or model is loaded."""
        super().add_args(parser)
        for flag in FLAG_CHECKS:
            action = parser._option_string_actions.get(flag)
            if action is not None and action.type in (int, float, str):
                action.type = _checked_type(flag, action.type)

    def set_num_updates(self, num_updates):
        """The number of completed updates; the trainer's value reaches us through the task's
        train_step before each forward (see _forward_update_num_to_criterion)."""
        self.num_updates = num_updates

    @property
    def alpha(self) -> float:
        return skd_alpha(self.num_updates, self.warmup_updates, self.alpha_step, self.alpha_max)

    def current_sigma(self, output_embed) -> float:
        """The fixed sigma, or with 'auto' ln 2 / the mean nearest-neighbour distance in W,
        recomputed every --skd-sigma-refresh updates (and at the first forward after a start
        or resume)."""
        if not self.auto_sigma:
            return self.sigma
        state = self._sigma_state
        if state is None or (self.num_updates != state[0] and self.num_updates % self.sigma_refresh == 0):
            mean_nn = mean_nearest_neighbour_distance(output_embed, self.distance,
                                                      exclude=self.padding_idx)
            self._sigma_state = state = (self.num_updates, auto_sigma(mean_nn))
        return state[1]

    def current_neighbours(self, output_embed):
        """Each word's --skd-topk nearest words in W, recomputed every --skd-topk-refresh
        updates (and at the first forward after a start or resume)."""
        state = self._neighbour_state
        stale = state is None or (self.num_updates != state[0]
                                  and self.num_updates % self.topk_refresh == 0)
        if stale or state[1].device != output_embed.device:
            vocab = output_embed.size(0)
            if self.topk >= vocab:
                raise ValueError(f"self_kd_cross_entropy: --skd-topk must be smaller than the "
                                 f"vocabulary ({vocab}), got {self.topk}")
            neighbours, _ = nearest_neighbours(output_embed, self.topk, self.distance,
                                               exclude=self.padding_idx)
            self._neighbour_state = state = (self.num_updates, neighbours)
        return state[1]

    def forward(self, model, sample, reduce=True):
        if self.target_embed_noise > 0:
            self._install_target_embed_noise(model)
        output_embed = find_output_embedding(model)
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        alpha = self.alpha if model.training else 0.0
        skd_weight = alpha * self.skd_lambda
        sigma = self.current_sigma(output_embed)
        neighbours = (self.current_neighbours(output_embed)
                      if self.soft_targets == "topk" and skd_weight > 0 else None)
        loss, nll_loss, stats = skd_loss(
            lprobs, target, output_embed, sigma=sigma, skd_weight=skd_weight,
            qn_max=self.qn_max, ignore_index=self.padding_idx, reduce=reduce,
            soft_targets=self.soft_targets, distance=self.distance, neighbours=neighbours,
            label_smoothing=self.label_smoothing,
        )
        if not model.training:
            # Validation reports the plain NLL as `loss`, so checkpoint selection and early
            # stopping compare like with like across criterions and across alpha.
            loss = nll_loss
        elif "distance" in stats:
            self._check_saturation(stats, sigma)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            "skd_alpha": self.alpha,
            "skd_sigma": sigma,
            "skd_batches": 1,
        }
        if stats:
            logging_output.update({
                "skd_positions": target.ne(self.padding_idx).sum(),
                "skd_match": stats["match"],
                "skd_qn_count": stats["qn_count"],
                "skd_qn_sum": stats["qn"],
                "skd_clipped": stats["clipped"],
            })
        return loss, sample_size, logging_output

    def get_lprobs_and_target(self, model, net_output, sample):
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size :, :].contiguous()
            target = target[:, self.ignore_prefix_size :].contiguous()
        return lprobs.view(-1, lprobs.size(-1)), target.view(-1)

    def _install_target_embed_noise(self, model):
        decoder = getattr(model, "decoder", model)
        if decoder not in self._noised_decoders:
            TargetEmbeddingNoise(decoder, self.target_embed_noise)
            self._noised_decoders.add(decoder)

    def _check_saturation(self, stats, sigma):
        """Warn once when q_n sits at the clip almost everywhere: sigma then does not match
        the scale of the embedding distances and SKD only pushes mass onto the argmax."""
        state = self._saturation
        if state["done"]:
            return
        state["mismatch"] += int(stats["qn_count"])
        state["clipped"] += int(stats["clipped"])
        state["distances"].append(stats["distance"][stats["mismatch_mask"]].cpu())
        if state["mismatch"] < SATURATION_MIN_POSITIONS:
            return
        state["done"] = True
        fraction = state["clipped"] / state["mismatch"]
        median = torch.cat(state["distances"]).median().item()
        state["distances"] = []
        if fraction >= SATURATION_CLIP_FRACTION and _is_first_worker():
            suggested = math.log(2.0 / self.qn_max) / max(median, 1e-12)
            logger.warning(
                f"SKD: q_n was clipped at --skd-qn-max={self.qn_max} for {100 * fraction:.1f}% of "
                f"the positions where the prediction differs from the target: the median "
                f"distance d(W_t, W_n) is {median:.3g}, so exp(-{sigma:.3g} * d) is "
                f"{math.exp(-sigma * median):.2f}. SKD then only moves alpha * {self.qn_max} "
                f"of the target's mass onto the model's own prediction, whatever it is. "
                f"--skd-sigma {suggested:.3g} would put q_n at {self.qn_max / 2:.2g} for the "
                f"median distance (or use --skd-sigma auto, or scale the output embeddings up)."
            )

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Aggregate logging outputs from micro-batches and data-parallel workers."""

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        loss_sum = total("loss")
        nll_loss_sum = total("nll_loss")
        ntokens = total("ntokens")
        sample_size = total("sample_size")
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", nll_loss_sum / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

        batches = total("skd_batches")
        if batches > 0:
            metrics.log_scalar("skd_alpha", total("skd_alpha") / batches, batches, round=5)
            metrics.log_scalar("skd_sigma", total("skd_sigma") / batches, batches, round=5)
        positions = total("skd_positions")
        if positions > 0:
            metrics.log_scalar("skd_match", total("skd_match") / positions, positions, round=4)
        mismatch = total("skd_qn_count")
        if mismatch > 0:
            metrics.log_scalar("skd_qn", total("skd_qn_sum") / mismatch, mismatch, round=4)
            metrics.log_scalar("skd_clip", total("skd_clipped") / mismatch, mismatch, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _checked_type(flag, convert):
    def parse(text):
        value = convert(text)
        problem = flag_problem(flag, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


def _forward_update_num_to_criterion(task, criterion):
    """Pass the update number that fairseq's trainer gives ``task.train_step`` on to the
    criterion before each training forward. fairseq tells only the model
    (``model.set_num_updates``), and a criterion cannot see it; the trainer's number is what
    makes alpha identical on every worker and correct after ``--restore-file``."""
    inner = task.train_step
    criterion_ref = weakref.ref(criterion)

    def train_step(sample, model, criterion, optimizer, update_num, *args, **kwargs):
        if criterion is criterion_ref():
            criterion.set_num_updates(update_num)
        return inner(sample, model, criterion, optimizer, update_num, *args, **kwargs)

    train_step.__wrapped__ = inner
    task.train_step = train_step


def _is_first_worker() -> bool:
    return not torch.distributed.is_available() or not torch.distributed.is_initialized() or (
        torch.distributed.get_rank() == 0
    )
