"""Per-token prediction diagnostics and temperature scaling against hand computations (after
fairseq's tests/test_label_smoothing.py): tiny explicit inputs, invariants, a known temperature."""

import logging
import math
from fractions import Fraction

import pytest
import torch

from fairseq_skd.evaluation import diagnostics
from fairseq_skd.evaluation.diagnostics import (
    PredictionDiagnostics,
    confidence_bin,
    fit_temperature,
    scaled_log_probs,
)

NEG_INF = float("-inf")


def log_rows(rows, dtype=torch.float32):
    """log of explicit probability rows (computed in float64, then cast); 0 -> -inf."""
    return torch.tensor(rows, dtype=torch.float64).log().to(dtype)


def entropy(row):
    return -sum(p * math.log(p) for p in row if p > 0)


# Five scored positions and one padding position; argmax / confidence / bin noted per row.
HAND_ROWS = [
    [0.7, 0.2, 0.1],     # t 0: right, p 0.7  -> bin 10 (15 p = 10.5)
    [0.2, 0.72, 0.08],   # t 0: wrong, p 0.72 -> bin 10 (10.8)
    [0.25, 0.5, 0.25],   # t 2: wrong, p 0.5  -> bin 7 (7.5)
    [0.45, 0.45, 0.1],   # t 1: tie, argmax is the first maximum (0): wrong, p 0.45 -> bin 6 (6.75)
    [1.0, 0.0, 0.0],     # t 0: right, p 1 -> the last bin (14); lp has -inf entries
    [0.1, 0.1, 0.8],     # padding (mask false): must not count
]
HAND_TARGET = torch.tensor([0, 0, 2, 1, 0, 1])
HAND_MASK = torch.tensor([True, True, True, True, True, False])


def hand_diagnostics(lprobs, target, mask, temperature=1.0):
    return PredictionDiagnostics(temperature).update(lprobs, target, mask).result()


def test_hand_computation():
    r = hand_diagnostics(log_rows(HAND_ROWS), HAND_TARGET, HAND_MASK)
    n = 5
    assert r["tokens"] == n
    hand_entropy = sum(entropy(row) for row in HAND_ROWS[:5]) / n
    assert r["mean_entropy"] == pytest.approx(hand_entropy, abs=1e-6)
    assert r["top1_accuracy"] == pytest.approx(2 / n, abs=1e-6)
    assert r["mean_max_prob"] == pytest.approx((0.7 + 0.72 + 0.5 + 0.45 + 1.0) / n, abs=1e-6)
    nll_right = [-math.log(0.7), 0.0]
    nll_wrong = [-math.log(0.2), -math.log(0.25), -math.log(0.45)]
    assert r["nll_per_token"] == pytest.approx(sum(nll_right + nll_wrong) / n, abs=1e-6)
    assert r["nll_argmax_right"] == pytest.approx(sum(nll_right) / 2, abs=1e-6)
    assert r["nll_argmax_wrong"] == pytest.approx(sum(nll_wrong) / 3, abs=1e-6)
    # bin 10: {0.7 right, 0.72 wrong}; bin 7: 0.5 wrong; bin 6: 0.45 wrong; bin 14: 1.0 right
    ece = 2 / n * abs(0.5 - 0.71) + 1 / n * 0.5 + 1 / n * 0.45 + 1 / n * 0.0
    assert r["ece"] == pytest.approx(ece, abs=1e-6)
    table = r["reliability"]
    assert len(table) == 15
    assert [b["count"] for b in table] == [0] * 6 + [1, 1, 0, 0, 2, 0, 0, 0, 1]
    assert table[10]["confidence"] == pytest.approx(0.71, abs=1e-6)
    assert table[10]["accuracy"] == 0.5
    assert table[14]["confidence"] == 1.0 and table[14]["accuracy"] == 1.0
    assert table[0] == {"lower": 0.0, "upper": 1 / 15, "count": 0,
                        "confidence": None, "accuracy": None}
    assert table[14]["upper"] == 1.0


def test_mask_excludes_padding():
    lprobs = log_rows(HAND_ROWS)
    masked = hand_diagnostics(lprobs, HAND_TARGET, HAND_MASK)
    assert masked == hand_diagnostics(lprobs[:5], HAND_TARGET[:5], None)
    assert hand_diagnostics(lprobs, HAND_TARGET, None)["tokens"] == 6


