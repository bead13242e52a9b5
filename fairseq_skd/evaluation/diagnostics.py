"""Per-token prediction diagnostics: entropy, top-1 accuracy, confidence, calibration (ECE), NLL
split by whether the argmax is right, and temperature scaling fitted on a validation set.

They say *how* a model's predictions differ, where a single NLL only says by how much (SKD, for
example, can sharpen the distribution without changing which word is ranked first).

Definitions, for one scored position with log-probabilities lp over the vocabulary (natural log),
p = exp(lp) and target t:

    entropy   H = -sum_k p_k lp_k  (nats; terms with p_k = 0, e.g. lp_k = -inf, count 0)
    argmax    n = the first maximum of lp (the tie rule of ``torch.argmax``)
    correct   n == t;   confidence (max prob) = p_n;   NLL = -lp_t
    NLL right / wrong: the mean NLL over the positions where n == t / n != t
    ECE       sum over 15 equal-width bins of the confidence of count_b / N * |acc_b - conf_b|,
              acc_b the fraction correct and conf_b the mean confidence in bin b. Bin i holds
              i/15 <= p < (i+1)/15 and the last bin also holds p == 1. The rule is applied exactly
              to the float32 confidence: floor(15 p) is computed in float64, where the product of
              a 24-bit mantissa and 15 is exact (no edge i/15 but 0 and 1 is a float).

All are averages over tokens (positions), never over sentences.

Temperature scaling divides the model's scores by one T > 0 fitted on a validation set:
lp_T = log_softmax(lp / T). For a model's logits z, lp = log_softmax(z) = z - c per row, and
log_softmax is shift invariant, so log_softmax(lp / T) == log_softmax(z / T): scaling the
log-probabilities is scaling the logits. The argmax (hence top-1 accuracy) never changes with T;
the confidence, entropy, NLL and ECE are computed from lp_T. At T == 1 lp is used as given
(not renormalised), so calibrated metrics at T = 1 equal the plain ones exactly.
``fit_temperature`` minimises the total NLL over beta = 1/T, in which it is convex:

    d NLL / d beta = sum_positions (E_p[lp] - lp_t),   d2 NLL / d beta2 = sum Var_p[lp] >= 0,

with p = softmax(beta * lp); it takes safeguarded Newton steps inside a bracket, one pass over
the data per step.

Usage (``valid_batches`` / ``test_batches``: zero-argument callables yielding
(lprobs [N x V], target [N], mask [N] or None), e.g. replaying cached model outputs)::

    fit = fit_temperature(valid_batches)
    for calibrated in (PredictionDiagnostics(), PredictionDiagnostics(fit.temperature)):
        for lprobs, target, mask in test_batches():
            calibrated.update(lprobs, target, mask)
        print(fit.temperature, calibrated.result())

Memory: rows are processed in blocks of about ``CHUNK_ELEMENTS`` entries, so the temporaries are
a few [rows x V] float32 blocks whatever the batch size; sums are float64 on the CPU, fetched
once per batch.
"""

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

NUM_BINS = 15
# Entries per block of rows: small enough that a block's few float32 temporaries stay at some
# tens of MB, large enough that the per-block Python overhead is negligible.
CHUNK_ELEMENTS = 2**21

# Positions of the per-token sums in PredictionDiagnostics.sums.
TOKENS, ENTROPY, NLL, CORRECT, MAX_PROB, NLL_RIGHT, NLL_WRONG = range(7)
# Rows of PredictionDiagnostics.bins (one column per confidence bin).
BIN_COUNT, BIN_CONFIDENCE, BIN_CORRECT = range(3)

Batch = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


def confidence_bin(confidence: torch.Tensor) -> torch.Tensor:
    """The reliability bin of each confidence in [0, 1]: floor(15 p), and 14 for p == 1."""
    # float64 holds 15 * p exactly for a float32 (or narrower) p, so floor() applies the rule
    # exactly; for float64 confidences it can err by one bin within 1e-16 of an edge.
    scaled = confidence.to(torch.float64) * NUM_BINS
    return scaled.floor().long().clamp_(0, NUM_BINS - 1)


