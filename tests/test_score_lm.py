"""fairseq-skd-score-lm: per-sentence NLL (</s> included) against an independent forward pass
and against fairseq-eval-lm; every sentence scored once; clear errors."""

import csv
import json
import math
import re

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.models import ARCH_MODEL_REGISTRY

import fairseq_skd  # noqa: F401
from fairseq_skd.cli import score
from fairseq_skd.evaluation import scoring

from helpers import FAIRSEQ_ARCHS, LM_TASK, USER_DIR, make_lm_data, preprocess_lm, run, train

ONE_EPOCH = ["--optimizer", "adam", "--lr", 0.003, "--max-tokens", 600,
             "--required-batch-size-multiple", 1, "--max-epoch", 1, "--no-epoch-checkpoints",
             "--no-last-checkpoints"]
ARCHS = {
    "lstm_lm": FAIRSEQ_ARCHS["lstm_lm"],
    "transformer_lm": FAIRSEQ_ARCHS["transformer_lm"],
    # the plugin's LM with its own preset sizes
    "skd_lstm_lm": ["--arch", "skd_lstm_lm"],
}


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    data_dir = make_lm_data(tmp_path_factory.mktemp("lm"), n_train=200)
    return data_dir, preprocess_lm(data_dir)


@pytest.fixture(scope="module")
def checkpoints(lm_data, tmp_path_factory):
    _, data_bin = lm_data
    cache = {}

    def get(arch):
        if arch not in cache:
            assert arch in ARCH_MODEL_REGISTRY, f"architecture {arch} is not registered"
            save_dir = tmp_path_factory.mktemp(arch)
            train(data_bin, save_dir, *LM_TASK, *ARCHS[arch], *ONE_EPOCH,
                  "--criterion", "cross_entropy")
            cache[arch] = save_dir / "checkpoint_best.pt"
        return cache[arch]

    return get


def run_score(data_bin, checkpoint, tmp_path, subset="test", *extra, capsys=None):
    """The console script as a subprocess, or ``main()`` in this process when given capsys."""
    tsv, summary = tmp_path / f"{subset}.tsv", tmp_path / f"{subset}.json"
    argv = [data_bin, "--path", checkpoint, "--subset", subset, "--cpu", "--output", tsv,
            "--json", summary, *extra]
    if capsys is None:
        stdout = run("fairseq-skd-score-lm", *argv).stdout
    else:
        score.main_lm([str(a) for a in argv])
        stdout = capsys.readouterr().out
    with open(tsv) as f:
        rows = {int(r["index"]): (int(r["tokens"]), float(r["nll"]))
                for r in csv.DictReader(f, delimiter="\t")}
    return rows, json.loads(summary.read_text()), stdout


def load_model(checkpoint, data_bin):
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_bin)})
    return models[0].eval(), task


def sentence_logits(model, task, sentence):
    """Teacher forcing on ``</s> w_1..w_n`` -> ``w_1..w_n </s>``, one sentence, no batching:
    the logits [n + 1 x V] in float64 and the targets [n + 1]."""
    d = task.target_dictionary
    words = d.encode_line(sentence, add_if_not_exist=False, append_eos=False).long()
    assert d.unk() not in words.tolist()
    source = torch.cat([words.new([d.eos()]), words]).unsqueeze(0)
    target = torch.cat([words, words.new([d.eos()])])
    with torch.no_grad():
        logits = model(source, src_lengths=torch.tensor([source.size(1)]))[0]
    return logits[0].double(), target


def independent_nll(model, task, sentence):
    logits, target = sentence_logits(model, task, sentence)
    lprobs = torch.log_softmax(logits, dim=-1)
    return -lprobs.gather(-1, target.unsqueeze(-1)).sum().item(), target.numel()


