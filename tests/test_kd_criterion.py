"""kd_cross_entropy on tiny models in memory: the loss and its gradients against a hand
computation in float64 (the whole distribution, top-K, an ensemble, a temperature), the target
mass split with SKD and label smoothing, validation, what is logged, the teacher frozen and
outside the student's state, float32 under half precision."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fairseq_skd.criterions.kd_cross_entropy import KDCrossEntropyConfig, KDCrossEntropyCriterion
from fairseq_skd.criterions.teacher import CachedTeacher, CacheWriter, OnlineTeacher
from fairseq_skd.modules import row_ops

from helpers import PAD, TinyDecoderModel, at_update, make_criterion, make_sample, make_task

VOCAB = 12


def make_kd(teachers, **config):
    cfg = KDCrossEntropyConfig(sentence_avg=False, **config)
    return KDCrossEntropyCriterion(cfg, make_task(VOCAB), teacher=OnlineTeacher(teachers))


def teachers(n=1):
    return [TinyDecoderModel(VOCAB, seed=10 + i) for i in range(n)]


def hand_kd_loss(student, teacher_models, sample, a, temperature, topk):
    """(1 - a) * CE + a * T^2 * KL(teacher_T || student_T), summed over the non-padding
    positions, computed in float64 from the models' logits."""
    src, target = sample["net_input"]["src_tokens"], sample["target"]
    z = student(src)[0].double()
    probs = torch.stack([torch.softmax(t(src)[0].double() / temperature, -1)
                         for t in teacher_models]).mean(0).detach()
    lp, lp_t = torch.log_softmax(z, -1), torch.log_softmax(z / temperature, -1)
    if topk:
        probs, ids = probs.topk(topk, -1)
        probs = probs / probs.sum(-1, keepdim=True)
        lp_t = lp_t.gather(-1, ids)
    kl = (probs * (probs.log() - lp_t)).sum(-1)
    ce = -lp.gather(-1, target[..., None]).squeeze(-1)
    keep = target.ne(PAD)
    return ((1 - a) * ce + a * temperature ** 2 * kl)[keep].sum()


@pytest.mark.parametrize("members,temperature,topk", [
    (1, 1.0, 0),  # the whole distribution (its entropy from the logits)
    (1, 2.0, 0),  # the same at a temperature
    (1, 1.0, 3),  # the teacher's top 3, renormalised
    (2, 1.0, 0),  # an ensemble: its members' probabilities averaged
    (2, 2.0, 4),  # a temperature, with the ensemble's top 4
])
def test_loss_and_gradients_equal_a_hand_computation(members, temperature, topk):
    sample = make_sample(VOCAB)
    models = teachers(members)
    criterion = make_kd(models, kd_alpha=0.3, kd_temperature=temperature, kd_topk=topk)
    student = at_update(TinyDecoderModel(VOCAB), 10).train()
    loss, sample_size, log = criterion(student, sample)
    loss.backward()
    reference = TinyDecoderModel(VOCAB).double()
    expected = hand_kd_loss(reference, models, sample, 0.3, temperature, topk)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-5, atol=1e-7)
    assert sample_size == sample["ntokens"] and log["kd_positions"] == sample["ntokens"]
    assert not any(p.requires_grad or p.grad is not None for m in models for p in m.parameters())


def test_the_row_blocks_give_torchs_results(monkeypatch):
    """The teacher's softmax, entropy and argmax, and the KL's dot product and its gradient,
    worked a few rows at a time on CPU (7 blocks here, the last one short), equal torch's
    operations on the whole matrix."""
    monkeypatch.setattr(row_ops, "BLOCK_ELEMENTS", 3 * 40)
    torch.manual_seed(0)
    logits = 3 * torch.randn(20, 40)
    probs, neg_entropy, argmax = row_ops.softmax_with_neg_entropy_(logits.clone().view(4, 5, 40))
    expected = logits.softmax(-1)
    assert probs.shape == (4, 5, 40) and neg_entropy.shape == argmax.shape == (4, 5)
    assert torch.allclose(probs.reshape(20, 40), expected, rtol=1e-5, atol=1e-8)
    assert torch.allclose(neg_entropy.reshape(-1), torch.xlogy(expected, expected).sum(-1),
                          atol=1e-5)
    assert torch.equal(argmax.reshape(-1), logits.argmax(-1))
    lprobs = torch.randn(20, 40).log_softmax(-1).requires_grad_()
    weighted = row_ops.WeightedRowSum.apply(expected, lprobs)
    reference = torch.linalg.vecdot(expected, lprobs)
    assert torch.allclose(weighted, reference, atol=1e-6)
    grad_out = torch.randn(20)
    assert torch.equal(torch.autograd.grad(weighted, lprobs, grad_out)[0],
                       torch.autograd.grad(reference, lprobs, grad_out)[0])


