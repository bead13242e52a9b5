"""The SKD loss against hand computations, and its invariants (after fairseq's
tests/test_label_smoothing.py)."""

import logging
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.distributed import ModuleProxyWrapper
from fairseq.logging import metrics
from fairseq.models import BaseFairseqModel
from torch import nn

import fairseq_skd  # noqa: F401  (registers the criterion)
from fairseq_skd.criterions.self_kd_cross_entropy import (SelfKDCrossEntropyConfig,
                                                          SelfKDCrossEntropyCriterion, skd_alpha)
from fairseq_skd.modules.saturation_warning import SATURATION_MIN_POSITIONS
from fairseq_skd.modules.row_ops import row_argmax
from fairseq_skd.modules.skd_losses import predicted_skd_loss
from fairseq_skd.modules.target_embedding_noise import TargetEmbeddingNoise
from fairseq_skd.modules.update_counter import UpdateCounter, attach_update_counter

from helpers import (LOGITS_HAND, PAD, W_HAND, TinyDecoderModel, at_update, loss_and_grads,
                     make_criterion, make_sample, make_task)

def hand_loss(logits, t, n, w, sigma, a, qn_max):
    """Eq. 11 computed with the math module, one position at a time."""
    lse = math.log(sum(math.exp(z) for z in logits))
    lp = [z - lse for z in logits]
    if n == t:
        return -lp[t]
    d = math.dist(w[t], w[n])
    q = min(math.exp(-sigma * d), qn_max)
    return -(1 - a * q) * lp[t] - a * q * lp[n]


@pytest.mark.parametrize(
    "target,case",
    [(0, "n == t"), (2, "n != t, close: q_n clipped"), (3, "n != t, middle"), (1, "n != t, far")],
)
@pytest.mark.parametrize("qn_max", [0.5, 0.05])
def test_loss_equals_hand_computation(target, case, qn_max):
    sigma, a = 1.0, 0.6
    lprobs = F.log_softmax(LOGITS_HAND, dim=-1).unsqueeze(0)
    loss, nll, stats = predicted_skd_loss(
        lprobs, torch.tensor([target]), W_HAND, sigma=sigma, skd_weight=a, qn_max=qn_max
    )
    expected = hand_loss(LOGITS_HAND.tolist(), target, 0, W_HAND.tolist(), sigma, a, qn_max)
    assert loss.item() == pytest.approx(expected, abs=1e-6), case
    assert nll.item() == pytest.approx(-lprobs[0, target].item(), abs=1e-6)
    assert stats["match"].item() == (target == 0)


def test_clip_at_qn_max():
    lprobs = F.log_softmax(LOGITS_HAND, dim=-1).repeat(3, 1)
    target = torch.tensor([2, 3, 1])  # q_n unclipped: e^-0.5 = 0.61, e^-2.5 = 0.082, e^-5 = 0.0067
    _, _, stats = predicted_skd_loss(lprobs, target, W_HAND, sigma=1.0, skd_weight=1.0, qn_max=0.5)
    assert stats["clipped"].item() == 1
    assert stats["qn"].item() == pytest.approx(0.5 + math.exp(-2.5) + math.exp(-5), abs=1e-6)
    _, _, stats = predicted_skd_loss(lprobs, target, W_HAND, sigma=1.0, skd_weight=1.0, qn_max=0.05)
    assert stats["clipped"].item() == 2
    assert stats["qn"].item() == pytest.approx(0.05 + 0.05 + math.exp(-5), abs=1e-6)


def test_alpha_schedule():
    k, eta = 500, 0.0002
    assert skd_alpha(0, k, eta, 1.0) == 0.0
    assert skd_alpha(k - 1, k, eta, 1.0) == 0.0  # the K-th update still trains plain CE
    assert skd_alpha(k, k, eta, 1.0) == pytest.approx(eta)
    assert skd_alpha(k + 1, k, eta, 1.0) == pytest.approx(2 * eta)
    assert skd_alpha(k + 4999, k, eta, 1.0) == pytest.approx(1.0)
    assert skd_alpha(k + 10**6, k, eta, 1.0) == 1.0
    assert skd_alpha(k + 10**6, k, eta, 0.3) == 0.3
    assert skd_alpha(0, 0, eta, 1.0) == pytest.approx(eta)


# --- invariants on a tiny model, through the criterion class -------------------------------


SCHEDULE = dict(skd_sigma=1.0, skd_warmup_updates=2, skd_alpha_step=0.1)  # alpha 0.9 at update 10