@pytest.mark.parametrize("arch", ["lstm_lm", "transformer_lm", "skd_lstm_lm"])
def test_per_sentence_nll_matches_forward_pass(arch, lm_data, checkpoints, tmp_path, capsys):
    data_dir, data_bin = lm_data
    checkpoint = checkpoints(arch)
    # a small batch budget so that several batches, padding and length sorting are exercised
    rows, summary, stdout = run_score(data_bin, checkpoint, tmp_path, "test", "--max-tokens", 50,
                                      capsys=capsys)
    sentences = (data_dir / "test.txt").read_text().split("\n")[:-1]
    assert sorted(rows) == list(range(len(sentences)))
    model, task = load_model(checkpoint, data_bin)
    for index in (0, 1, 7, len(sentences) - 1):
        nll, n = independent_nll(model, task, sentences[index])
        assert rows[index][0] == n == len(sentences[index].split()) + 1
        assert rows[index][1] == pytest.approx(nll, rel=1e-5, abs=1e-5)
    total_nll = sum(v for _, v in rows.values())
    total_tokens = sum(n for n, _ in rows.values())
    assert summary["subset"] == "test"
    assert summary["sentences"] == len(sentences)
    assert summary["tokens"] == total_tokens == sum(len(s.split()) + 1 for s in sentences)
    assert summary["nll_per_sentence"] == pytest.approx(total_nll / len(sentences))
    assert summary["ppl"] == pytest.approx(math.exp(total_nll / total_tokens))
    assert summary["checkpoint"] == str(checkpoint)
    assert f"{len(sentences)} sentences" in stdout and f"{summary['nll_per_sentence']:.2f}" in stdout


def test_matches_fairseq_eval_lm(lm_data, checkpoints, tmp_path):
    """Summary: mean sentence NLL = loss(base 2) x ln 2 x tokens / sentences; per sentence: the
    sum of eval-lm's --output-word-probs (natural log, </s> included) on each line. Runs the
    installed console script."""
    _, data_bin = lm_data
    checkpoint = checkpoints("lstm_lm")
    rows, summary, _ = run_score(data_bin, checkpoint, tmp_path, "valid")
    proc = run("fairseq-eval-lm", data_bin, "--path", checkpoint, "--user-dir", USER_DIR, "--cpu",
               "--gen-subset", "valid", "--sample-break-mode", "eos", "--tokens-per-sample", 64,
               "--max-tokens", 600, "--required-batch-size-multiple", 1, "--output-word-probs")
    log = proc.stdout + proc.stderr
    evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", log).group(1).replace(",", ""))
    assert evaluated == summary["tokens"] > 0  # eval-lm can silently evaluate 0 tokens
    loss_base2 = float(re.search(r"Loss \(base 2\): ([\d.]+)", log).group(1))
    expected = loss_base2 * math.log(2) * summary["tokens"] / summary["sentences"]
    rounding = 5e-5 * math.log(2) * summary["tokens"] / summary["sentences"]  # 4 printed decimals
    assert summary["nll_per_sentence"] == pytest.approx(expected, abs=rounding + 1e-6)

    word_probs = {}
    for m in re.finditer(r"fairseq_cli\.eval_lm\s*[:|]\s*(\d+) (.*\[-?[\d.]+\].*)$", log, re.M):
        word_probs[int(m.group(1))] = [float(x) for x in re.findall(r"\[(-?[\d.]+)\]", m.group(2))]
    assert sorted(word_probs) == sorted(rows)
    for index, probs in word_probs.items():
        assert rows[index][0] == len(probs)
        assert rows[index][1] == pytest.approx(-sum(probs), abs=1e-6 * len(probs) + 1e-5)


def test_missing_checkpoint_or_subset_is_a_clear_error(lm_data, checkpoints, tmp_path, capsys):
    _, data_bin = lm_data
    missing = tmp_path / "nowhere" / "checkpoint_best.pt"
    with pytest.raises(SystemExit) as e:
        score.main_lm([str(data_bin), "--path", str(missing), "--cpu"])
    assert "checkpoint not found" in str(e.value.code) and str(missing) in str(e.value.code)

    with pytest.raises(SystemExit) as e:
        score.main_lm([str(data_bin), "--path", str(checkpoints("lstm_lm")), "--subset", "test7", "--cpu"])
    message = str(e.value.code)
    assert "subset 'test7' not found" in message and str(data_bin / "test7") in message

    with pytest.raises(SystemExit) as e:
        score.main_lm([str(tmp_path), "--path", str(checkpoints("lstm_lm")), "--cpu"])
    assert "dict.txt" in str(e.value.code) and str(tmp_path) in str(e.value.code)


class _Sizes:
    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)


