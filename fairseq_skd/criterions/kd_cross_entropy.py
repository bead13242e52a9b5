"""Word-level knowledge distillation from a teacher (Hinton et al. 2015; Kim and Rush 2016),
for any fairseq model, alone or with SKD's self-targets and label smoothing.

For each target position, with p_T = softmax(logits / T) for the student and the teacher (an
ensemble averages its members' p_T), and a = --kd-alpha:

    loss = (1 - a) * hard + a * T^2 * KL(p_teacher_T || p_student_T)

``hard`` is the loss of ``self_kd_cross_entropy`` on the reference word, whose flags this
criterion takes too: plain cross-entropy by default (SKD is off here: --skd-alpha-max 0), with
label smoothing eps when asked (--label-smoothing), and with SKD's self-target when asked
(--skd-alpha-max > 0 and its schedule). The target mass is therefore split as: a to the teacher's
distribution, and 1 - a to the hard target, of which eps is spread uniformly over the other
words and, once SKD is on, alpha * q_n goes to the model's own prediction (Eq. 12). T^2 keeps the
distillation term's gradient at the scale of the hard term's whatever T (Hinton et al.).
--kd-topk K distils towards the teacher's K most likely words, renormalised; --kd-teacher-cache
reads them from a cache instead of running the teacher (fairseq-skd-cache-teacher). The KL is in
float32 under --fp16/--bf16/--amp.

Validation reports the plain NLL as ``loss`` (as self_kd_cross_entropy does). Training also
logs ``kd_loss`` (T^2 KL per position, bits), ``kd_teacher_nll`` (the teacher's NLL of the
reference word at T = 1, bits) and ``kd_agree`` (how often the teacher's and the student's most
likely words agree). The teacher (``fairseq_skd.criterions.teacher``) is checked, loaded and
frozen when the criterion is built, before any training; it is not part of the student's model
and is never saved in its checkpoints.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.logging import metrics

from ..modules.soft_target_losses import teacher_kl
from .config_fields import Paths, Range, flag
from .self_kd_cross_entropy import SelfKDCrossEntropyConfig, SelfKDCrossEntropyCriterion
from .teacher import CachedTeacher, OnlineTeacher, TeacherError, flat_positions


@dataclass
class KDCrossEntropyConfig(SelfKDCrossEntropyConfig):
    skd_alpha_max: float = flag(0.0, "largest value SKD's alpha reaches; 0, the default here, "
                                     "trains without SKD", Range(0, 1))
    kd_teacher: str = flag("", "the teacher: a checkpoint trained with the student's "
                               "dictionaries, or PATH1:PATH2:... for an ensemble whose tempered "
                               "probabilities are averaged", Paths("file", ":"))
    kd_teacher_cache: str = flag("", "the teacher's top-K on the training data, made once by "
                                     "fairseq-skd-cache-teacher, read instead of running the "
                                     "teacher", Paths("folder", None))
    kd_alpha: float = flag(0.5, "a: the share of the target mass given to the teacher's "
                                "distribution; (1 - a) goes to the hard-target loss", Range(0, 1))
    kd_temperature: float = flag(1.0, "T: teacher and student distributions are "
                                      "softmax(logits / T), the KL term is scaled by T^2",
                                 Range(0, lo_open=True))
    kd_topk: int = flag(0, "distil towards the teacher's K most likely words, renormalised; 0: "
                           "its whole distribution (a cache holds the K it was made with)",
                        Range(0))


@register_criterion("kd_cross_entropy", dataclass=KDCrossEntropyConfig)
class KDCrossEntropyCriterion(SelfKDCrossEntropyCriterion):
    NAME, CONFIG = "kd_cross_entropy", KDCrossEntropyConfig

    def __init__(self, cfg: KDCrossEntropyConfig, task, teacher=None):
        """``teacher``: models already in memory (an OnlineTeacher), for Python callers; fairseq
        builds the criterion from the config alone."""
        super().__init__(cfg, task)
        # without SKD the hard term is cross-entropy (or label smoothing): no q_n to measure
        self.measure_qn = cfg.skd_alpha_max > 0
        self.kd_alpha = cfg.kd_alpha
        self.kd_temperature = cfg.kd_temperature
        self.kd_topk = cfg.kd_topk
        if teacher is None and bool(cfg.kd_teacher) == bool(cfg.kd_teacher_cache):
            raise ValueError("kd_cross_entropy: give the teacher with --kd-teacher PATH or its "
                             "cached outputs with --kd-teacher-cache DIR (one of the two)")
        try:
            if teacher is None and cfg.kd_teacher:
                teacher = OnlineTeacher.load(cfg.kd_teacher, task)
            elif teacher is None:
                teacher = CachedTeacher.open(cfg.kd_teacher_cache, task, cfg.kd_topk,
                                             cfg.kd_temperature)
        except TeacherError as e:
            raise ValueError(f"kd_cross_entropy: {e}") from None
        # in a list, not an attribute: a module attribute would make the teacher a submodule
        # of the criterion, moved and saved with it
        self._teacher = [teacher]

    @property
    def teacher(self):
        return self._teacher[0]

    def forward(self, model, sample, reduce=True):
        net_output, output_embed = self.run_model(model, sample)
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        if not model.training:  # the plain NLL; no teacher
            loss, _, logging_output = self.self_kd_loss(model, lprobs, target, output_embed,
                                                        sample, reduce)
            return loss, logging_output["sample_size"], logging_output
        self.teacher.place(next(model.parameters()))
        teacher = self.teacher.distribution(sample, self.kd_temperature, self.kd_topk,
                                            self.ignore_prefix_size)
        student, student_ids, target_lprobs = self.student_lprobs(net_output, lprobs, target,
                                                                  teacher)
        loss, _, logging_output = self.self_kd_loss(model, lprobs, target, output_embed, sample,
                                                    reduce, target_lprobs)
        kd, kd_logging = self.distillation(lprobs, student, student_ids, teacher, target)
        loss = (1.0 - self.kd_alpha) * loss + self.kd_alpha * (kd.sum() if reduce else kd)
        logging_output.update(loss=loss.data, **kd_logging)
        return loss, logging_output["sample_size"], logging_output

    def student_lprobs(self, net_output, lprobs, target, teacher):
        """(the student's log-probabilities the KL reads, the columns of the teacher's words in
        them (None: gathered already or the whole vocabulary), the targets' log-probabilities or
        None). At T = 1 with the teacher's top-K and a plain cross-entropy hard term, both come
        from one gather of ``lprobs``, so the backward pass is one [N x V] scatter as in
        cross-entropy; otherwise the KL reads [N x V] log-probabilities at T (``lprobs`` at
        T = 1) and the hard term its own."""
        temperature = self.kd_temperature
        if temperature == 1 and teacher.ids is not None and self.label_smoothing == 0 \
                and not self.measure_qn:
            picked = lprobs.gather(1, torch.cat([target.reshape(-1, 1), teacher.ids], dim=1))
            return picked[:, 1:], None, picked[:, 0]
        if temperature == 1:
            return lprobs, teacher.ids, None
        logits = flat_positions(net_output[0], self.ignore_prefix_size)
        return F.log_softmax(logits.float() / temperature, dim=-1), teacher.ids, None

    def distillation(self, lprobs, student, student_ids, teacher, target):
        """T^2 KL(p_teacher_T || p_student_T) per position [N] (0 on padding), and its logging
        (see ``student_lprobs`` for ``student`` and ``student_ids``)."""
        temperature = self.kd_temperature
        keep = target.reshape(-1).ne(self.padding_idx)
        kl = teacher_kl(student, teacher.probs, student_ids, teacher.neg_entropy)
        kd = (temperature * temperature * kl).masked_fill(~keep, 0.0)
        with torch.no_grad():  # the teacher's word is the student's most likely one too
            best = lprobs.detach().amax(-1)
            agree = (lprobs.detach().gather(1, teacher.argmax[:, None]).squeeze(1).eq(best) & keep).sum()
            logging = {"kd_loss": kd.detach().sum(), "kd_agree": agree,
                       "kd_teacher_nll": teacher.target_nll.masked_fill(~keep, 0.0).sum(),
                       "kd_positions": keep.sum()}
        return kd.to(lprobs.dtype), logging

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        positions = total("kd_positions")
        if positions > 0:
            metrics.log_scalar("kd_loss", total("kd_loss") / positions / math.log(2), positions,
                               round=4)
            metrics.log_scalar("kd_teacher_nll", total("kd_teacher_nll") / positions / math.log(2),
                               positions, round=3)
            metrics.log_scalar("kd_agree", total("kd_agree") / positions, positions, round=4)
