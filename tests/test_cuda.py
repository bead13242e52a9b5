"""The criterion and the models on a CUDA GPU (issue 9): CUDA equals CPU in float32, soft
targets stay float32 under fp16/bf16, row_argmax equals torch.argmax, incremental equals full
decoding, and fairseq-train / fairseq-generate with mixed precision.

The device under test is ``SKD_TEST_DEVICE`` (``cuda`` or ``cpu``), else the GPU where torch
sees one, else the CPU. On the CPU the tests of what a CPU does too run in the normal suite (half
precision soft targets and losses, row_argmax, --bf16 training and generation, about 30 s on 2
cores); those that compare the GPU with the CPU (marked ``compares_devices``) are skipped, as
there is nothing to compare, unless ``SKD_TEST_DEVICE=cpu`` asks for every test: a dry run of
this file, each device comparison CPU against CPU. bench/gpu_check.sh runs it on a GPU machine,
with ``SKD_TEST_DEVICE=cuda`` where it finds none (then everything is skipped).
"""

import copy
import math
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from fairseq.data import data_utils
from fairseq.utils import apply_to_sample

# --- the code under test, imported in one place (a refactor that moves these only changes this)
import fairseq_skd  # noqa: F401  (registers the criterion and the models)
from fairseq_skd.criterions.self_kd_cross_entropy import (SelfKDCrossEntropyConfig,
                                                          SelfKDCrossEntropyCriterion)
from fairseq_skd.modules.skd_losses import (
    full_skd_loss,
    output_embedding_distances,
    predicted_skd_loss,
    predicted_soft_targets,
    topk_skd_loss,
)
from fairseq_skd.modules.embedding_distance import nearest_neighbours
from fairseq_skd.modules.row_ops import row_argmax
from fairseq_skd.modules.soft_target_losses import full_soft_target_loss, topk_soft_target_loss
# ---

from helpers import (LM_TASK, PAD, USER_DIR, Task, TinyDecoderModel, at_update, build_model,
                     incremental_lprobs, make_criterion, make_dictionary, make_lm_data,
                     make_reverse_translation_data, make_sample, parse_json_logs,
                     preprocess_lm, preprocess_translation, random_sentences, run, train)