def scaled_log_probs(lprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(lprobs / T); ``lprobs`` itself (not renormalised) at T == 1."""
    if temperature == 1.0:
        return lprobs
    return torch.log_softmax(lprobs / temperature, dim=-1)


def expectation(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_k p_k * values_k per row, a term being 0 where p_k == 0 (so that 0 * -inf is 0)."""
    return torch.where(probs > 0, probs * values, 0.0).sum(-1)


def scored_chunks(lprobs: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]):
    """Yield (lp [C x V], target [C]) over the positions where ``mask`` is true (all if None),
    C rows at a time, lp in float32 (float64 if given float64). Leading dims are flattened."""
    vocab = lprobs.size(-1)
    lprobs = lprobs.reshape(-1, vocab)
    target = target.reshape(-1).to(lprobs.device)
    if target.numel() != lprobs.size(0):
        raise ValueError(f"{lprobs.size(0)} rows of lprobs but {target.numel()} targets")
    if mask is None:
        rows = torch.arange(lprobs.size(0), device=lprobs.device)
    else:
        if mask.numel() != lprobs.size(0):
            raise ValueError(f"{lprobs.size(0)} rows of lprobs but {mask.numel()} mask entries")
        rows = mask.reshape(-1).nonzero().squeeze(1).to(lprobs.device)
    dtype = torch.promote_types(lprobs.dtype, torch.float32)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // vocab)
    for index in rows.split(rows_per_chunk):
        yield lprobs.index_select(0, index).to(dtype), target.index_select(0, index).long()


def chunk_statistics(lp: torch.Tensor, target: torch.Tensor, temperature: float):
    """Sums [7] (see TOKENS...NLL_WRONG) and bins [3 x 15] of one block, float64, on lp's device."""
    pred = lp.argmax(-1)  # of the unscaled scores: the temperature changes no prediction
    lp = scaled_log_probs(lp, temperature)
    nll = -lp.gather(1, target[:, None]).squeeze(1)
    max_prob = lp.gather(1, pred[:, None]).squeeze(1).exp()
    entropy = -expectation(lp.exp(), lp)
    correct = pred == target
    zero = torch.zeros_like(nll)
    per_token = torch.stack([
        torch.ones_like(nll), entropy, nll, correct.to(nll.dtype), max_prob,
        torch.where(correct, nll, zero), torch.where(correct, zero, nll),
    ]).to(torch.float64)
    sums = per_token.sum(1)
    bins = torch.zeros(3, NUM_BINS, dtype=torch.float64, device=lp.device)
    bins.index_add_(1, confidence_bin(max_prob), per_token[[TOKENS, MAX_PROB, CORRECT]])
    return sums, bins


def _mean(total: float, count: float) -> Optional[float]:
    return total / count if count > 0 else None


class PredictionDiagnostics:
    """Sums of per-token diagnostics over batches (see the module docstring).

    ``temperature`` != 1 computes everything but the argmax from log_softmax(lprobs / T), i.e.
    the calibrated metrics. Accumulators with the same temperature add up with ``merge``.
    """

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.sums = torch.zeros(7, dtype=torch.float64)
        self.bins = torch.zeros(3, NUM_BINS, dtype=torch.float64)

    @torch.no_grad()
    def update(self, lprobs: torch.Tensor, target: torch.Tensor,
               mask: Optional[torch.Tensor] = None):
        """Add the positions of one batch: ``lprobs`` [N x V] log-probabilities (any float
        dtype), ``target`` [N], ``mask`` [N] bool, true where a position is scored (None: all)."""
        sums = torch.zeros(7, dtype=torch.float64, device=lprobs.device)
        bins = torch.zeros(3, NUM_BINS, dtype=torch.float64, device=lprobs.device)
        for lp, tgt in scored_chunks(lprobs, target, mask):
            chunk_sums, chunk_bins = chunk_statistics(lp, tgt, self.temperature)
            sums += chunk_sums
            bins += chunk_bins
        self.sums += sums.cpu()
        self.bins += bins.cpu()
        return self

    def merge(self, other: "PredictionDiagnostics"):
        """Add another accumulator's sums to this one (same temperature); returns self."""
        if other.temperature != self.temperature:
            raise ValueError(f"cannot merge diagnostics at temperature {other.temperature} "
                             f"into ones at {self.temperature}")
        self.sums += other.sums
        self.bins += other.bins
        return self

    def result(self) -> dict:
        """Means over the scored tokens, ECE and the reliability table (see module docstring)."""
        s = self.sums.tolist()
        tokens = s[TOKENS]
        if tokens == 0:
            raise ValueError("no scored tokens: update() was never given an unmasked position")
        wrong = tokens - s[CORRECT]
        counts, confidences, corrects = self.bins.tolist()
        reliability = []
        ece = 0.0
        for i, (count, confidence, correct) in enumerate(zip(counts, confidences, corrects)):
            mean_confidence, accuracy = _mean(confidence, count), _mean(correct, count)
            if count > 0:
                ece += count / tokens * abs(accuracy - mean_confidence)
            reliability.append({"lower": i / NUM_BINS, "upper": (i + 1) / NUM_BINS,
                                "count": int(count), "confidence": mean_confidence,
                                "accuracy": accuracy})
        return {
            "tokens": int(tokens),
            "nll_per_token": s[NLL] / tokens,
            "mean_entropy": s[ENTROPY] / tokens,
            "top1_accuracy": s[CORRECT] / tokens,
            "mean_max_prob": s[MAX_PROB] / tokens,
            "ece": ece,
            "nll_argmax_right": _mean(s[NLL_RIGHT], s[CORRECT]),
            "nll_argmax_wrong": _mean(s[NLL_WRONG], wrong),
            "reliability": reliability,
        }