def test_neg_inf_entries_give_no_nan():
    # -inf where a symbol (e.g. padding) is masked out of the distribution: p log p counts 0.
    rows = [[0.0, 0.5, 0.5], [0.0, 0.9, 0.1], [1.0, 0.0, 0.0]]
    lprobs, target = log_rows(rows), torch.tensor([1, 2, 0])
    assert torch.isneginf(lprobs).sum() == 4
    for temperature in (1.0, 0.7, 2.0):
        r = hand_diagnostics(lprobs, target, None, temperature)
        values = [r[k] for k in ("nll_per_token", "mean_entropy", "mean_max_prob", "ece")]
        assert all(math.isfinite(v) for v in values), (temperature, r)
    r = hand_diagnostics(lprobs, target, None)
    assert r["mean_entropy"] == pytest.approx((math.log(2) + entropy([0.9, 0.1])) / 3, abs=1e-6)


def test_confidence_bin_edges():
    # No edge k/15 (0 < k < 15) is a float: the float32 values nearest each edge and their
    # neighbours land where exact arithmetic says, floor(15 p); 1.0 is in the last bin.
    near_edges = []
    for k in range(1, 15):
        edge = torch.tensor(k / 15, dtype=torch.float32)
        below = torch.nextafter(edge, torch.tensor(0.0))
        above = torch.nextafter(edge, torch.tensor(1.0))
        near_edges += [below, edge, above]
    confidence = torch.stack([torch.tensor(0.0)] + near_edges + [torch.tensor(1.0)])
    expected = [min(14, math.floor(Fraction(p) * 15)) for p in confidence.tolist()]
    assert confidence_bin(confidence).tolist() == expected
    assert expected[0] == 0 and expected[-1] == 14
    assert len(set(expected[1:-1])) == 15  # each edge really is straddled


@pytest.mark.parametrize("row", [[0.4, 0.35, 0.25], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1]])
def test_token_on_a_bin_edge(row):
    # p = 0.4, 0.6, 0.8 are the edges 6/15, 9/15, 12/15 up to float32 rounding (here 0.4 comes
    # out just below its edge, 0.6 just above): the token is counted in the bin floor(15 p) of
    # the confidence the accumulator saw.
    r = hand_diagnostics(log_rows([row]), torch.tensor([0]), None)
    p = r["mean_max_prob"]
    assert p == pytest.approx(max(row), abs=1e-6)
    counts = [b["count"] for b in r["reliability"]]
    assert counts.index(1) == math.floor(Fraction(p) * 15)


def test_merge_equals_one_accumulator():
    lprobs, target, mask = log_rows(HAND_ROWS), HAND_TARGET, HAND_MASK
    first = PredictionDiagnostics().update(lprobs[:3], target[:3], mask[:3])
    second = PredictionDiagnostics().update(lprobs[3:], target[3:], mask[3:])
    both = PredictionDiagnostics().update(lprobs[:3], target[:3], mask[:3]).update(
        lprobs[3:], target[3:], mask[3:])
    assert first.merge(second).result() == both.result()
    with pytest.raises(ValueError, match="temperature"):
        PredictionDiagnostics(2.0).merge(PredictionDiagnostics(1.0))


def test_blocks_of_rows_change_nothing(monkeypatch):
    lprobs, target = log_rows(HAND_ROWS), HAND_TARGET
    whole = hand_diagnostics(lprobs, target, HAND_MASK, 1.5)
    monkeypatch.setattr(diagnostics, "CHUNK_ELEMENTS", 7)  # 2 rows of 3 per block
    blocked = hand_diagnostics(lprobs, target, HAND_MASK, 1.5)
    for key in ("nll_per_token", "mean_entropy", "mean_max_prob", "ece", "nll_argmax_wrong"):
        assert blocked[key] == pytest.approx(whole[key], rel=1e-12)


def test_batch_time_leading_dims_are_flattened():
    lprobs, target, mask = log_rows(HAND_ROWS), HAND_TARGET, HAND_MASK
    flat = hand_diagnostics(lprobs, target, mask)
    assert hand_diagnostics(lprobs.view(2, 3, 3), target.view(2, 3), mask.view(2, 3)) == flat


def test_fp16_input_is_computed_in_float32():
    # fp16 log-probs are widened to float32 first: identical to the float32 result of the same
    # (rounded) values, and within 2e-3 of the unrounded ones (fp16 spacing 2^-11 relative,
    # |lp| <= 2.6 here, so each lp moves by at most 1.3e-3 and p by a relative 1.3e-3).
    lprobs32 = log_rows(HAND_ROWS[:4])
    target = HAND_TARGET[:4]
    half = hand_diagnostics(lprobs32.half(), target, None)
    assert half == hand_diagnostics(lprobs32.half().float(), target, None)
    full = hand_diagnostics(lprobs32, target, None)
    for key in ("nll_per_token", "mean_entropy", "mean_max_prob", "ece", "nll_argmax_right",
                "nll_argmax_wrong"):
        assert half[key] == pytest.approx(full[key], abs=2e-3), key
    assert half["top1_accuracy"] == full["top1_accuracy"]


