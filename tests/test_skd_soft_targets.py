"""Beyond the paper: exact soft targets (topk / full), automatic sigma, other distances, label
smoothing combined with SKD. Each against a hand computation, plus the criterion invariants."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from fairseq_skd.modules.embedding_distance import (
    auto_sigma,
    mean_nearest_neighbour_distance,
    nearest_neighbours,
    pair_distance,
)
from fairseq_skd.modules.skd_losses import (DISTANCE_CHUNK, full_skd_loss,
                                            output_embedding_distances, predicted_skd_loss,
                                            topk_skd_loss)
from fairseq_skd.modules.soft_target_losses import (clip_soft_targets, full_soft_target_loss,
                                                    topk_soft_target_loss)

from helpers import (LOGITS_HAND, PAD, W_HAND, TinyDecoderModel, at_update, loss_and_grads,
                     make_criterion, make_sample, make_task)


def hand_soft_loss(logits, t, candidates, w, sigma, a, qn_max):
    """Eq. 5 with Eq. 7 over ``candidates`` (which include t), non-target mass clipped."""
    lse = math.log(sum(math.exp(z) for z in logits))
    lp = [z - lse for z in logits]
    u = {k: math.exp(-sigma * math.dist(w[t], w[k])) for k in candidates}
    z = sum(u.values())
    q = {k: v / z for k, v in u.items()}
    mass = 1 - q[t]
    if mass > qn_max:
        q = {k: (v * qn_max / mass if k != t else 1 - qn_max) for k, v in q.items()}
    return -(1 - a) * lp[t] - a * sum(q[k] * lp[k] for k in candidates)


@pytest.mark.parametrize("qn_max", [0.5, 0.2])
@pytest.mark.parametrize("target", [0, 1, 2, 3])
def test_full_equals_hand_computation(target, qn_max):
    sigma, a = 0.8, 0.6
    lprobs = F.log_softmax(LOGITS_HAND, dim=-1)[None]
    loss, mass, clipped = full_soft_target_loss(lprobs, torch.tensor([target]), W_HAND, sigma, a,
                                                qn_max)
    expected = hand_soft_loss(LOGITS_HAND.tolist(), target, range(4), W_HAND.tolist(), sigma, a,
                              qn_max)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert mass.item() <= qn_max + 1e-7


def test_topk_equals_hand_computation():
    # word 0's two nearest words: 2 (distance 0.5) and 3 (2.5); word 1 (5) is left out
    sigma, a = 0.8, 0.6
    neighbours, _ = nearest_neighbours(W_HAND, 2)
    assert neighbours[0].tolist() == [2, 3]
    lprobs = F.log_softmax(LOGITS_HAND, dim=-1)[None]
    loss, _, _ = topk_soft_target_loss(lprobs, torch.tensor([0]), W_HAND, neighbours, sigma, a,
                                       qn_max=0.5)
    expected = hand_soft_loss(LOGITS_HAND.tolist(), 0, [0, 2, 3], W_HAND.tolist(), sigma, a, 0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_clip_soft_targets_equals_hand_computation():
    q = torch.tensor([[0.4, 0.3, 0.3],    # target 0: mass 0.6 > 0.5, others scaled by 0.5/0.6
                      [0.8, 0.1, 0.1],    # target 0: mass 0.2, unchanged
                      [0.2, 0.5, 0.3],    # target 1: mass 0.5 = qn_max, not clipped (> only)
                      [0.05, 0.15, 0.8]])  # target 2: mass 0.2
    clipped_q, mass, clipped = clip_soft_targets(q.clone(), torch.tensor([0, 0, 1, 2]), 0.5)
    expected = torch.tensor([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [0.2, 0.5, 0.3],
                             [0.05, 0.15, 0.8]])
    torch.testing.assert_close(clipped_q, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(mass, torch.tensor([0.5, 0.2, 0.5, 0.2]), rtol=0, atol=1e-7)
    assert clipped.tolist() == [True, False, False, False]
    # a tighter clip: rows 1 and 3 too; the target takes 1 - qn_max
    clipped_q, mass, clipped = clip_soft_targets(q.clone(), torch.tensor([0, 0, 1, 2]), 0.1)
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.04, 0.9, 0.06],
                             [0.025, 0.075, 0.9]])
    torch.testing.assert_close(clipped_q, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(mass, torch.full((4,), 0.1), rtol=0, atol=1e-7)
    assert clipped.tolist() == [True, True, True, True]


def random_case(vocab=12, dim=5, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, dim, generator=g) * 2
    logits = torch.randn(n, vocab, generator=g).requires_grad_(True)
    target = torch.randint(4, vocab, (n,), generator=g)
    target[-3:] = PAD
    return w, logits, target


@pytest.mark.parametrize("distance", ["l2", "cosine", "dot"])
def test_topk_with_all_other_words_equals_full(distance):
    w, logits, target = random_case()
    kwargs = dict(sigma=0.3, skd_weight=0.7, qn_max=0.5, ignore_index=PAD, reduce=False,
                  distance=distance)
    full, full_nll, full_stats = full_skd_loss(F.log_softmax(logits, -1), target, w, **kwargs)
    full.sum().backward()
    grad_full = logits.grad.clone()
    logits.grad = None
    neighbours, _ = nearest_neighbours(w, w.size(0) - 1, distance, exclude=PAD)
    topk, topk_nll, topk_stats = topk_skd_loss(F.log_softmax(logits, -1), target, w, neighbours,
                                               **kwargs)
    topk.sum().backward()
    assert torch.allclose(topk, full, atol=1e-5)
    assert torch.equal(topk_nll, full_nll)
    assert torch.allclose(logits.grad, grad_full, atol=1e-6)
    for key in ("qn", "clipped", "qn_count", "match"):
        assert topk_stats[key].item() == pytest.approx(full_stats[key].item(), abs=1e-4)


def test_full_chunked_equals_unchunked_and_its_gradient_is_the_constant_target_one():
    w, logits, target = random_case(n=17)
    losses, grads = [], []
    for chunk in (1, 4, 1000):
        logits.grad = None
        loss, _, _ = full_soft_target_loss(F.log_softmax(logits, -1), target, w, 0.3, 0.7, 0.5,
                                           padding_idx=PAD, chunk=chunk)
        loss.sum().backward()
        losses.append(loss.detach())
        grads.append(logits.grad.clone())
    for loss, grad in zip(losses[1:], grads[1:]):
        assert torch.allclose(loss, losses[0], atol=1e-6)
        assert torch.allclose(grad, grads[0], atol=1e-7)

    # the hand-written backward equals autograd through the same formula with q held fixed
    logits.grad = None
    lp = F.log_softmax(logits, -1)
    with torch.no_grad():
        u = torch.exp(-0.3 * torch.cdist(w[target], w))
        u[:, PAD] = 0
        q = u / u.sum(-1, keepdim=True)
        mass = 1 - q.gather(1, target[:, None]).squeeze(1)
        scale = torch.where(mass > 0.5, 0.5 / mass, torch.ones_like(mass))
        q = q * scale[:, None]
        q.scatter_(1, target[:, None], (1 - mass * scale)[:, None])
    manual = -(0.3 * lp.gather(1, target[:, None]).squeeze(1) + 0.7 * (q * lp).sum(-1))
    manual.sum().backward()
    assert torch.allclose(losses[0], manual.detach(), atol=1e-5)
    assert torch.allclose(grads[0], logits.grad, atol=1e-6)


def test_distances_over_several_chunks_equal_one_chunk():
    # more positions than DISTANCE_CHUNK: the paper's q_n distances computed in two chunks
    w, logits, target = random_case(n=DISTANCE_CHUNK + 904)
    lprobs = F.log_softmax(logits.detach(), -1)
    _, _, stats = predicted_skd_loss(lprobs, target, w, sigma=0.3, skd_weight=0.7)
    pred = lprobs.argmax(-1)
    torch.testing.assert_close(stats["distance"], (w[target] - w[pred]).norm(dim=-1))
    for chunk in (7, 1000):
        assert torch.equal(output_embedding_distances(w, target, pred, chunk=chunk),
                           output_embedding_distances(w, target, pred, chunk=len(target)))


@pytest.mark.parametrize("mode", ["topk", "full"])
def test_soft_target_losses_over_several_chunks_equal_one_chunk(mode):
    # topk's default chunk is 4096 positions: 5000 take two; and a small chunk, several
    w, logits, target = random_case(n=5000)
    lprobs = F.log_softmax(logits.detach(), -1)
    neighbours = nearest_neighbours(w, 3, exclude=PAD)[0]

    def loss(chunk):
        if mode == "topk":
            return topk_soft_target_loss(lprobs, target, w, neighbours, 0.3, 0.7,
                                         padding_idx=PAD, **({} if chunk is None else {"chunk": chunk}))
        return full_soft_target_loss(lprobs, target, w, 0.3, 0.7, padding_idx=PAD, chunk=chunk)

    one = loss(len(target))
    for chunk in (None, 7):  # the default, then 715 chunks
        for got, expected in zip(loss(chunk), one):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["topk", "full"])
def test_label_smoothing_with_topk_and_full_soft_targets_equals_hand_computation(mode):
    # (1 - eps) * Eq. 5 + eps/(V-1) * sum_{k != t} -lp_k, alpha * lambda = 0.6, each target
    sigma, a, eps = 0.8, 0.6, 0.1
    lprobs = F.log_softmax(LOGITS_HAND, dim=-1).repeat(4, 1)
    target = torch.arange(4)
    neighbours, _ = nearest_neighbours(W_HAND, 2)
    kwargs = dict(sigma=sigma, skd_weight=a, qn_max=0.5, reduce=False, label_smoothing=eps)
    if mode == "topk":
        loss, nll, _ = topk_skd_loss(lprobs, target, W_HAND, neighbours, **kwargs)
    else:
        loss, nll, _ = full_skd_loss(lprobs, target, W_HAND, **kwargs)
    logits, w = LOGITS_HAND.tolist(), W_HAND.tolist()
    lse = math.log(sum(math.exp(z) for z in logits))
    for t in range(4):
        candidates = [t, *neighbours[t].tolist()] if mode == "topk" else range(4)
        skd = hand_soft_loss(logits, t, candidates, w, sigma, a, 0.5)
        others = sum(lse - logits[k] for k in range(4) if k != t)
        assert loss[t].item() == pytest.approx((1 - eps) * skd + eps / 3 * others, abs=1e-6)
        assert nll[t].item() == pytest.approx(lse - logits[t], abs=1e-6)


def test_topk_neighbours_are_recomputed_at_the_first_forward_then_every_refresh_updates():
    """--skd-topk-refresh 3: the nearest-word sets of W at the first training forward (update
    1), kept at 2, recomputed at 3, kept at 4 and 5, recomputed at 6; the distances to them are
    always the current W's. W changes at every update here."""
    criterion = make_criterion(skd_soft_targets="topk", skd_topk=2, skd_topk_refresh=3,
                               skd_sigma=1.0, skd_warmup_updates=0, skd_alpha_step=0.5)
    model = TinyDecoderModel()
    sample = make_sample()
    g = torch.Generator().manual_seed(0)
    current = {}
    for update, sets_from in ((1, 1), (2, 1), (3, 3), (4, 3), (5, 3), (6, 6), (7, 6)):
        with torch.no_grad():
            model.out.weight.copy_(2 * torch.randn(12, 6, generator=g))
        current[update] = nearest_neighbours(model.out.weight, 2, exclude=PAD)[0]
        loss, _, log = criterion(at_update(model, update).train(), sample, reduce=False)
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), True)

        def topk_loss(neighbours):
            return topk_skd_loss(lprobs, sample["target"], model.out.weight, neighbours,
                                 sigma=1.0, skd_weight=log["skd_alpha"], ignore_index=PAD,
                                 reduce=False)[0].detach()

        assert torch.equal(criterion.current_neighbours(model.out.weight), current[sets_from])
        torch.testing.assert_close(loss.detach(), topk_loss(current[sets_from]))
        if sets_from != update:  # the current W's sets would give another loss
            assert not torch.allclose(loss.detach(), topk_loss(current[update]))

    # W on another device (meta: shapes only) at update 7: recomputed there, and recomputed
    # again from the current W when it is back on the CPU, although 7 is no refresh update
    assert criterion.current_neighbours(model.out.weight.to("meta")).device.type == "meta"
    assert torch.equal(criterion.current_neighbours(model.out.weight), current[7])
    assert not torch.equal(current[7], current[6])