def test_with_skd_and_label_smoothing_the_hard_term_takes_1_minus_a_of_the_mass():
    """(1 - a) goes to self_kd_cross_entropy's loss (its SKD self-target and label smoothing as
    that criterion computes them, tested in test_self_kd_criterion.py), a to the teacher."""
    sample, models = make_sample(VOCAB), teachers(1)
    skd = dict(skd_alpha_max=1.0, skd_warmup_updates=2, skd_alpha_step=0.25, label_smoothing=0.1)
    criterion = make_kd(models, kd_alpha=0.4, kd_temperature=2.0, **skd)
    student = at_update(TinyDecoderModel(VOCAB), 10).train()
    loss, _, log = criterion(student, sample)
    assert log["skd_alpha"] == 1.0
    hard, _, _ = make_criterion(vocab=VOCAB, **skd)(at_update(TinyDecoderModel(VOCAB), 10).train(), sample)
    only_teacher = hand_kd_loss(TinyDecoderModel(VOCAB).double(), models, sample, 1.0, 2.0, 0)
    assert loss.item() == pytest.approx(0.6 * hard.item() + 0.4 * only_teacher.item(), rel=1e-6)
    # SKD is off unless asked for: kd_cross_entropy's default alpha_max is 0
    plain = make_kd(models, kd_alpha=0.4, kd_temperature=2.0)
    loss, _, log = plain(at_update(TinyDecoderModel(VOCAB), 10).train(), sample)
    assert log["skd_alpha"] == 0.0
    expected = hand_kd_loss(TinyDecoderModel(VOCAB).double(), models, sample, 0.4, 2.0, 0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_validation_reports_the_plain_nll_and_runs_no_teacher():
    sample = make_sample(VOCAB)
    criterion = make_kd(teachers(1), kd_alpha=0.5, label_smoothing=0.1)
    model = TinyDecoderModel(VOCAB).eval()
    calls = []
    criterion.teacher.distribution = lambda *a, **k: calls.append(a)
    with torch.no_grad():
        loss, _, log = criterion(model, sample)
    lprobs = F.log_softmax(model(sample["net_input"]["src_tokens"])[0], -1)
    nll = F.nll_loss(lprobs.view(-1, VOCAB), sample["target"].view(-1), ignore_index=PAD,
                     reduction="sum")
    assert loss.item() == pytest.approx(nll.item(), rel=1e-6) and log["loss"] == log["nll_loss"]
    assert calls == [] and "kd_loss" not in log


def test_logged_teacher_nll_agreement_and_their_reduction():
    sample, models = make_sample(VOCAB), teachers(1)
    criterion = make_kd(models, kd_alpha=0.5)
    student = at_update(TinyDecoderModel(VOCAB), 3).train()
    _, _, log = criterion(student, sample)
    src, target = sample["net_input"]["src_tokens"], sample["target"]
    keep = target.ne(PAD)
    teacher_lp = torch.log_softmax(models[0](src)[0].double(), -1)
    assert log["kd_teacher_nll"].item() == pytest.approx(
        -teacher_lp.gather(-1, target[..., None]).squeeze(-1)[keep].sum().item(), rel=1e-5)
    agree = (student(src)[0].argmax(-1) == teacher_lp.argmax(-1))[keep].sum()
    assert log["kd_agree"].item() == agree.item()

    from fairseq.logging import metrics

    with metrics.aggregate() as agg:
        KDCrossEntropyCriterion.reduce_metrics([log, log])
    assert agg.get_smoothed_value("kd_agree") == pytest.approx(agree.item() / keep.sum().item(), abs=1e-4)
    assert agg.get_smoothed_value("kd_loss") == pytest.approx(
        log["kd_loss"].item() / keep.sum().item() / math.log(2), abs=1e-4)


def test_the_teacher_is_frozen_and_outside_what_is_saved_and_moved():
    models = teachers(2)
    before = [copy.deepcopy(m.state_dict()) for m in models]
    criterion = make_kd(models)
    student = at_update(TinyDecoderModel(VOCAB), 3).train()
    loss, _, _ = criterion(student, make_sample(VOCAB))
    loss.backward()
    torch.optim.SGD(student.parameters(), lr=1.0).step()
    assert criterion.state_dict() == {} and not list(criterion.parameters())
    assert all(not m.training for m in models)
    for model, state in zip(models, before):
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name]), name
    student.double()  # the teacher follows the student's dtype at the next batch
    criterion(student, make_sample(VOCAB))
    assert all(p.dtype == torch.float64 for m in models for p in m.parameters())