@dataclass
class TemperatureFit:
    temperature: float
    nll_per_token: float  # on the fitting set, at ``temperature``
    tokens: int
    passes: int  # passes over the fitting set


def _nll_and_beta_derivatives(batches: Callable[[], Iterable[Batch]], temperature: float):
    """One pass: total NLL at T, tokens, and the NLL's first and second derivatives in 1/T."""
    totals, tokens = 0.0, 0
    with torch.no_grad():
        for lprobs, target, mask in batches():
            for lp, tgt in scored_chunks(lprobs, target, mask):
                scaled = scaled_log_probs(lp, temperature)
                probs = scaled.exp()
                mean_lp = expectation(probs, lp)
                variance = expectation(probs, (lp - mean_lp[:, None]) ** 2)
                nll = -scaled.gather(1, tgt[:, None]).squeeze(1)
                grad = mean_lp - lp.gather(1, tgt[:, None]).squeeze(1)
                totals = totals + torch.stack([nll, grad, variance]).to(torch.float64).sum(1)
                tokens += len(tgt)
    if tokens == 0:
        raise ValueError("no scored tokens in the temperature fitting set")
    nll, grad, curvature = totals.tolist()
    if not (math.isfinite(nll) and math.isfinite(grad)):
        raise ValueError("the NLL is not finite on the fitting set (a target with probability 0?)")
    return nll, tokens, grad, curvature


def fit_temperature(
    batches: Callable[[], Iterable[Batch]],
    min_temperature: float = 0.05,
    max_temperature: float = 20.0,
    tolerance: float = 1e-6,
    max_passes: int = 40,
) -> TemperatureFit:
    """The T in [min_temperature, max_temperature] minimising the total NLL of
    log_softmax(lprobs / T) over ``batches()`` (called once per pass; each call must yield the
    whole fitting set). Stops when the next step in beta = 1/T is below ``tolerance``."""
    # Bracket [lo, hi] on beta: the optimum lies inside. An end is "evaluated" once the
    # derivative there is known (then its sign is right), else it is the user's bound.
    if not 0 < min_temperature <= max_temperature:
        raise ValueError(f"need 0 < min_temperature <= max_temperature, "
                         f"got {min_temperature}, {max_temperature}")
    beta_min, beta_max = 1.0 / max_temperature, 1.0 / min_temperature
    lo, hi = beta_min, beta_max
    lo_evaluated = hi_evaluated = False
    beta = min(max(1.0, lo), hi)
    for passes in range(1, max_passes + 1):
        temperature = 1.0 / beta
        nll, tokens, grad, curvature = _nll_and_beta_derivatives(batches, temperature)
        if grad > 0:
            hi, hi_evaluated = beta, True
        else:
            lo, lo_evaluated = beta, True
        if curvature > 0:
            proposal = beta - grad / curvature
        else:  # flat in the Newton sense (all rows one-hot): head for the bracket's end
            proposal = hi if grad < 0 else lo
        proposal = min(max(proposal, lo), hi)
        # Newton may leave the bracket (then it is clamped); landing on an end already
        # evaluated makes no progress, so bisect instead.
        if (proposal == lo and lo_evaluated) or (proposal == hi and hi_evaluated):
            proposal = 0.5 * (lo + hi)
        if grad == 0 or abs(proposal - beta) < tolerance:
            if beta in (beta_min, beta_max):
                logger.warning("fitted temperature %g is at the bound of [%g, %g]",
                               temperature, min_temperature, max_temperature)
            return TemperatureFit(temperature, nll / tokens, tokens, passes)
        beta = proposal
    raise RuntimeError(f"temperature fit did not converge in {max_passes} passes "
                       f"(last T {1 / beta})")