def test_incomplete_scoring_fails_loudly():
    dataset = _Sizes([3, 4, 5])
    scoring.check_complete({0: (3, 1.0), 1: (4, 2.0), 2: (5, 3.0)}, dataset, "test")
    with pytest.raises(scoring.ScoreError, match=r"scored 2 of 3 sentences of 'test'.*\[1\]"):
        scoring.check_complete({0: (3, 1.0), 2: (5, 3.0)}, dataset, "test")
    with pytest.raises(scoring.ScoreError, match="sentence 1: scored 3 tokens"):
        scoring.check_complete({0: (3, 1.0), 1: (3, 2.0), 2: (5, 3.0)}, dataset, "test")


def subset_logits(model, task, text_file):
    """Every sentence of a text file (one a line) teacher-forced: float64 logits [N x V] and
    targets [N] of all its tokens, </s> included."""
    pairs = [sentence_logits(model, task, line) for line in text_file.read_text().splitlines()]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def nll_per_token(logits, target, temperature):
    lprobs = torch.log_softmax(logits / temperature, dim=-1)
    return -lprobs.gather(1, target[:, None]).mean().item()


def golden_section_temperature(logits, target, lo=0.05, hi=20.0, steps=100):
    """The T minimising the NLL per token, by golden-section search on 1/T (where the NLL is
    convex) over [1/hi, 1/lo]."""
    a, b = 1 / hi, 1 / lo
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(steps):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if nll_per_token(logits, target, 1 / c) < nll_per_token(logits, target, 1 / d):
            b = d
        else:
            a = c
    return 2 / (a + b)


def ece_15_bins(logits, target, temperature):
    """Expected calibration error: 15 equal-width bins of the argmax probability (the last
    holding p = 1), each weighted by its share of tokens."""
    probs = torch.softmax(logits / temperature, dim=-1)
    confidence, pred = probs.max(-1)
    correct = pred.eq(target).double()
    bins = (confidence * 15).floor().long().clamp(max=14)
    ece = 0.0
    for b in range(15):
        in_bin = bins.eq(b)
        if in_bin.any():
            gap = correct[in_bin].mean() - confidence[in_bin].mean()
            ece += in_bin.double().mean().item() * abs(gap.item())
    return ece


def test_calibrated_nll_and_ece_use_the_temperature_fitted_on_the_valid_set(tiny_lm, tmp_path,
                                                                            capsys):
    """The temperature fitted independently on the valid subset (golden-section search of the
    float64 NLL), then the test NLL per token and ECE at that T, against the tool's JSON. The
    tolerances are far below what a temperature fitted on the test set, or T = 1, change."""
    text, data_bin, checkpoint = tiny_lm
    _, summary, _ = run_score(data_bin, checkpoint, tmp_path, "test", capsys=capsys)
    model, task = load_model(checkpoint, data_bin)
    valid = subset_logits(model, task, text / "valid.txt")
    test = subset_logits(model, task, text / "test.txt")
    temperature = golden_section_temperature(*valid)
    assert summary["calibration_subset"] == "valid"
    assert summary["tokens"] == len(test[1])
    assert summary["temperature"] == pytest.approx(temperature, rel=1e-4)
    assert summary["calibrated_nll_per_token"] == pytest.approx(
        nll_per_token(*test, temperature), abs=1e-5)
    assert summary["calibrated_ece"] == pytest.approx(ece_15_bins(*test, temperature), abs=1e-5)
    # the uncalibrated ones: T = 1
    assert summary["nll_per_token"] == pytest.approx(nll_per_token(*test, 1.0), abs=1e-5)
    assert summary["ece"] == pytest.approx(ece_15_bins(*test, 1.0), abs=1e-5)
    # The test can tell the right temperature from a wrong one: the tiny LM's T fitted on the
    # test set (~1.11) and T = 1 give numbers more than 1e-3 away from those at its valid T
    # (~0.98); 5e-4 is fifty times the tolerance.
    for wrong in (golden_section_temperature(*test), 1.0):
        assert abs(nll_per_token(*test, wrong) - nll_per_token(*test, temperature)) > 5e-4
        assert abs(ece_15_bins(*test, wrong) - ece_15_bins(*test, temperature)) > 5e-4