@pytest.mark.parametrize("num_updates,skd_lambda", [(1, 1.0), (10, 0.0)],
                         ids=["alpha=0 (warm-up)", "lambda=0"])
def test_degenerate_settings_equal_cross_entropy_exactly(num_updates, skd_lambda):
    sample = make_sample()
    ce_loss, ce_grads, ce_size, _ = loss_and_grads(CrossEntropyCriterion(make_task(), False),
                                                   sample, num_updates)
    loss, grads, size, log = loss_and_grads(make_criterion(**SCHEDULE, skd_lambda=skd_lambda),
                                            sample, num_updates)
    assert torch.equal(loss, ce_loss)
    assert size == ce_size
    for g, ce_g in zip(grads, ce_grads):
        assert torch.equal(g, ce_g)
    assert torch.equal(log["nll_loss"], ce_loss)


def test_skd_changes_the_loss_once_alpha_is_positive():
    sample = make_sample()
    ce_loss, _, _, _ = loss_and_grads(CrossEntropyCriterion(make_task(), False), sample, 10)
    loss, _, _, log = loss_and_grads(make_criterion(**SCHEDULE), sample, 10)
    assert log["skd_alpha"] == pytest.approx(0.9)
    assert log["skd_qn_count"] > 0
    assert not torch.allclose(loss, ce_loss)
    assert torch.equal(log["nll_loss"], ce_loss)  # nll_loss stays the true NLL


def test_reduced_loss_is_sum_of_unreduced():
    sample = make_sample()
    criterion = make_criterion(**SCHEDULE)
    model = at_update(TinyDecoderModel(), 10).train()
    reduced, _, _ = criterion(model, sample)
    unreduced, _, _ = criterion(model, sample, reduce=False)
    assert unreduced.shape == (sample["target"].numel(),)
    assert reduced.item() == pytest.approx(unreduced.sum().item(), rel=1e-6)
    assert torch.all(unreduced[sample["target"].view(-1).eq(PAD)] == 0)


def test_padding_adds_nothing():
    sample = make_sample(bsz=3, pad_last=0)
    padded = make_sample(bsz=3, pad_last=0)
    for key in ("target",):
        padded[key] = torch.cat([sample[key], torch.full((3, 4), PAD)], dim=1)
    padded["net_input"] = {"src_tokens": torch.cat([sample["net_input"]["src_tokens"],
                                                    torch.full((3, 4), 5)], dim=1)}
    criterion = make_criterion(**SCHEDULE)
    model = at_update(TinyDecoderModel(), 10).train()
    loss, _, log = criterion(model, sample)
    loss_padded, _, log_padded = criterion(model, padded)
    assert loss_padded.item() == pytest.approx(loss.item(), rel=1e-6)
    for key in ("skd_match", "skd_qn_count", "skd_qn_sum", "skd_clipped", "skd_positions"):
        assert float(log_padded[key]) == pytest.approx(float(log[key]))


def test_no_gradient_reaches_w_through_qn():
    # lprobs independent of W: W enters only through q_n, so it must get no gradient at all.
    w = W_HAND.clone().requires_grad_(True)
    logits = LOGITS_HAND.repeat(3, 1).requires_grad_(True)
    loss, _, _ = predicted_skd_loss(F.log_softmax(logits, -1), torch.tensor([2, 3, 1]), w,
                                  sigma=1.0, skd_weight=0.7)
    loss.backward()
    assert w.grad is None
    assert logits.grad is not None


def test_gradient_equals_that_of_a_constant_target():
    # Where W also produces the logits, its gradient is the cross-entropy one with q_n held fixed.
    sample = make_sample(vocab=12)
    criterion = make_criterion(**SCHEDULE)
    model = at_update(TinyDecoderModel(vocab=12), 10).train()
    loss, _, _ = criterion(model, sample)
    loss.backward()
    grad = model.out.weight.grad.clone()

    model.zero_grad()
    lprobs = model.get_normalized_probs(model(**sample["net_input"]), True).view(-1, 12)
    target = sample["target"].view(-1)
    with torch.no_grad():
        n = lprobs.argmax(-1)
        w = model.out.weight
        q = torch.exp(-1.0 * (w[target] - w[n]).norm(dim=-1)).clamp(max=0.5)
        q = torch.where(n.eq(target) | target.eq(PAD), torch.zeros_like(q), q) * criterion.alpha
    lp_t = lprobs.gather(1, target[:, None]).squeeze(1)
    lp_n = lprobs.gather(1, n[:, None]).squeeze(1)
    manual = (-(1 - q) * lp_t - q * lp_n)[target.ne(PAD)].sum()
    manual.backward()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert torch.allclose(grad, model.out.weight.grad, atol=1e-6)