REQUESTED = os.environ.get("SKD_TEST_DEVICE")
DEVICE = REQUESTED or ("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="SKD_TEST_DEVICE=cuda, and torch sees no CUDA GPU")
compares_devices = pytest.mark.skipif(
    DEVICE == "cpu" and REQUESTED != "cpu",
    reason="compares the GPU with the CPU, and torch sees no GPU (SKD_TEST_DEVICE=cpu runs it "
           "CPU against CPU)")

MODES = ("predicted", "topk", "full")


def skd_loss(lprobs, target, w, soft_targets, neighbours=None, **kwargs):
    """The loss function of mode ``soft_targets`` (fairseq_skd.modules.skd_losses)."""
    if soft_targets == "topk":
        return topk_skd_loss(lprobs, target, w, neighbours, **kwargs)
    return {"predicted": predicted_skd_loss, "full": full_skd_loss}[soft_targets](
        lprobs, target, w, **kwargs)
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def device():
    """The device under test. On CUDA, float32 matrix products and cuDNN (the LSTMs) must not
    use TF32 (10-bit mantissa): the comparisons with the CPU are at 1e-5."""
    dev = torch.device(DEVICE)
    if dev.type != "cuda":
        yield dev
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield dev
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast_dtype_or_skip(device, dtype):
    """Skip where this device's autocast does not do ``dtype`` (older torch on CPU: fp16)."""
    try:
        with torch.autocast(device.type, dtype=dtype):
            out = torch.mm(torch.ones(2, 2, device=device), torch.ones(2, 2, device=device))
    except (RuntimeError, AssertionError) as e:
        pytest.skip(f"torch.autocast({device.type!r}, {dtype}) is not supported here: {e}")
    if out.dtype != dtype:
        pytest.skip(f"torch.autocast({device.type!r}) does not run in {dtype} here")


# ---------------------------------------------------------------- the criterion: device == CPU


def criterion_case(vocab=1000, dim=16, positions=300, seed=0):
    """Hidden states h, output embedding W (rows ~3.4 apart: q_n spans clipped and not at
    sigma 0.2), bias and targets with padding. vocab > 2 blocks of row_argmax, not a multiple."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(positions, dim, generator=g)
    w = 0.6 * torch.randn(vocab, dim, generator=g)
    b = 0.1 * torch.randn(vocab, generator=g)
    target = torch.randint(4, vocab, (positions,), generator=g)
    target[-7:] = PAD
    return h, w, b, target


def skd_loss_and_grads(mode, h, w, b, target, device, lowp=None):
    """skd_loss (alpha * lambda = 0.6, sigma 0.2) of logits = h W^T + b on ``device``: the
    loss per position, the NLL, the statistics, and the gradients of the mean loss wrt the
    logits and W. ``lowp``: compute the logits in that dtype (autocast) instead of float32."""
    h, target = h.to(device), target.to(device)
    w = w.to(device).requires_grad_()
    b = b.to(device).requires_grad_()
    with torch.autocast(device.type, dtype=lowp or torch.float32, enabled=lowp is not None):
        logits = F.linear(h, w, b)
    logits.retain_grad()
    lprobs = F.log_softmax(logits.float(), dim=-1)
    neighbours = nearest_neighbours(w, 10, exclude=PAD)[0] if mode == "topk" else None
    loss, nll, stats = skd_loss(lprobs, target, w, sigma=0.2, skd_weight=0.6, qn_max=0.5,
                                ignore_index=PAD, reduce=False, soft_targets=mode,
                                neighbours=neighbours)
    (loss.sum() / target.ne(PAD).sum()).backward()
    return loss.detach(), nll.detach(), stats, logits.grad, w.grad


@compares_devices
@pytest.mark.parametrize("mode", MODES)
def test_skd_loss_and_gradients_equal_cpu_float32(mode, device):
    case = criterion_case()
    ref = skd_loss_and_grads(mode, *case, torch.device("cpu"))
    got = skd_loss_and_grads(mode, *case, device)
    # float32 on both: only the order of summation differs (1e-5 absolute on values of order 1;
    # the W gradient sums 300 positions, hence the relative term)
    for name, a, b in (("loss", got[0], ref[0]), ("nll_loss", got[1], ref[1]),
                       ("grad wrt logits", got[3], ref[3]), ("grad wrt W", got[4], ref[4])):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5, msg=name)
    for key in ("match", "qn_count", "clipped"):
        assert int(got[2][key]) == int(ref[2][key]), key
    assert float(got[2]["qn"]) == pytest.approx(float(ref[2]["qn"]), rel=1e-5)
    if mode == "predicted":  # q_n on both sides of the clip (topk, full: K or V words' mass)
        assert 0 < int(ref[2]["clipped"]) < int(ref[2]["qn_count"])


def criterion_sample(device):
    """6 sentences of 40 random words of a 1000-symbol vocabulary (TinyDecoderModel(vocab=1000)'s),
    the last ending in 9 pads, on ``device``."""
    sample = make_sample(vocab=1000, bsz=6, tgt_len=40, pad_last=9, seed=0)
    return apply_to_sample(lambda t: t.to(device), sample)


def criterion_step(mode, model, sample):
    at_update(model, 10).train()  # alpha = 0.54
    criterion = make_criterion(vocab=1000, skd_sigma=0.2, skd_warmup_updates=2,
                               skd_alpha_step=0.06, skd_soft_targets=mode)
    loss, sample_size, log = criterion(model, sample)
    (loss / sample_size).backward()
    grads = {name: p.grad.detach().cpu() for name, p in model.named_parameters()}
    return loss.detach().cpu(), log, grads


@compares_devices
@pytest.mark.parametrize("mode", MODES)
def test_criterion_forward_logs_and_gradients_equal_cpu_float32(mode, device):
    model = TinyDecoderModel(vocab=1000, dim=16, seed=0)
    ref_loss, ref_log, ref_grads = criterion_step(mode, copy.deepcopy(model),
                                                  criterion_sample("cpu"))
    loss, log, grads = criterion_step(mode, model.to(device), criterion_sample(device))
    # float32 on both sides: 1e-5 relative on summed losses, 1e-5 absolute on gradients
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert log["skd_alpha"] == ref_log["skd_alpha"] > 0
    for key in ("skd_positions", "skd_match", "skd_qn_count", "skd_clipped", "ntokens"):
        assert int(log[key]) == int(ref_log[key]), key
    for key in ("nll_loss", "skd_qn_sum"):
        assert float(log[key]) == pytest.approx(float(ref_log[key]), rel=1e-5), key
    for name, g in ref_grads.items():  # the output embedding W is out.weight
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-5, msg=name)


# ---------------------------------------------------------------- fp16 / bf16


def float64_soft_targets(mode, w, target, pred=None, neighbours=None, sigma=0.2):
    """The reference, in float64 from ``w``'s values: for ``predicted`` the distances
    d(W_t, W_n) and q_n = exp(-sigma d) (unclipped, 0 where n == t); for ``topk`` / ``full``
    the unclipped non-target mass 1 - 1/sum_k exp(-sigma d(W_t, W_k)) over the candidates (t
    and its neighbours but t again and padding; every word but padding)."""
    w, target = w.double().cpu(), target.cpu()
    if mode == "predicted":
        pred = pred.cpu()
        distance = (w[target] - w[pred]).norm(dim=-1)
        return distance, torch.exp(-sigma * distance).masked_fill(pred.eq(target), 0.0)
    if mode == "topk":
        candidates = torch.cat([target[:, None], neighbours.cpu()[target]], dim=1)
        u = torch.exp(-sigma * (w[target][:, None] - w[candidates]).norm(dim=-1))
        others = candidates[:, 1:]
        u[:, 1:] = u[:, 1:].masked_fill(others.eq(target[:, None]) | others.eq(PAD), 0.0)
    else:
        u = torch.exp(-sigma * torch.cdist(w[target], w))
        u[:, PAD] = 0.0
    u[torch.arange(len(target)), 0 if mode == "topk" else target] = 1.0
    return 1.0 - 1.0 / u.sum(-1)


@pytest.mark.parametrize("precision", list(HALF))
@pytest.mark.parametrize("mode", MODES)
def test_soft_targets_and_distances_stay_float32_in_half_precision(mode, precision, device):
    """Inputs as --fp16 / --bf16 give them at worst (W and the log-probabilities in half
    precision; fairseq's models return float32 log-probabilities, W is half): the distances,
    q_n (predicted) and the non-target mass (topk, full) are float32 and computed in float32:
    equal to a float64 computation from the same half-precision values to 1e-5, which half
    precision arithmetic (2^-9 bf16, 2^-12 fp16 relative) does not meet. The loss is close to
    the float32 loss of the same inputs."""
    dtype = HALF[precision]
    h, w, b, target = (t.to(device) for t in criterion_case())
    lprobs32 = F.log_softmax(F.linear(h, w, b), dim=-1)
    w_half, lprobs_half = w.to(dtype), lprobs32.to(dtype)
    keep = target.ne(PAD)

    # q_max 1: the clip at 0.5 would hide the values of most q_n and of every mass here
    pred, qn, stats = predicted_soft_targets(lprobs_half, target, w_half, 0.2, 1.0, keep)
    assert qn.dtype == stats["distance"].dtype == torch.float32
    assert output_embedding_distances(w_half, target, pred).dtype == torch.float32
    distance, qn64 = float64_soft_targets("predicted", w_half, target, pred)
    torch.testing.assert_close(stats["distance"].cpu().double(), distance, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qn.cpu().double(), qn64.masked_fill(~keep.cpu(), 0.0),
                               rtol=1e-5, atol=1e-6)
    if mode != "predicted":
        # sigma where the mass is far from 0 and 1 (topk: K = 10 words; full: 999)
        sigma = {"topk": 1.0, "full": 2.0}[mode]
        neighbours = nearest_neighbours(w_half, 10, exclude=PAD)[0] if mode == "topk" else None
        if mode == "topk":
            _, mass, _ = topk_soft_target_loss(lprobs_half, target, w_half, neighbours, sigma,
                                               0.6, qn_max=1.0, padding_idx=PAD)
        else:
            _, mass, _ = full_soft_target_loss(lprobs_half, target, w_half, sigma, 0.6,
                                               qn_max=1.0, padding_idx=PAD)
        assert mass.dtype == torch.float32
        expected = float64_soft_targets(mode, w_half, target, neighbours=neighbours, sigma=sigma)
        assert 0.2 < expected[keep.cpu()].mean() < 0.8
        torch.testing.assert_close(mass.cpu().double()[keep.cpu()], expected[keep.cpu()],
                                   rtol=1e-5, atol=1e-6)

    neighbours = nearest_neighbours(w, 10, exclude=PAD)[0] if mode == "topk" else None
    kwargs = dict(sigma=0.2, skd_weight=0.6, ignore_index=PAD, soft_targets=mode,
                  neighbours=neighbours)
    loss32, _, _ = skd_loss(lprobs32, target, w, **kwargs)
    loss_half, _, _ = skd_loss(lprobs_half, target, w_half, **kwargs)
    # Only the rounding of the inputs differs (lp ~ -7 and W rounded to 8 (bf16) / 11 (fp16)
    # significant bits; the per-position losses are then summed in that dtype). Measured on
    # CPU: 3e-3 (bf16) and 5e-4 (fp16) relative on the summed loss; allowed: 1e-2 and 2e-3.
    rel = {torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert float(loss_half) == pytest.approx(float(loss32), rel=rel)


def lm_sample(dictionary, lengths=(12, 7, 15, 3, 9, 11, 14, 5), seed=2, device="cpu"):
    """A batch as language_modeling --sample-break-mode eos gives it: right-padded."""
    sents = random_sentences(dictionary, lengths, torch.Generator().manual_seed(seed))
    pad, eos = dictionary.pad(), dictionary.eos()
    src = data_utils.collate_tokens(sents, pad, eos, left_pad=False, move_eos_to_beginning=True)
    tgt = data_utils.collate_tokens(sents, pad, eos, left_pad=False)
    return {"net_input": {"src_tokens": src.to(device),
                          "src_lengths": torch.tensor(lengths).to(device) + 1},
            "target": tgt.to(device), "ntokens": int(tgt.ne(pad).sum()),
            "nsentences": len(lengths)}


def fit(model, sample, steps=10):
    """A few float32 Adam steps on the sample: peaked logits, a loss well below log(V)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
        loss = F.nll_loss(lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1),
                          ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("how", ["autocast", "model cast"])
@pytest.mark.parametrize("precision", list(HALF))
@pytest.mark.parametrize("mode", MODES)
def test_criterion_loss_in_half_precision_matches_float32(mode, precision, how, device):
    """The skd_lstm_lm_tiny model through the criterion: under torch.autocast (what fairseq's
    --amp does, in fp16) and with the model cast to the dtype (what --fp16 and --bf16 do)."""
    dtype = HALF[precision]
    if how == "autocast":
        autocast_dtype_or_skip(device, dtype)
    dictionary = make_dictionary(200)
    model = build_model("skd_lstm_lm_tiny", dictionary, seed=1, dropout=0.0).to(device)
    sample = lm_sample(dictionary, device=device)
    fit(model, sample)  # logits of a trained model, not the near-uniform ones of the init
    cfg = SelfKDCrossEntropyConfig(sentence_avg=False, skd_sigma=0.1, skd_warmup_updates=0,
                                   skd_alpha_step=0.5, skd_soft_targets=mode)
    criterion = SelfKDCrossEntropyCriterion(cfg, Task(dictionary))
    at_update(model, 0).train()  # alpha = 0.5; the SKD term is training only
    loss32, _, log32 = criterion(model, sample)
    try:
        if how == "autocast":
            with torch.autocast(device.type, dtype=dtype):
                loss, _, log = criterion(model, sample)
        else:
            loss, _, log = criterion(copy.deepcopy(model).to(dtype), sample)
    except RuntimeError as e:  # a CPU without an LSTM kernel for that dtype (oneDNN, fp16)
        if device.type == "cuda":
            raise
        pytest.skip(f"the LSTM in {dtype} ({how}) does not run on this CPU: {str(e)[:80]}")
    loss, loss32 = loss.detach(), loss32.detach()
    assert loss.dtype == torch.float32  # fairseq's log-probabilities are float32
    assert log["skd_alpha"] == 0.5 and "skd_qn_sum" in log
    # The model's matrix products and LSTM run with 8 (bf16) / 11 (fp16) significant bits;
    # the log-probabilities, distances and q_n in float32. Measured on CPU: at most 2e-4 (bf16)
    # and 3e-5 (fp16) relative. A position whose argmax flips between two near-tied words
    # moves the loss by up to ~0.3% (alpha q_n (lp_t - lp_n) of one of 84 positions): allowed
    # 1e-2 (bf16) and 2e-3 (fp16).
    rel = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert float(loss) == pytest.approx(float(loss32), rel=rel)
    assert float(log["nll_loss"]) == pytest.approx(float(log32["nll_loss"]), rel=rel)


# ---------------------------------------------------------------- row_argmax


def argmax_cases():
    g = torch.Generator().manual_seed(3)
    cases = {}
    for vocab in (7, 255, 256, 513, 1000, 33278):  # below, at and not a multiple of the block
        cases[f"random V={vocab}"] = torch.randn(9, vocab, generator=g)
    ties = torch.randn(8, 1000, generator=g)
    ties[0, [5, 300, 999]] = 10.0           # across blocks: the first wins
    ties[1, [255, 256]] = 10.0              # at a block boundary
    ties[2, [998, 999]] = 10.0              # in the last, partial block
    ties[3] = 0.0                           # all equal: 0
    ties[4, [40, 41, 42]] = 10.0            # within one block
    ties[5, 768:] = 10.0                    # a whole partial block tied
    cases["ties V=1000"] = ties
    rounded = torch.randn(16, 5000, generator=g).to(torch.float16).float()  # many exact ties
    cases["rounded to fp16 V=5000"] = (rounded * 4).round() / 4
    return cases


@pytest.mark.parametrize("name", list(argmax_cases()))
def test_row_argmax_equals_torch_argmax(name, device):
    x = argmax_cases()[name]
    expected = x.argmax(-1)  # CPU: the first maximum of each row
    on_device = x.to(device)
    assert torch.equal(row_argmax(on_device).cpu(), expected)
    assert torch.equal(torch.argmax(on_device, -1).cpu(), expected)
    assert torch.equal(row_argmax(on_device.t().contiguous().t()).cpu(), expected)  # strided
    for dtype in (torch.float16, torch.bfloat16):  # what --fp16 / --bf16 logits look like
        low = x.to(dtype)
        assert torch.equal(row_argmax(low.to(device)).cpu(), low.argmax(-1))


# ---------------------------------------------------------------- incremental == full decoding


def lm_lprobs(model, tokens, incremental):
    if not incremental:
        return F.log_softmax(model(tokens)[0].float(), dim=-1)
    return incremental_lprobs(model, tokens)[0]


@compares_devices
@pytest.mark.parametrize("arch", ["skd_lstm_lm_tiny", "skd_lstm_lm"])
@pytest.mark.parametrize("tied", [False, True], ids=["separate", "tied"])
def test_lm_incremental_equals_full_decoding(arch, tied, device):
    dictionary = make_dictionary(50)
    model = build_model(arch, dictionary, seed=1, share_decoder_input_output_embed=tied).eval()
    tokens = lm_sample(dictionary)["net_input"]["src_tokens"]
    words = tokens.ne(dictionary.pad())
    with torch.no_grad():
        cpu_full = lm_lprobs(model, tokens, incremental=False)
        model.to(device)
        full = lm_lprobs(model, tokens.to(device), incremental=False).cpu()
        steps = lm_lprobs(model, tokens.to(device), incremental=True).cpu()
    # float32, no TF32 (the device fixture): cuDNN's whole-sequence and step-by-step LSTM
    # differ only in the order of summation
    torch.testing.assert_close(steps[words], full[words], atol=1e-5, rtol=0)
    torch.testing.assert_close(full[words], cpu_full[words], atol=1e-5, rtol=0)


def nmt_batch(dictionary, src_lengths=(9, 6, 3, 8, 1), tgt_lengths=(4, 7, 2, 5, 8), seed=2):
    g = torch.Generator().manual_seed(seed)
    pad, eos = dictionary.pad(), dictionary.eos()
    src = random_sentences(dictionary, src_lengths, g)
    return (data_utils.collate_tokens(src, pad, eos, left_pad=True),
            torch.tensor([len(s) for s in src]),
            data_utils.collate_tokens(random_sentences(dictionary, tgt_lengths, g), pad, eos,
                                      left_pad=False, move_eos_to_beginning=True))


def nmt_lprobs(model, src, lengths, prev, incremental):
    if not incremental:
        logits, extra = model(src, lengths, prev)
        return F.log_softmax(logits.float(), dim=-1), extra["attn"][0]
    return incremental_lprobs(model, prev, model.encoder(src, lengths))


@compares_devices
@pytest.mark.parametrize("arch", ["skd_bahdanau_tiny", "skd_bahdanau_small"])
def test_nmt_incremental_equals_full_decoding(arch, device):
    dictionary = make_dictionary(60)
    model = build_model(arch, dictionary, seed=1).eval()
    batch = nmt_batch(dictionary)
    with torch.no_grad():
        cpu_full, cpu_attn = nmt_lprobs(model, *batch, incremental=False)
        model.to(device)
        batch = [t.to(device) for t in batch]
        full, attn = (t.cpu() for t in nmt_lprobs(model, *batch, incremental=False))
        steps, step_attn = (t.cpu() for t in nmt_lprobs(model, *batch, incremental=True))
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(step_attn, attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, cpu_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn, cpu_attn, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- fairseq-train / -generate

# fairseq's --bf16 "implies --tpu" (fairseq/options.py sets args.tpu): the trainer then asks
# torch_xla for its device and fails on a GPU or CPU. This runs fairseq_cli.train exactly as
# fairseq-train does, with that one implication undone, so --bf16 trains on this device: the
# model cast to bfloat16, fairseq's FP16Optimizer with float32 master weights, no loss scaling.
BF16_TRAIN = """
import sys
from fairseq_cli.train import main
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils

args = options.parse_args_and_arch(options.get_training_parser(), sys.argv[1:])
assert args.bf16 and args.tpu, "fairseq no longer implies --tpu with --bf16: use fairseq-train"
args.tpu = False
distributed_utils.call_main(convert_namespace_to_omegaconf(args), main)
"""

UPDATES = 200
SKD = ["--criterion", "self_kd_cross_entropy", "--skd-warmup-updates", 50, "--skd-alpha-step",
       0.005, "--skd-sigma", 0.1]
COMMON = ["--optimizer", "adam", "--lr", 0.005, "--required-batch-size-multiple", 1,
          "--max-update", UPDATES, "--log-interval", 10, "--disable-validation",
          "--no-epoch-checkpoints", "--dropout", 0.1]
TASKS = {
    "lm": [*LM_TASK, "--arch", "skd_lstm_lm_tiny", "--max-tokens", 400],
    "nmt": ["--task", "translation", "--arch", "skd_bahdanau_tiny", "--max-tokens", 500],
}
# (task, precision) runs; --amp is fairseq's autocast in fp16 with fp32 weights
RUNS = [("lm", "fp16"), ("lm", "bf16"), ("lm", "amp"), ("nmt", "fp16"), ("nmt", "bf16")]
OVERFLOW = "gradient overflow detected, ignoring gradient"
MAX_OVERFLOWS = 20  # dynamic loss scaling halves the scale per overflow from 128: a few at most


@pytest.fixture(scope="module")
def data_bins(tmp_path_factory):
    lm = preprocess_lm(make_lm_data(tmp_path_factory.mktemp("cuda_lm"), n_train=2000))
    nmt = preprocess_translation(make_reverse_translation_data(
        tmp_path_factory.mktemp("cuda_nmt"), n_train=2000))
    return {"lm": lm, "nmt": nmt}


def sample_break_mode_args(task):
    """--sample-break-mode eos needs np.compat (fairseq's token_block_dataset uses
    np.compat.long), which numpy 2 hides: with such a numpy the LM trains with 'complete'
    (whole sentences too, several per sample) instead."""
    import numpy

    if task != "lm" or hasattr(numpy, "compat"):
        return []
    return ["--sample-break-mode", "complete"]


TEARDOWN_ABORT = "terminate called without an active exception"


def finished(returncode, out):
    """fairseq-train finished: exit 0, or an abort (SIGABRT) in the interpreter's teardown
    after it logged 'done training'. We saw that abort on CPU in about one run in three of
    fairseq-train with skd_lstm_lm_tiny (fp32 and bf16), after the last update and log line;
    it is a teardown problem, not one of training, and is reported as a warning."""
    if returncode == 0:
        return True
    if returncode in (-6, 134) and TEARDOWN_ABORT in out and "done training" in out:
        warnings.warn(f"fairseq-train aborted after 'done training' ({TEARDOWN_ABORT})")
        return True
    return False


@pytest.fixture(scope="module")
def trained(data_bins, tmp_path_factory, device):
    """Each (task, precision) of RUNS trained once, on demand: (stdout + stderr, save dir)."""
    done = {}

    def get(task, precision):
        if (task, precision) in done:
            return done[task, precision]
        if device.type != "cuda" and precision != "bf16":
            pytest.skip(f"fairseq's --{precision} needs CUDA")
        save_dir = tmp_path_factory.mktemp(f"{task}_{precision}")
        args = [*TASKS[task], *sample_break_mode_args(task), *SKD, *COMMON,
                *(["--no-save"] if task == "lm" else [])]
        if precision == "bf16":
            cmd = [sys.executable, "-c", BF16_TRAIN, data_bins[task], "--user-dir", USER_DIR,
                   "--save-dir", save_dir, "--num-workers", 0, "--seed", 1, "--log-format",
                   "json", "--no-progress-bar", "--bf16", *args,
                   *(["--cpu"] if device.type == "cpu" else [])]
            proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        else:
            proc = train(data_bins[task], save_dir, *args, f"--{precision}", cpu=False,
                         check=False)
        out = proc.stdout + proc.stderr
        assert finished(proc.returncode, out), f"exit {proc.returncode}\n{out[-6000:]}"
        done[task, precision] = (out, save_dir)
        return done[task, precision]

    return get


@pytest.mark.parametrize("task,precision", RUNS, ids=[f"{t}-{p}" for t, p in RUNS])
def test_mixed_precision_training(task, precision, trained):
    out, _ = trained(task, precision)
    logs = parse_json_logs(out, "train_inner")
    assert len(logs) >= UPDATES // 10 - 1, out[-3000:]
    assert int(logs[-1]["num_updates"]) == UPDATES
    losses = [float(r["loss"]) for r in logs]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2 - 0.5, losses  # bits per token
    overflows = out.count(OVERFLOW)
    assert overflows < MAX_OVERFLOWS, f"{overflows} overflow-and-skip updates"
    last = logs[-1]
    for key in ("skd_alpha", "skd_qn", "skd_clip", "skd_match", "skd_sigma"):
        assert key in last, (key, last)
    assert float(last["skd_alpha"]) > 0
    if precision == "fp16":
        assert "loss_scale" in last
    print(f"{task} --{precision}: loss {losses[0]:.3f} -> {losses[-1]:.3f} bits, "
          f"{overflows} overflow skips, alpha {last['skd_alpha']}, q_n {last['skd_qn']}")


def test_generate_fp16_translates_every_test_sentence(trained, data_bins, device):
    precision = "fp16" if device.type == "cuda" else "bf16"  # bf16: its checkpoint, on CPU
    _, save_dir = trained("nmt", precision)
    gen = run("fairseq-generate", data_bins["nmt"], "--user-dir", USER_DIR, "--path",
              save_dir / "checkpoint_last.pt", "--gen-subset", "test", "--beam", 5,
              "--batch-size", 16, "--required-batch-size-multiple", 1, "--num-workers", 0,
              *(["--fp16"] if device.type == "cuda" else ["--cpu"]))
    out = gen.stdout + gen.stderr
    hypotheses = re.findall(r"^H-(\d+)\t", out, flags=re.M)
    assert sorted(map(int, hypotheses)) == list(range(40)), out[-3000:]
    assert "Translated 40 sentences" in out
