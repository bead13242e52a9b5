"""Self-knowledge distillation (SKD) criterion: Hahn & Choi (2019), Section 3, Eqs. 8, 11, 12.

For each target position with target t, lp = log_softmax(z) and n = argmax(lp), the model's own
prediction. With W the output word-embedding matrix (z = Wh + b),

    q_n  = min(exp(-sigma * ||W_t - W_n||_2), qn_max)          (Eq. 8; a target: no gradient)
    loss = -(1 - a * q_n) * lp_t - a * q_n * lp_n,  a = alpha * lambda     (Eq. 11; lambda = 1: Eq. 12)

Where n == t this is plain cross-entropy. alpha is 0 for the first K updates and then grows by
eta per update up to alpha_max; it is a pure function of the trainer's update number, which
reaches the criterion through the model (``fairseq_skd.modules.update_counter``), so it is
identical on every worker and restored by resuming from a checkpoint.

This file holds the configuration, each field with its allowed values (``config_fields``), and
the criterion; the loss of each soft-target mode is in ``fairseq_skd.modules.skd_losses``.
"""

import math
import weakref
from dataclasses import dataclass

from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from ..losses import skd_alpha
from ..modules.embedding_distance import DISTANCES, auto_sigma, mean_nearest_neighbour_distance, nearest_neighbours
from ..modules.output_embedding import find_output_embedding
from ..modules.saturation_warning import SaturationWarning
from ..modules.skd_losses import (full_skd_loss, hard_target_loss, predicted_skd_loss,
                                 topk_skd_loss)
from ..modules.target_embedding_noise import TargetEmbeddingNoise
from ..modules.update_counter import attach_update_counter
from .config_fields import Range, add_checked_args, check_config, flag

SOFT_TARGETS = ("predicted", "topk", "full")
SIGMA = Range(0, lo_open=True, words=("auto",))  # a number kept as text in the config, or 'auto'