def test_sentence_avg_and_validation_loss():
    sample = make_sample(bsz=3)
    criterion = make_criterion(sentence_avg=True, skd_sigma=1.0, skd_warmup_updates=0,
                               skd_alpha_step=1.0)
    model = TinyDecoderModel()
    _, sample_size, _ = criterion(model.train(), sample)
    assert sample_size == 3
    with torch.no_grad():
        loss, _, log = criterion(model.eval(), sample)
    assert torch.equal(loss, log["nll_loss"])  # validation reports plain NLL as loss


@pytest.mark.parametrize("mode", ["predicted", "topk", "full"])
def test_validation_loss_is_the_plain_nll_with_label_smoothing_and_skd_active(mode):
    # With alpha 0 and no label smoothing every loss function returns the NLL itself, so only
    # label smoothing (and SKD, past the warm-up) make the training loss something else.
    sample = make_sample()
    criterion = make_criterion(**SCHEDULE, label_smoothing=0.1, skd_soft_targets=mode, skd_topk=3)
    model = at_update(TinyDecoderModel(), 10)
    with torch.no_grad():
        train_loss, _, train_log = criterion(model.train(), sample)  # update 10: alpha 0.9
        loss, _, log = criterion(model.eval(), sample)
        lprobs = F.log_softmax(model(**sample["net_input"])[0].double(), dim=-1)
    target = sample["target"]
    nll = -lprobs.gather(-1, target[..., None]).squeeze(-1)[target.ne(PAD)].sum().item()
    assert train_log["skd_alpha"] == pytest.approx(0.9) and criterion.num_updates == 10
    assert loss.item() == pytest.approx(nll, rel=1e-6)
    assert log["loss"].item() == log["nll_loss"].item() == loss.item()
    # the training-mode loss of the same batch and weights is another number
    assert abs(train_loss.item() - nll) > 0.02 * nll


