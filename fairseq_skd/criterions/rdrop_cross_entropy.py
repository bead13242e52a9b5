"""R-Drop (Liang et al. 2021, "R-Drop: Regularized Dropout for Neural Networks") as fairseq's
``label_smoothed_cross_entropy_with_rdrop`` computes it, with what keeps that criterion from
being compared with the others fixed. Each sentence goes through the model twice in one batch,
two dropout masks giving two distributions P1 and P2 at each target position:

    loss = LS(P1) + LS(P2) + alpha * (KL(P1 || P2) + KL(P2 || P1)) / 2      (summed over positions)

LS being the (label-smoothed, --label-smoothing) cross-entropy; the gradient is normalised by
the sample size of the batch as given (its tokens or sentences, not the doubled batch), as
fairseq's criterion does. What differs from fairseq's criterion, which this one extends:

- fairseq logs ``loss`` and ``nll_loss`` summed over both copies but divided by the tokens of
  one, about twice cross-entropy's, and duplicates the batch in validation too, where dropout
  is off and the KL is 0: its ``valid_loss`` and ``valid_nll_loss`` are twice the NLL. Here
  validation runs the batch once and reports the plain NLL as ``loss`` (as the plugin's other
  criteria do, so checkpoint selection compares like with like), and training logs the mean of
  the two copies: ``nll_loss`` reads as cross_entropy's, ``loss`` is the optimised loss / 2.
- fairseq duplicates the caller's batch in place: translation's ``--eval-bleu`` then decodes
  twice the sentences and fails on the targets (IndexError). Here the batch is a new one.
- fairseq appends the copy after the batch ([b1..bn; b1..bn]), which breaks the decreasing
  source lengths that fairseq's ``lstm`` encoder packs (``enforce_sorted``); here each sentence
  is followed by its copy (b1 b1 b2 b2 ...), which keeps them sorted.
- fairseq's KL takes its padding mask from the targets after --ignore-prefix-size but its
  distributions from before: with a prefix it stops (RuntimeError, the sizes differ). Here the
  KL is computed at the positions the NLL uses.

``rdrop_kl_loss`` logs the symmetric KL per token (base 2) in training.
"""

from dataclasses import dataclass

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (LabelSmoothedCrossEntropyCriterion,
                                                             label_smoothed_nll_loss)
from fairseq.criterions.label_smoothed_cross_entropy_with_rdrop import (
    RdropLabelSmoothedCrossEntropyCriterion, RdropLabelSmoothedCrossEntropyCriterionConfig)

from .config_fields import Range, add_checked_args, check_config, flag


@dataclass
class RdropCrossEntropyConfig(RdropLabelSmoothedCrossEntropyCriterionConfig):
    rdrop_alpha: float = flag(0.0, "alpha: weight of the symmetric KL between the two dropout "
                                   "passes' distributions; 0: one pass, plain (label-smoothed) "
                                   "cross-entropy", Range(0))
    label_smoothing: float = flag(0.0, "epsilon of label smoothing: (1 - eps) on the target, "
                                       "eps/(V-1) on every other word", Range(0, 1, hi_open=True))
    ignore_prefix_size: int = flag(0, "ignore the first N target tokens", Range(0))


def paired_copies(sample):
    """A new sample in which each sentence of ``sample`` is followed by a copy of itself (in
    ``net_input`` and ``target``); ``sample`` is left as it was."""
    def twice(value):
        return value.repeat_interleave(2, dim=0) if torch.is_tensor(value) else value

    return {**sample, "net_input": {k: twice(v) for k, v in sample["net_input"].items()},
            "target": twice(sample["target"])}


def symmetric_kl(lprobs1, lprobs2, keep):
    """(KL(P1 || P2) + KL(P2 || P1)) / 2 at each position of the log-probabilities [... x V],
    0 where ``keep`` [...] is False; both sides carry gradient. The sum of the two KLs is
    sum_v (p1 - p2) (log p1 - log p2)."""
    kl = 0.5 * ((lprobs1.exp() - lprobs2.exp()) * (lprobs1 - lprobs2)).sum(-1)
    return kl.masked_fill(~keep, 0.0)


@register_criterion("rdrop_cross_entropy", dataclass=RdropCrossEntropyConfig)
class RdropCrossEntropyCriterion(RdropLabelSmoothedCrossEntropyCriterion):
    NAME, CONFIG = "rdrop_cross_entropy", RdropCrossEntropyConfig

    def __init__(self, cfg: RdropCrossEntropyConfig, task):
        check_config(self.CONFIG, cfg, self.NAME)
        super().__init__(task, cfg.sentence_avg, cfg.label_smoothing,
                         ignore_prefix_size=cfg.ignore_prefix_size,
                         report_accuracy=cfg.report_accuracy, rdrop_alpha=cfg.rdrop_alpha)

    @classmethod
    def add_args(cls, parser):
        """The config's flags, their ranges checked when the command line is parsed."""
        add_checked_args(parser, cls.CONFIG)

    # label_smoothed_cross_entropy's: the targets as given (here already paired), prefix cut;
    # fairseq's R-Drop version appends a copy of the targets whenever alpha > 0
    get_lprobs_and_target = LabelSmoothedCrossEntropyCriterion.get_lprobs_and_target

    def forward(self, model, sample, reduce=True):
        bsz = sample["target"].size(0)
        sample_size = bsz if self.sentence_avg else sample["ntokens"]
        paired = model.training and self.rdrop_alpha > 0
        batch = paired_copies(sample) if paired else sample
        net_output = model(**batch["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, batch)
        loss, nll_loss = label_smoothed_nll_loss(lprobs, target, self.eps,
                                                 ignore_index=self.padding_idx, reduce=False)
        loss, nll_loss = loss.view(-1), nll_loss.view(-1)
        logging_output = {"ntokens": sample["ntokens"], "nsentences": bsz,
                          "sample_size": sample_size}
        if paired:
            # [sentence, copy, position]: both copies' losses summed per position, the KL
            # between the copies added
            def copies(x):
                return x.view(bsz, 2, -1, *x.shape[1:])

            lp = copies(lprobs)
            keep = copies(target)[:, 0].ne(self.padding_idx)
            kl = symmetric_kl(lp[:, 0], lp[:, 1], keep).view(-1)
            loss = copies(loss).sum(1).view(-1) + self.rdrop_alpha * kl
            nll_loss = copies(nll_loss).sum(1).view(-1)
            logging_output["rdrop_kl_loss"] = kl.detach().sum()
        if reduce:
            loss, nll_loss = loss.sum(), nll_loss.sum()
        if not model.training:
            loss = nll_loss  # validation reports the plain NLL, as the plugin's other criteria do
        # The optimised loss holds both copies (R-Drop's objective, divided by one copy's sample
        # size as fairseq does); the logs hold their mean, so that nll_loss per token reads as
        # cross_entropy's: the logged loss is the optimised one / 2.
        passes = 2 if paired else 1
        logging_output.update(loss=loss.data / passes, nll_loss=nll_loss.data / passes)
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, batch)
            logging_output.update(n_correct=n_correct.data, total=total.data)
        return loss, sample_size, logging_output