def test_empty_accumulator_raises():
    with pytest.raises(ValueError, match="no scored tokens"):
        PredictionDiagnostics().result()
    nothing_scored = torch.zeros(6, dtype=torch.bool)
    with pytest.raises(ValueError, match="no scored tokens"):
        PredictionDiagnostics().update(log_rows(HAND_ROWS), HAND_TARGET, nothing_scored).result()


# Temperature scaling


def test_temperature_one_is_the_plain_nll():
    lprobs = log_rows(HAND_ROWS[:4])
    target = HAND_TARGET[:4]
    assert scaled_log_probs(lprobs, 1.0) is lprobs  # not renormalised
    plain = hand_diagnostics(lprobs, target, None)
    assert hand_diagnostics(lprobs, target, None, temperature=1.0) == plain
    assert plain["nll_per_token"] == pytest.approx(
        -lprobs.double().gather(1, target[:, None]).mean().item(), rel=1e-12)


def test_scaling_log_probs_is_scaling_logits():
    # log_softmax(log_softmax(z) / T) == log_softmax(z / T): the shift by logsumexp(z) drops out.
    logits = [[2.0, 1.0, 0.5, -1.0], [0.3, 0.2, 3.0, 0.0]]
    target = [1, 2]
    temperature = 2.0
    lprobs = torch.log_softmax(torch.tensor(logits), -1)
    r = hand_diagnostics(lprobs, torch.tensor(target), None, temperature)
    hand_nll = []
    for z, t in zip(logits, target):
        lse = math.log(sum(math.exp(v / temperature) for v in z))
        hand_nll.append(lse - z[t] / temperature)
    assert r["nll_per_token"] == pytest.approx(sum(hand_nll) / 2, abs=1e-6)
    assert r["top1_accuracy"] == 0.5  # argmax 0 and 2: the temperature changes no prediction
    hand_max = [math.exp(max(z) / temperature) / sum(math.exp(v / temperature) for v in z)
                for z in logits]
    assert r["mean_max_prob"] == pytest.approx(sum(hand_max) / 2, abs=1e-6)