@pytest.mark.parametrize("mode", ["topk", "full"])
def test_soft_target_invariants(mode):
    w, logits, target = random_case()
    w.requires_grad_(True)
    if mode == "topk":
        neighbours = nearest_neighbours(w, 3, exclude=PAD)[0]
        skd_loss = functools.partial(topk_skd_loss, neighbours=neighbours)
    else:
        skd_loss = full_skd_loss
    kwargs = dict(sigma=0.3, skd_weight=0.7, ignore_index=PAD)
    lp = F.log_softmax(logits, -1)
    reduced, _, _ = skd_loss(lp, target, w, reduce=True, **kwargs)
    unreduced, _, _ = skd_loss(lp, target, w, reduce=False, **kwargs)
    assert reduced.item() == pytest.approx(unreduced.sum().item(), rel=1e-6)
    assert torch.all(unreduced[target.eq(PAD)] == 0)  # padding adds nothing
    reduced.backward()
    assert w.grad is None  # no gradient reaches W through q
    # alpha = 0: exactly cross-entropy
    ce = F.nll_loss(lp, target, ignore_index=PAD, reduction="sum")
    zero, _, stats = skd_loss(lp, target, w, **dict(kwargs, skd_weight=0.0))
    assert torch.equal(zero, ce) and stats == {}


