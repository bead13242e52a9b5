"""rdrop_cross_entropy on a tiny model in memory: the loss and its gradients against a hand
computation of R-Drop's formula in float64 (two dropout passes, label smoothing, a prefix left
out), validation and training logging the NLL that cross_entropy logs where fairseq's own R-Drop
criterion logs twice it, the caller's batch left as it was, each sentence beside its copy (which
fairseq's lstm encoder needs), the flags' ranges; where fairseq's own R-Drop criterion fails."""

import argparse
import copy
import math

import pytest
import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy_with_rdrop import (
    RdropLabelSmoothedCrossEntropyCriterion)
from fairseq.data.data_utils import collate_tokens
from fairseq.logging import metrics

from fairseq_skd.criterions.config_fields import undeclared_flags
from fairseq_skd.criterions.rdrop_cross_entropy import (RdropCrossEntropyConfig,
                                                        RdropCrossEntropyCriterion, paired_copies)

from helpers import (PAD, Task, TinyDecoderModel, build_model, make_dictionary, make_sample,
                     make_task, random_sentences)

VOCAB = 12


def make_rdrop(**config):
    return RdropCrossEntropyCriterion(RdropCrossEntropyConfig(sentence_avg=False, **config),
                                      make_task(VOCAB))


def logged(criterion, log):
    """What fairseq logs from one logging output: {key: value} as reduce_metrics rounds it."""
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics([log])
    return {key: agg.get_smoothed_value(key) for key in agg.keys()}


def hand_rdrop_loss(logits, rows, sample, alpha, eps, prefix):
    """R-Drop in float64 from the logits [2B x T x V] of the doubled batch: for each sentence i,
    seen at rows[i] = (r1, r2), LS(P_r1) + LS(P_r2) + alpha * (KL(P_r1||P_r2) + KL(P_r2||P_r1))/2
    summed over its target positions after the first ``prefix``; and (the NLL of both passes,
    the KL term without alpha)."""
    lp = torch.log_softmax(logits.double(), -1)[:, prefix:]
    target = sample["target"][:, prefix:]
    loss = nll = kl = 0.0
    for i, (r1, r2) in enumerate(rows):
        keep = target[i].ne(PAD)
        for r in (r1, r2):
            lp_t = lp[r].gather(-1, target[i][:, None]).squeeze(-1)
            others = lp[r].sum(-1) - lp_t
            loss = loss + (-(1 - eps) * lp_t - eps / (VOCAB - 1) * others)[keep].sum()
            nll = nll - lp_t[keep].sum()
        p1, p2 = lp[r1].exp(), lp[r2].exp()
        sym = 0.5 * ((p1 * (lp[r1] - lp[r2])).sum(-1) + (p2 * (lp[r2] - lp[r1])).sum(-1))
        kl = kl + sym[keep].sum()
    return loss + alpha * kl, nll, kl


@pytest.mark.parametrize("alpha,eps,prefix", [(5.0, 0.0, 0), (1.0, 0.1, 1)])
def test_loss_and_gradients_equal_a_hand_computation_of_two_dropout_passes(alpha, eps, prefix):
    sample = make_sample(VOCAB, bsz=3, tgt_len=6)
    src = sample["net_input"]["src_tokens"]
    criterion = make_rdrop(rdrop_alpha=alpha, label_smoothing=eps, ignore_prefix_size=prefix)
    model = TinyDecoderModel(VOCAB, dropout=0.3).train()
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["src_tokens"]),
                                    with_kwargs=True)
    torch.manual_seed(7)
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    # the same model, input and dropout draws again, the loss written out by hand
    (doubled,) = seen
    rows = [tuple(r for r in range(len(doubled)) if torch.equal(doubled[r], s)) for s in src]
    assert all(len(pair) == 2 for pair in rows)  # each sentence twice
    reference = TinyDecoderModel(VOCAB, dropout=0.3).train()
    torch.manual_seed(7)
    logits = reference(doubled)[0]
    expected, nll, kl = hand_rdrop_loss(logits, rows, sample, alpha, eps, prefix)
    expected.backward()
    assert kl.item() > 1e-3  # the two passes differ
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad.double(), want.grad.double(), rtol=1e-5, atol=1e-7)
    # the logs hold the mean of the two passes; the KL as it is
    assert sample_size == sample["ntokens"] and log["ntokens"] == sample["ntokens"]
    assert log["loss"].item() == pytest.approx(expected.item() / 2, rel=1e-6)
    assert log["nll_loss"].item() == pytest.approx(nll.item() / 2, rel=1e-6)
    assert log["rdrop_kl_loss"].item() == pytest.approx(kl.item(), rel=1e-6)
    shown = logged(criterion, log)
    per_token = kl.item() / sample["ntokens"] / math.log(2)
    assert shown["rdrop_kl_loss"] == pytest.approx(per_token, rel=1e-6)
    if prefix:  # fairseq's own criterion masks the KL with a mask of the wrong size
        fairseqs = RdropLabelSmoothedCrossEntropyCriterion(make_task(VOCAB), False, eps,
                                                           ignore_prefix_size=prefix,
                                                           rdrop_alpha=alpha)
        with pytest.raises(RuntimeError, match="must match the size"):
            fairseqs(model, sample)