def synthetic_set(num_rows, vocab, logit_scale, true_temperature, seed, dtype):
    """log_softmax(z) for z = logit_scale * N(0, 1), targets drawn from softmax(z / true_T)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, vocab, generator=g, dtype=torch.float64) * logit_scale
    true_probs = torch.softmax(logits / true_temperature, -1)
    target = torch.multinomial(true_probs, 1, generator=g).squeeze(1)
    return torch.log_softmax(logits, -1).to(dtype), target


def test_fit_recovers_a_known_temperature():
    # Targets drawn at T = 2 from a model reporting T = 1: over 20000 tokens the fitted T's
    # spread over seeds is about 0.012, so 0.05 is ~4 standard errors.
    lprobs, target = synthetic_set(20000, 10, logit_scale=3.0, true_temperature=2.0, seed=0,
                                   dtype=torch.float32)
    calls = []

    def batches():  # two batches, replayed on every pass
        calls.append(1)
        return [(lprobs[:12000], target[:12000], None), (lprobs[12000:], target[12000:], None)]

    fit = fit_temperature(batches)
    assert fit.temperature == pytest.approx(2.0, abs=0.05)
    assert fit.tokens == 20000
    assert fit.passes == len(calls) <= 8


def nll_at(lprobs, target, temperature):
    """Reference mean NLL of log_softmax(lprobs / T), float64."""
    scaled = torch.log_softmax(lprobs.double() / temperature, -1)
    return -scaled.gather(1, target[:, None]).mean().item()


def test_fitted_temperature_is_the_grid_minimum():
    # float64 input so that the comparison at 1e-9 measures the optimiser, not rounding. Two
    # batches, padding rows masked out, a -inf column (a symbol the model never predicts).
    lprobs, target = synthetic_set(4000, 8, logit_scale=2.0, true_temperature=1.6, seed=1,
                                   dtype=torch.float64)
    lprobs[:, 3] = NEG_INF
    lprobs = torch.log_softmax(lprobs, -1)
    target[target == 3] = 0
    padded = torch.cat([lprobs, torch.zeros(100, 8, dtype=torch.float64)])  # 100 padding rows
    padded_target = torch.cat([target, torch.full((100,), 3)])
    mask = torch.arange(4100) < 4000
    order = torch.randperm(4100, generator=torch.Generator().manual_seed(2))
    padded, padded_target, mask = padded[order], padded_target[order], mask[order]

    def batches():
        return [(padded[:2000], padded_target[:2000], mask[:2000]),
                (padded[2000:], padded_target[2000:], mask[2000:])]

    fit = fit_temperature(batches)
    assert fit.tokens == 4000
    assert fit.nll_per_token == pytest.approx(nll_at(lprobs, target, fit.temperature), rel=1e-12)
    calibrated = PredictionDiagnostics(fit.temperature)
    for batch in batches():
        calibrated.update(*batch)
    assert calibrated.result()["nll_per_token"] == pytest.approx(fit.nll_per_token, rel=1e-12)
    coarse = [0.5 + 0.02 * i for i in range(151)]                    # 0.5 ... 3.5
    fine = [fit.temperature * (1 + 1e-4 * k) for k in range(-20, 21) if k != 0]
    best_on_grid = min(nll_at(lprobs, target, t) for t in coarse + fine)
    assert fit.nll_per_token <= best_on_grid * (1 + 1e-9)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0])
def test_calibration_never_increases_the_fitting_nll(true_temperature):
    lprobs, target = synthetic_set(5000, 10, logit_scale=2.0, true_temperature=true_temperature,
                                   seed=3, dtype=torch.float32)
    fit = fit_temperature(lambda: [(lprobs, target, None)])
    plain = hand_diagnostics(lprobs, target, None)["nll_per_token"]
    assert fit.nll_per_token <= plain


@pytest.mark.parametrize("targets,bound", [("argmax", 0.05), ("least likely", 20.0)])
def test_fit_stops_at_a_bound(targets, bound, caplog):
    # Always right: the NLL falls as T -> 0; always the least likely word: it falls as T -> inf.
    # Newton's steps toward an unreached bound are about constant in beta (the NLL's tail is
    # exponential), so a degenerate set takes more passes than an interior optimum (~6).
    lprobs = log_rows([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    target = lprobs.argmax(-1) if targets == "argmax" else lprobs.argmin(-1)
    with caplog.at_level(logging.WARNING, logger=diagnostics.__name__):
        fit = fit_temperature(lambda: [(lprobs, target, None)],
                              min_temperature=0.05, max_temperature=20.0)
    assert fit.temperature == pytest.approx(bound, rel=1e-12)
    assert fit.passes <= 16
    assert "at the bound" in caplog.text


def test_fit_rejects_an_impossible_target():
    lprobs = log_rows([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match="not finite"):
        fit_temperature(lambda: [(lprobs, torch.tensor([0, 2]), None)])


@pytest.mark.parametrize("bounds", [(2.0, 1.0), (0.0, 20.0), (-1.0, 20.0)])
def test_fit_refuses_bounds_that_hold_no_temperature(bounds):
    lprobs, target = synthetic_set(100, 5, logit_scale=2.0, true_temperature=1.0, seed=0,
                                   dtype=torch.float32)
    with pytest.raises(ValueError, match=r"need 0 < min_temperature <= max_temperature, got "
                                         rf"{bounds[0]}, {bounds[1]}"):
        fit_temperature(lambda: [(lprobs, target, None)], *bounds)


def test_fit_refuses_a_set_without_scored_tokens():
    lprobs, target = log_rows(HAND_ROWS), HAND_TARGET
    for batches in ([], [(lprobs, target, torch.zeros(6, dtype=torch.bool))]):
        with pytest.raises(ValueError, match="no scored tokens in the temperature fitting set"):
            fit_temperature(lambda: batches)


def test_fit_that_needs_more_passes_than_allowed_raises():
    lprobs, target = synthetic_set(2000, 10, logit_scale=3.0, true_temperature=2.0, seed=0,
                                   dtype=torch.float32)
    fit = fit_temperature(lambda: [(lprobs, target, None)])
    assert fit.passes > 2  # from T = 1 Newton needs a few steps
    with pytest.raises(RuntimeError, match=rf"did not converge in {fit.passes - 1} passes "
                                           r"\(last T [\d.]+\)"):
        fit_temperature(lambda: [(lprobs, target, None)], max_passes=fit.passes - 1)
    assert fit_temperature(lambda: [(lprobs, target, None)], max_passes=fit.passes) == fit