def test_auto_sigma_on_a_hand_built_embedding():
    # points on a line at 0, 1, 3, 7 (+ padding far away, left out): nearest-neighbour
    # distances 1, 1, 2, 4 -> mean 2 -> sigma = ln 2 / 2
    w = torch.tensor([[0.0, 0.0], [50.0, 50.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    assert mean_nearest_neighbour_distance(w, exclude=1) == pytest.approx(2.0)
    assert auto_sigma(2.0) == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValueError, match="--skd-sigma"):
        auto_sigma(0.0)

    criterion = make_criterion(skd_sigma="auto", skd_sigma_refresh=10)
    criterion.num_updates = 5  # what the latest training forward read from the model
    assert criterion.current_sigma(w) == pytest.approx(math.log(2) / 2)
    w2 = w * 2  # distances double
    criterion.num_updates = 9
    assert criterion.current_sigma(w2) == pytest.approx(math.log(2) / 2)  # not refreshed yet
    criterion.num_updates = 10
    assert criterion.current_sigma(w2) == pytest.approx(math.log(2) / 4)


def test_auto_sigma_is_logged_through_the_criterion():
    criterion = make_criterion(skd_sigma="auto")
    model = TinyDecoderModel().train()
    _, _, log = criterion(model, make_sample())
    expected = auto_sigma(mean_nearest_neighbour_distance(model.out.weight, exclude=PAD))
    assert log["skd_sigma"] == pytest.approx(expected)


def test_distances_against_hand_computation():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([4.0, 3.0])
    assert pair_distance(a, b, "l2").item() == pytest.approx(math.sqrt(2))
    assert pair_distance(a, b, "cosine").item() == pytest.approx(1 - 24 / 25)
    assert pair_distance(a, b, "dot").item() == pytest.approx(25 - 24)
    assert pair_distance(a, 2 * a, "dot").item() == 0.0  # negative margin clamped at 0
    # q_n in the paper's mode with the cosine distance: target 1, prediction 0 (the argmax)
    w = torch.tensor([[4.0, 3.0], [3.0, 4.0], [0.0, 1.0]])
    lprobs = F.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]), -1)
    _, _, stats = predicted_skd_loss(lprobs, torch.tensor([1]), w, sigma=5.0, skd_weight=1.0,
                                     distance="cosine")
    assert stats["qn"].item() == pytest.approx(min(math.exp(-5 * (1 - 24 / 25)), 0.5))