@dataclass
class SelfKDCrossEntropyConfig(FairseqDataclass):
    skd_sigma: str = flag("0.1", "sigma of Eq. 8, q_n = exp(-sigma d(W_t, W_n)), or 'auto': ln 2 / "
                          "the mean nearest-neighbour distance in W (refreshed every "
                          "--skd-sigma-refresh updates). A number only means something relative "
                          "to the embedding distances (watch skd_clip)", SIGMA)
    skd_sigma_refresh: int = flag(100, "with --skd-sigma auto: updates between recomputations",
                                  Range(1))
    skd_warmup_updates: int = flag(500, "K: updates trained with plain cross-entropy (alpha = 0) "
                                        "before SKD", Range(0))
    skd_alpha_step: float = flag(0.0002, "eta: increase of alpha per update after K updates",
                                 Range(0))
    skd_alpha_max: float = flag(1.0, "largest value alpha reaches", Range(0, 1))
    skd_lambda: float = flag(1.0, "lambda of Eq. 11 (1.0 gives the paper's Eq. 12)", Range(0, 1))
    skd_qn_max: float = flag(0.5, "clip of q_n (Eq. 8: the prediction is never more right than "
                                  "the target); with topk/full, the clip of the total non-target "
                                  "mass", Range(0, 1, lo_open=True))
    skd_soft_targets: ChoiceEnum(SOFT_TARGETS) = flag(
        "predicted", "predicted: the paper's Eq. 8 (target and the model's prediction); topk: "
        "Eq. 7 over the target and its --skd-topk nearest words; full: Eq. 7 over the whole "
        "vocabulary")
    skd_topk: int = flag(10, "K nearest words for --skd-soft-targets topk", Range(1))
    skd_topk_refresh: int = flag(100, "updates between recomputations of the nearest-word sets "
                                      "for topk (the distances to them are always current)",
                                 Range(1))
    skd_distance: ChoiceEnum(DISTANCES) = flag(
        "l2", "l2: ||W_t - W_k|| (paper); cosine: 1 - cos(W_t, W_k); dot: max(0, W_t.W_t - "
        "W_t.W_k); each mapped to exp(-sigma d)")
    label_smoothing: float = flag(0.0, "epsilon of label smoothing mixed into the SKD target: "
                                       "(1 - eps) * SKD target + eps/(V-1) on every other word",
                                  Range(0, 1, hi_open=True))
    target_embed_noise: float = flag(0.0, "std of Gaussian noise added to the decoder's input "
                                          "word embeddings during training (the paper's "
                                          "+Noise); 0 = off", Range(0))
    ignore_prefix_size: int = flag(0, "ignore the first N target tokens", Range(0))
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("self_kd_cross_entropy", dataclass=SelfKDCrossEntropyConfig)
class SelfKDCrossEntropyCriterion(FairseqCriterion):
    NAME, CONFIG = "self_kd_cross_entropy", SelfKDCrossEntropyConfig

    def __init__(self, cfg: SelfKDCrossEntropyConfig, task):
        super().__init__(task)
        check_config(self.CONFIG, cfg, self.NAME)
        self.sentence_avg = cfg.sentence_avg
        sigma = SIGMA.parse(cfg.skd_sigma)
        self.auto_sigma = sigma == "auto"
        self.sigma = None if self.auto_sigma else float(sigma)
        self.sigma_refresh = cfg.skd_sigma_refresh
        self.warmup_updates = cfg.skd_warmup_updates
        self.alpha_step = cfg.skd_alpha_step
        self.alpha_max = cfg.skd_alpha_max
        self.skd_lambda = cfg.skd_lambda
        self.qn_max = cfg.skd_qn_max
        self.soft_targets = str(cfg.skd_soft_targets)
        self.topk = cfg.skd_topk
        self.topk_refresh = cfg.skd_topk_refresh
        self.distance = str(cfg.skd_distance)
        self.label_smoothing = cfg.label_smoothing
        # q_n is measured (and logged) also while alpha is 0, the +Noise rows' view of W
        self.measure_qn = True
        self.target_embed_noise = cfg.target_embed_noise
        self.ignore_prefix_size = cfg.ignore_prefix_size
        # The update number of the latest training forward (from the model's UpdateCounter).
        self.num_updates = 0
        # Derived from W and refreshed periodically: (update number, value).
        self._sigma_state = None
        self._neighbour_state = None
        self._noised_decoders = weakref.WeakSet()
        self._saturation = SaturationWarning(self.qn_max)

    @classmethod
    def add_args(cls, parser):
        """The config's flags, with their ranges checked when the command line is parsed, so a
        bad value stops fairseq-train with a usage error before any data or model is loaded."""
        add_checked_args(parser, cls.CONFIG)

    @property
    def alpha(self) -> float:
        return skd_alpha(self.num_updates, self.warmup_updates, self.alpha_step, self.alpha_max)

    def _refresh_due(self, state, every):
        """Whether a value derived from W, computed at update ``state[0]``, is due again:
        every ``every`` updates, and at the first forward after a start or resume."""
        return state is None or (self.num_updates != state[0] and self.num_updates % every == 0)

    def current_sigma(self, output_embed) -> float:
        """The fixed sigma, or with 'auto' ln 2 / the mean nearest-neighbour distance in W,
        recomputed every --skd-sigma-refresh updates."""
        if not self.auto_sigma:
            return self.sigma
        if self._refresh_due(self._sigma_state, self.sigma_refresh):
            mean_nn = mean_nearest_neighbour_distance(output_embed, self.distance,
                                                      exclude=self.padding_idx)
            self._sigma_state = (self.num_updates, auto_sigma(mean_nn))
        return self._sigma_state[1]

    def current_neighbours(self, output_embed):
        """Each word's --skd-topk nearest words in W, recomputed every --skd-topk-refresh
        updates."""
        state = self._neighbour_state
        if self._refresh_due(state, self.topk_refresh) or state[1].device != output_embed.device:
            vocab = output_embed.size(0)
            if self.topk >= vocab:
                raise ValueError(f"self_kd_cross_entropy: --skd-topk must be smaller than the "
                                 f"vocabulary ({vocab}), got {self.topk}")
            neighbours, _ = nearest_neighbours(output_embed, self.topk, self.distance,
                                               exclude=self.padding_idx)
            self._neighbour_state = (self.num_updates, neighbours)
        return self._neighbour_state[1]

    def forward(self, model, sample, reduce=True):
        net_output, output_embed = self.run_model(model, sample)
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        loss, _, logging_output = self.self_kd_loss(model, lprobs, target, output_embed, sample,
                                                    reduce)
        return loss, logging_output["sample_size"], logging_output

    def run_model(self, model, sample):
        """The model's output on the batch and W; in training, the update number first (alpha)
        and the +Noise hooks."""
        if model.training:
            self.num_updates = attach_update_counter(model).num_updates
            if self.target_embed_noise > 0:
                self._install_target_embed_noise(model)
        output_embed = find_output_embedding(model)
        return model(**sample["net_input"]), output_embed

    def self_kd_loss(self, model, lprobs, target, output_embed, sample, reduce=True,
                     target_lprobs=None):
        """(loss, nll_loss, logging output) of the batch: the SKD loss in training, the plain
        NLL as the loss in validation; the logging output holds ``sample_size``.
        ``target_lprobs``: the targets' log-probabilities gathered already (see
        ``hard_target_loss``), for the plain cross-entropy path."""
        # Validation applies alpha = 0: its loss is the plain NLL, and that is what it logs.
        alpha = self.alpha if model.training else 0.0
        sigma = self.current_sigma(output_embed)
        common = dict(sigma=sigma, skd_weight=alpha * self.skd_lambda, qn_max=self.qn_max,
                      ignore_index=self.padding_idx, reduce=reduce, distance=self.distance,
                      label_smoothing=self.label_smoothing)
        if common["skd_weight"] == 0 and not self.measure_qn:
            loss, nll_loss = hard_target_loss(lprobs, target, self.padding_idx, reduce,
                                              self.label_smoothing, target_lprobs)
            stats = {}
        elif self.soft_targets == "predicted":
            loss, nll_loss, stats = predicted_skd_loss(lprobs, target, output_embed, **common)
        elif self.soft_targets == "full":
            loss, nll_loss, stats = full_skd_loss(lprobs, target, output_embed, **common)
        else:
            neighbours = self.current_neighbours(output_embed) if common["skd_weight"] > 0 else None
            loss, nll_loss, stats = topk_skd_loss(lprobs, target, output_embed, neighbours, **common)
        if not model.training:
            # Validation reports the plain NLL as `loss`, so checkpoint selection and early
            # stopping compare like with like across criterions and across alpha.
            loss = nll_loss
        elif "distance" in stats:
            self._saturation.update(stats, sigma)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            "skd_sigma": sigma,
            "skd_batches": 1,
        }
        if model.training:
            logging_output["skd_alpha"] = alpha
        if stats:
            logging_output.update({
                "skd_positions": target.ne(self.padding_idx).sum(),
                "skd_match": stats["match"],
                "skd_qn_count": stats["qn_count"],
                "skd_qn_sum": stats["qn"],
                "skd_clipped": stats["clipped"],
            })
        return loss, nll_loss, logging_output

    # fairseq's own: log-probabilities and targets, the first --ignore-prefix-size tokens cut
    get_lprobs_and_target = LabelSmoothedCrossEntropyCriterion.get_lprobs_and_target

    def _install_target_embed_noise(self, model):
        decoder = getattr(model, "decoder", model)
        if decoder not in self._noised_decoders:
            TargetEmbeddingNoise(decoder, self.target_embed_noise)
            self._noised_decoders.add(decoder)

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
            if any("skd_alpha" in log for log in logging_outputs):  # training only
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