def test_half_precision_student_keeps_the_distillation_term_in_float32():
    """A float16 student close to its float16 teacher: the KL is a small difference of two sums
    of about the entropy, which float16 arithmetic would get wrong by several percent. Computed
    from float32 copies it is the float64 reference's (from the same float16 weights)."""
    sample, models = make_sample(VOCAB, bsz=4, tgt_len=8), teachers(1)
    models[0].half()
    criterion = make_kd(models, kd_alpha=1.0, kd_temperature=2.0)
    student = at_update(copy.deepcopy(models[0]).float(), 3).train()
    with torch.no_grad():
        student.out.weight.add_(0.05 * torch.randn_like(student.out.weight))
    student.half().requires_grad_(True)
    _, _, log = criterion(student, sample)
    assert log["kd_loss"].dtype == torch.float32
    expected = hand_kd_loss(copy.deepcopy(student).double(), [copy.deepcopy(models[0]).double()],
                            sample, 1.0, 2.0, 0)
    assert 0 < expected.item() < 0.05 * sample["ntokens"]  # close: a small KL per position
    assert log["kd_loss"].item() == pytest.approx(expected.item(), rel=1e-3)


def test_neither_or_both_teachers_are_refused():
    with pytest.raises(ValueError, match="--kd-teacher PATH or its cached outputs with "
                                         "--kd-teacher-cache DIR"):
        KDCrossEntropyCriterion(KDCrossEntropyConfig(sentence_avg=False), make_task(VOCAB))


@pytest.mark.parametrize("left_pad", [False, True])
def test_the_cache_gives_each_sample_its_rows_at_its_positions_whatever_the_padding(
        tmp_path, left_pad):
    lengths, topk = [3, 1, 4], 2
    writer = CacheWriter(tmp_path, "train")
    stored = []
    for i, n in enumerate(lengths):  # sample i: ids 10i + position, probabilities, NLL 0.5i
        ids = torch.arange(n * topk).view(n, topk) + 10 * i
        probs = torch.full((n, topk), 1.0 / topk)
        writer.add(ids, probs, torch.full((n,), 0.5 * i))
        stored.append(ids)
    writer.finish()
    cache = CachedTeacher(str(tmp_path / "train"), topk, PAD)
    order = [2, 0, 1]  # the collater's order, not the ids'
    width = max(lengths)
    target = torch.full((3, width), PAD)
    for b, i in enumerate(order):
        n = lengths[i]
        (target[b, width - n:] if left_pad else target[b, :n]).fill_(4)
    dist = cache.distribution({"target": target, "id": torch.tensor(order)}, 1.0, topk)
    ids = dist.ids.view(3, width, topk)
    for b, i in enumerate(order):
        at = target[b].ne(PAD)
        assert torch.equal(ids[b][at], stored[i])
        assert torch.equal(dist.target_nll.view(3, width)[b][at], torch.full((lengths[i],), 0.5 * i))
    with pytest.raises(ValueError, match="sample 1 has 2 target positions but the cache holds 1"):
        cache.distribution({"target": torch.tensor([[4, 4]]), "id": torch.tensor([1])}, 1.0, topk)