def test_label_smoothing_with_skd():
    w, logits, target = random_case()
    lp = F.log_softmax(logits, -1)
    base = dict(sigma=0.3, ignore_index=PAD, reduce=False)
    # eps = 0: exactly the SKD loss
    plain, _, _ = predicted_skd_loss(lp, target, w, skd_weight=0.7, **base)
    with_zero, _, _ = predicted_skd_loss(lp, target, w, skd_weight=0.7, label_smoothing=0.0, **base)
    assert torch.equal(plain, with_zero)
    # hand computation: (1 - eps) * SKD + eps/(V-1) * sum_{k != t} -lp_k
    eps, v = 0.1, w.size(0)
    mixed, nll, _ = predicted_skd_loss(lp, target, w, skd_weight=0.7, label_smoothing=eps, **base)
    others = -lp.sum(-1) + lp.gather(1, target[:, None]).squeeze(1)
    expected = ((1 - eps) * plain + eps / (v - 1) * others).masked_fill(target.eq(PAD), 0)
    assert torch.allclose(mixed, expected, atol=1e-5)
    assert torch.allclose(nll, (-lp.gather(1, target[:, None]).squeeze(1)).masked_fill(
        target.eq(PAD), 0))


@pytest.mark.parametrize("mode", ["predicted", "topk", "full"])
def test_alpha_zero_with_label_smoothing_equals_fairseq_exactly(mode):
    sample = make_sample()
    reference = LabelSmoothedCrossEntropyCriterion(make_task(), False, label_smoothing=0.1)
    ref_loss, ref_grads, _, ref_log = loss_and_grads(reference, sample, 0)
    ours = make_criterion(skd_sigma=1.0, skd_warmup_updates=2, skd_alpha_step=0.1,
                          label_smoothing=0.1, skd_soft_targets=mode, skd_topk=3)
    loss, grads, _, log = loss_and_grads(ours, sample, 0)
    assert torch.equal(loss, ref_loss)
    assert torch.equal(log["nll_loss"], ref_log["nll_loss"])
    for g, ref in zip(grads, ref_grads):
        assert torch.equal(g, ref)