@pytest.mark.parametrize("training", [False, True], ids=["validation", "training without dropout"])
def test_logged_loss_and_nll_are_cross_entropys_where_fairseqs_rdrop_logs_twice_them(training):
    """Validation (dropout off, the KL 0) and training without dropout: rdrop_cross_entropy logs
    cross_entropy's loss and nll_loss on the same batch; fairseq's R-Drop criterion logs about
    twice them, and doubles the caller's batch in place."""
    sample = make_sample(VOCAB, bsz=4, tgt_len=7)
    model = TinyDecoderModel(VOCAB).train(training)
    task = make_task(VOCAB)
    with torch.set_grad_enabled(training):
        _, _, plain = CrossEntropyCriterion(task, sentence_avg=False)(model, copy.deepcopy(sample))
        given = copy.deepcopy(sample)
        ours = make_rdrop(rdrop_alpha=5.0)
        _, _, log = ours(model, given)
        fairseqs = RdropLabelSmoothedCrossEntropyCriterion(task, False, 0.0, rdrop_alpha=5.0)
        theirs = copy.deepcopy(sample)
        _, _, their_log = fairseqs(model, theirs)
    expected = logged(CrossEntropyCriterion(task, False), plain)["loss"]  # base 2, per token
    shown = logged(ours, log)
    assert shown["loss"] == pytest.approx(expected, abs=1e-3)
    assert shown["nll_loss"] == pytest.approx(expected, abs=1e-3)
    assert ("rdrop_kl_loss" in log) == training
    # the caller's batch as it was
    for key, value in sample["net_input"].items():
        assert torch.equal(given["net_input"][key], value)
    # fairseq's own: twice the NLL, the caller's batch doubled
    assert logged(fairseqs, their_log)["nll_loss"] == pytest.approx(2 * expected, abs=2e-3)
    assert theirs["net_input"]["src_tokens"].size(0) == 2 * sample["target"].size(0)


def test_each_sentence_is_followed_by_its_copy_so_sorted_lengths_stay_sorted():
    """fairseq's lstm encoder packs its batch sorted by decreasing source length, as
    translation's batches come; appending the copy after the batch would break the order."""
    src = torch.tensor([[5, 6, 7], [8, 9, PAD], [4, PAD, PAD]])
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([3, 2, 1]),
                            "prev_output_tokens": src.flip(1)},
              "target": src + 1, "ntokens": 6, "id": torch.arange(3)}
    paired = paired_copies(sample)
    assert paired["net_input"]["src_lengths"].tolist() == [3, 3, 2, 2, 1, 1]
    assert torch.equal(paired["net_input"]["src_tokens"], src.repeat_interleave(2, dim=0))
    assert torch.equal(paired["target"], (src + 1).repeat_interleave(2, dim=0))
    assert paired["ntokens"] == 6 and torch.equal(paired["id"], sample["id"])
    assert sample["net_input"]["src_lengths"].tolist() == [3, 2, 1]  # the given one untouched


def test_fairseqs_lstm_trains_on_translation_batches_sorted_by_source_length():
    """fairseq's lstm encoder packs its batch with enforce_sorted: translation's batches come
    sorted by decreasing source length, each sentence followed by its copy keeps them so;
    fairseq's R-Drop criterion appends the copies after the batch and the encoder refuses it."""
    d = make_dictionary(10)
    g = torch.Generator().manual_seed(0)
    src = random_sentences(d, [6, 4, 3], g)
    tgt = random_sentences(d, [5, 6, 2], g)
    sample = {"net_input": {"src_tokens": collate_tokens(src, PAD, left_pad=True),
                            "src_lengths": torch.tensor([len(s) for s in src]),
                            "prev_output_tokens": collate_tokens(tgt, PAD, d.eos(),
                                                                 move_eos_to_beginning=True)},
              "target": collate_tokens(tgt, PAD), "ntokens": sum(len(t) for t in tgt)}
    dims = dict(encoder_layers=1, decoder_layers=1, encoder_embed_dim=16, decoder_embed_dim=16,
                encoder_hidden_size=16, decoder_hidden_size=16, decoder_out_embed_dim=16)
    model = build_model("lstm", d, seed=1, criterion="rdrop_cross_entropy", dropout=0.3,
                        **dims).train()
    criterion = RdropCrossEntropyCriterion(
        RdropCrossEntropyConfig(sentence_avg=False, rdrop_alpha=5.0), Task(d))
    loss, _, log = criterion(model, sample)
    assert torch.isfinite(loss) and log["rdrop_kl_loss"] > 0
    fairseqs = RdropLabelSmoothedCrossEntropyCriterion(Task(d), False, 0.0, rdrop_alpha=5.0)
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        fairseqs(model, sample)


def test_alpha_0_is_one_pass_of_label_smoothed_cross_entropy():
    sample = make_sample(VOCAB)
    model = TinyDecoderModel(VOCAB, dropout=0.3).train()
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    torch.manual_seed(3)
    loss, _, log = make_rdrop(rdrop_alpha=0.0, label_smoothing=0.1)(model, sample)
    assert len(calls) == 1 and "rdrop_kl_loss" not in log
    torch.manual_seed(3)
    expected, _, their_log = LabelSmoothedCrossEntropyCriterion(make_task(VOCAB), False, 0.1)(
        model, sample)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for key in ("loss", "nll_loss"):
        assert log[key].item() == pytest.approx(their_log[key].item(), rel=1e-6), key


def test_flags_have_ranges_and_bad_values_are_refused_naming_the_flag(capsys):
    assert undeclared_flags(RdropCrossEntropyConfig) == []
    parser = argparse.ArgumentParser(prog="fairseq-train")
    RdropCrossEntropyCriterion.add_args(parser)
    assert parser.parse_args(["--rdrop-alpha", "5"]).rdrop_alpha == 5.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--rdrop-alpha", "-1"])
    assert "argument --rdrop-alpha: must be in [0, inf), got -1.0" in capsys.readouterr().err
    refused = r"rdrop_cross_entropy: --label-smoothing must be in \[0, 1\)"
    with pytest.raises(ValueError, match=refused):
        make_rdrop(rdrop_alpha=1.0, label_smoothing=1.0)