def test_ignore_prefix_size():
    sample = make_sample(bsz=3, tgt_len=5, pad_last=0)
    criterion = make_criterion(**SCHEDULE, ignore_prefix_size=2)
    model = at_update(TinyDecoderModel(), 10).train()
    _, _, log = criterion(model, sample)
    lprobs = model.get_normalized_probs(model(**sample["net_input"]), True)[:, 2:]
    nll = -lprobs.gather(-1, sample["target"][:, 2:, None]).sum()
    assert log["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-6)
    assert int(log["skd_positions"]) == 3 * 3


def test_low_precision_lprobs_keep_qn_in_float32():
    """W and the log-probabilities in bfloat16 (--bf16): the distances and q_n are computed from
    those values in float32, so they equal a float64 computation from the same bfloat16 values
    to float32's precision (~1e-7); bfloat16 arithmetic errs by up to 2^-9 = 2e-3."""
    g = torch.Generator().manual_seed(0)
    vocab, positions, sigma = 50, 400, 0.2
    w = (0.6 * torch.randn(vocab, 16, generator=g)).bfloat16()
    lprobs = F.log_softmax(2 * torch.randn(positions, vocab, generator=g), dim=-1).bfloat16()
    target = torch.randint(4, vocab, (positions,), generator=g)
    loss, _, stats = predicted_skd_loss(lprobs, target, w, sigma=sigma, skd_weight=0.6,
                                        qn_max=1.0)
    pred = lprobs.argmax(-1)
    w64, lp64 = w.double(), lprobs.double()
    distance = (w64[target] - w64[pred]).norm(dim=-1)
    qn = torch.exp(-sigma * distance).masked_fill(pred.eq(target), 0.0)
    assert stats["distance"].dtype == torch.float32
    torch.testing.assert_close(stats["distance"].double(), distance, rtol=1e-6, atol=1e-6)
    assert stats["qn"].item() == pytest.approx(qn.sum().item(), rel=1e-5)
    # the loss itself is in the log-probabilities' dtype, bfloat16: close, not exact
    lp_t, lp_n = lp64.gather(1, target[:, None]).squeeze(1), lp64.gather(1, pred[:, None]).squeeze(1)
    expected = (-(1 - 0.6 * qn) * lp_t - 0.6 * qn * lp_n).sum().item()
    assert loss.float().item() == pytest.approx(expected, rel=1e-2)


def test_reduce_metrics_are_sums_over_workers():
    criterion = make_criterion(**SCHEDULE)
    model = at_update(TinyDecoderModel(), 10).train()
    logs = [criterion(model, make_sample(seed=s))[2] for s in range(3)]
    with metrics.aggregate() as agg:
        SelfKDCrossEntropyCriterion.reduce_metrics(logs)
    mismatch = sum(float(log["skd_qn_count"]) for log in logs)
    positions = sum(float(log["skd_positions"]) for log in logs)
    ntokens = sum(log["ntokens"] for log in logs)
    nll = sum(float(log["nll_loss"]) for log in logs)
    assert agg.get_smoothed_value("skd_qn") == pytest.approx(
        sum(float(log["skd_qn_sum"]) for log in logs) / mismatch, abs=1e-4)
    assert agg.get_smoothed_value("skd_clip") == pytest.approx(
        sum(float(log["skd_clipped"]) for log in logs) / mismatch, abs=1e-4)
    assert agg.get_smoothed_value("skd_match") == pytest.approx(
        sum(float(log["skd_match"]) for log in logs) / positions, abs=1e-4)
    assert agg.get_smoothed_value("nll_loss") == pytest.approx(nll / ntokens / math.log(2), abs=1e-3)
    assert agg.get_smoothed_value("skd_alpha") == pytest.approx(0.9)


def test_saturation_warning_names_median_distance_and_a_sigma(caplog):
    # sigma 0.1 with distances of a few units: q_n is clipped at 0.5 almost everywhere.
    criterion = make_criterion(**dict(SCHEDULE, skd_sigma=0.1))
    model = at_update(TinyDecoderModel(vocab=12, dim=6), 10).train()
    with caplog.at_level(logging.WARNING):
        for seed in range(SATURATION_MIN_POSITIONS // 10 + 5):
            criterion(model, make_sample(bsz=4, tgt_len=8, seed=seed))
    warnings = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "median distance" in warnings[0] and "--skd-sigma" in warnings[0]

    caplog.clear()
    informative = make_criterion(**dict(SCHEDULE, skd_sigma=3.0))
    with caplog.at_level(logging.WARNING):
        for seed in range(SATURATION_MIN_POSITIONS // 10 + 5):
            informative(model, make_sample(bsz=4, tgt_len=8, seed=seed))
    assert not [r for r in caplog.records if "clipped" in r.getMessage()]


@pytest.mark.parametrize(
    "flag,field,value",
    [("--skd-sigma", "skd_sigma", -0.1), ("--skd-sigma", "skd_sigma", 0.0),
     ("--skd-qn-max", "skd_qn_max", 0.0), ("--skd-qn-max", "skd_qn_max", 1.5),
     ("--skd-alpha-max", "skd_alpha_max", 2.0), ("--skd-lambda", "skd_lambda", -1.0),
     ("--skd-warmup-updates", "skd_warmup_updates", -5),
     ("--skd-alpha-step", "skd_alpha_step", float("nan")),
     ("--target-embed-noise", "target_embed_noise", -1.0)],
)
def test_bad_flag_values_are_refused_naming_the_flag(flag, field, value):
    with pytest.raises(ValueError, match=flag):
        make_criterion(**{field: value})


def test_the_criterion_reads_every_field_of_its_config():
    """A field renamed in the config but not in the criterion, or added and never used, fails."""
    criterion_code = sys.modules[SelfKDCrossEntropyCriterion.__module__].__dict__

    class ReadLog:
        def __init__(self, cfg):
            self.cfg, self.read = cfg, set()

        def __getattr__(self, name):
            if sys._getframe(1).f_globals is criterion_code:  # not the shared range checks
                self.read.add(name)
            return getattr(self.cfg, name)

    cfg = ReadLog(SelfKDCrossEntropyConfig(sentence_avg=False))
    SelfKDCrossEntropyCriterion(cfg, make_task())
    assert cfg.read == set(SelfKDCrossEntropyConfig.__dataclass_fields__) - {"_name"}


def test_unsupported_model_is_refused_clearly():
    class NoW(TinyDecoderModel):
        get_output_embedding_matrix = None

    with pytest.raises(ValueError, match="get_output_embedding_matrix"):
        make_criterion()(NoW().train(), make_sample())


def test_target_embed_noise_only_in_the_decoder_and_in_training():
    embed = nn.Embedding(1000, 64)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = embed

        def forward(self, tokens):
            return self.embed_tokens(tokens)

    decoder = Decoder()
    TargetEmbeddingNoise(decoder, std=0.5)
    tokens = torch.arange(1000)
    clean = embed.weight.detach()
    decoder.train()
    torch.manual_seed(0)
    noise = decoder(tokens) - clean
    # 64000 draws of N(0, 0.25): the sample std is within 0.3% of 0.5 (one standard error), the
    # mean within 0.002 of 0
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)
    assert abs(noise.mean().item()) < 0.01
    assert torch.equal(embed(tokens), clean)  # the same module outside the decoder (an encoder)
    decoder.eval()
    assert torch.equal(decoder(tokens), clean)


def test_target_embed_noise_std_is_the_flags_through_the_criterion():
    criterion = make_criterion(**SCHEDULE, target_embed_noise=0.3)
    model = at_update(TinyDecoderModel(dim=64), 10).train()
    sample = make_sample(bsz=50, tgt_len=40, pad_last=0)
    criterion(model, sample)  # the first training forward installs the noise
    seen = []
    model.embed_tokens.register_forward_hook(lambda module, args, output: seen.append(output))
    torch.manual_seed(0)
    criterion(model, sample)
    noise = seen[0] - model.embed_tokens(sample["net_input"]["src_tokens"])  # outside: clean
    # 128000 draws: the sample std within 0.2% of 0.3 (one standard error)
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    with torch.no_grad():
        criterion(model.eval(), sample)
    assert torch.equal(seen[-1], model.embed_tokens(sample["net_input"]["src_tokens"]))


@pytest.mark.parametrize("vocab", [10, 1000, 1337])
def test_row_argmax_is_torch_argmax_exactly(vocab):
    g = torch.Generator().manual_seed(vocab)
    x = F.log_softmax(torch.randn(64, vocab, generator=g), -1)
    x[0] = 0.0  # a row of ties: the first column wins
    x[1, -1] = x[1].max() + 1  # the maximum in the ragged last block
    x[2, 3] = x[2, vocab // 2] = x[2].max() + 1  # a tie across blocks
    for block in (4, 256):
        assert torch.equal(row_argmax(x, block), x.argmax(-1))
    assert torch.equal(row_argmax(x[:, : vocab // 2 + 1], 4), x[:, : vocab // 2 + 1].argmax(-1))


# --- the update number reaches the criterion through the model --------------------------------


class TinyFairseqModel(BaseFairseqModel):
    """TinyDecoderModel as a fairseq model: set_num_updates reaches its submodules."""

    def __init__(self):
        super().__init__()
        self.decoder = TinyDecoderModel()

    def forward(self, src_tokens, src_lengths=None):
        return self.decoder(src_tokens)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.decoder.get_normalized_probs(net_output, log_probs)

    def get_targets(self, sample, net_output):
        return sample["target"]


class Wrapper(nn.Module):
    """What fairseq's data-parallel wrappers look like from outside: the model is .module."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_model_set_num_updates_reaches_the_counter_through_distributed_wrappers():
    model = TinyFairseqModel()
    counter = attach_update_counter(ModuleProxyWrapper(Wrapper(model)))
    assert counter is attach_update_counter(model) is model.skd_update_counter  # one per model
    assert isinstance(counter, UpdateCounter) and counter.num_updates == 0
    model.set_num_updates(41)  # what FairseqTask.train_step and Trainer.load_checkpoint call
    assert counter.num_updates == 41
    assert list(counter.parameters()) == [] and list(counter.buffers()) == []
    assert model.state_dict().keys() == TinyFairseqModel().state_dict().keys()


def test_a_new_counter_starts_from_the_update_count_the_trainer_logged():
    # The criterion attaches the counter during its first forward, after fairseq has passed
    # that update's number to the model: the trainer's logged num_updates stands in for it.
    metrics.reset()  # the start of fairseq-train: nothing logged yet
    assert attach_update_counter(TinyFairseqModel()).num_updates == 0
    metrics.log_scalar("num_updates", 1234, weight=0, priority=200)  # as Trainer.set_num_updates
    assert attach_update_counter(TinyFairseqModel()).num_updates == 1234
    metrics.reset()


def test_alpha_follows_the_update_number_fairseq_gives_the_model():
    criterion = make_criterion(skd_warmup_updates=2, skd_alpha_step=0.1)
    model = TinyFairseqModel().train()
    for num_updates, alpha in ((0, 0.0), (1, 0.0), (2, 0.1), (5, 0.4), (100, 1.0)):
        attach_update_counter(model)
        model.set_num_updates(num_updates)
        _, _, log = criterion(model, make_sample())
        assert log["skd_alpha"] == pytest.approx(alpha) and criterion.alpha == pytest.approx(alpha)
    with torch.no_grad():
        _, _, log = criterion(model.eval(), make_sample())
    assert "skd_alpha" not in log  # validation applies alpha = 0 and logs no schedule value