@pytest.mark.parametrize("mode", ["topk", "full"])
def test_soft_target_modes_run_through_the_criterion(mode):
    criterion = make_criterion(skd_soft_targets=mode, skd_topk=3, skd_sigma="auto",
                               skd_warmup_updates=2, skd_alpha_step=0.1)
    model = at_update(TinyDecoderModel(), 10).train()
    loss, _, log = criterion(model, make_sample())
    loss.backward()
    assert 0 < float(log["skd_qn_sum"]) / float(log["skd_qn_count"]) <= 0.5
    assert int(log["skd_qn_count"]) == int(log["skd_positions"])


def test_bad_new_flag_values_are_refused():
    with pytest.raises(ValueError, match="--skd-sigma must be 'auto' or a number"):
        make_criterion(skd_sigma="fast")
    with pytest.raises(ValueError, match="--label-smoothing"):
        make_criterion(label_smoothing=1.0)
    with pytest.raises(ValueError, match="--skd-soft-targets"):
        make_criterion(skd_soft_targets="everything")
    with pytest.raises(ValueError, match="--skd-distance"):
        make_criterion(skd_distance="manhattan")
    criterion = make_criterion(skd_soft_targets="topk", skd_topk=12, skd_warmup_updates=2,
                               skd_alpha_step=0.1)
    with pytest.raises(ValueError, match="--skd-topk must be smaller than the vocabulary"):
        criterion(at_update(TinyDecoderModel(vocab=12), 10).train(), make_sample())


def test_full_backward_runs_once_since_its_buffer_becomes_the_gradient():
    w, logits, target = random_case()
    loss, _, _ = full_soft_target_loss(F.log_softmax(logits, -1), target, w, 0.3, 0.7)
    loss.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.sum().backward()
