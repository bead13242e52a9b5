"""fairseq-skd-score-mt: teacher-forced NLL of a translation checkpoint, with the diagnostics and
the calibrated NLL that fairseq-skd-score-lm gives for language models."""

import json

import pytest
import torch
from fairseq import checkpoint_utils

import fairseq_skd  # noqa: F401
from fairseq_skd.evaluation.diagnostics import PredictionDiagnostics
from fairseq_skd.evaluation.scoring import DIAGNOSTICS

from helpers import run


def test_teacher_forced_nll_and_diagnostics_match_a_forward_pass_per_sentence(tiny_mt, tmp_path):
    text, data_bin, checkpoint = tiny_mt
    out = tmp_path / "score.json"
    run("fairseq-skd-score-mt", data_bin, "--path", checkpoint, "--subset", "test", "--cpu",
        "--output", tmp_path / "score.tsv", "--json", out)
    summary = json.loads(out.read_text())
    rows = [line.split("\t") for line in (tmp_path / "score.tsv").read_text().splitlines()[1:]]

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_bin)})
    model = models[0].eval()
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    sources = (text / "test.in").read_text().splitlines()
    targets = (text / "test.out").read_text().splitlines()
    diagnostics, total, tokens = PredictionDiagnostics(), 0.0, 0
    for index, (source, reference) in enumerate(zip(sources, targets)):
        src = src_dict.encode_line(source, add_if_not_exist=False).long()[None]
        tgt = tgt_dict.encode_line(reference, add_if_not_exist=False).long()[None]
        prev = torch.cat([tgt.new([[tgt_dict.eos()]]), tgt[:, :-1]], dim=1)  # </s> w_1 .. w_n
        with torch.no_grad():
            out_net = model(src, torch.tensor([src.size(1)]), prev)
            lprobs = model.get_normalized_probs(out_net, log_probs=True).float()
        nll = -lprobs.gather(-1, tgt[..., None]).sum().item()
        assert int(rows[index][1]) == tgt.numel()
        assert float(rows[index][2]) == pytest.approx(nll, abs=1e-4)
        diagnostics.update(lprobs[0], tgt[0])
        total, tokens = total + nll, tokens + tgt.numel()
    assert summary["sentences"] == len(sources) and summary["tokens"] == tokens
    assert summary["nll_per_token"] == pytest.approx(total / tokens, rel=1e-5)
    expected = diagnostics.result()
    for key in DIAGNOSTICS:
        assert summary[key] == pytest.approx(expected[key], abs=1e-5), key
    assert summary["calibration_subset"] == "valid" and summary["temperature"] > 0
    assert len(summary["reliability"]) == 15


@pytest.mark.parametrize("kind,fixture", [("mt", "tiny_mt"), ("lm", "tiny_lm")])
def test_a_fixed_sample_of_the_training_set_scores_the_same_sentences_as_the_whole(
        kind, fixture, request):
    from fairseq_skd.evaluation.scoring import score

    _, data_bin, checkpoint = request.getfixturevalue(fixture)
    common = dict(subset="train", calibration_subset=None, cpu=True, qn_sigma=None)
    whole, all_scores = score(str(data_bin), str(checkpoint), kind, **common)
    sample, scores = score(str(data_bin), str(checkpoint), kind, max_sentences=50, **common)
    again, _ = score(str(data_bin), str(checkpoint), kind, max_sentences=50, **common)
    assert sample["sentences"] == 50 and sample["subset_sentences"] == whole["sentences"] == 200
    assert len(scores) == 50 and set(scores) <= set(all_scores)  # keyed by line in the subset
    assert sorted(scores) != list(range(50))  # drawn across the subset, not its first lines
    for line, (tokens, nll) in scores.items():
        assert tokens == all_scores[line][0] and nll == pytest.approx(all_scores[line][1], abs=1e-5)
    assert sample["nll_per_token"] == pytest.approx(
        sum(v for _, v in scores.values()) / sum(n for n, _ in scores.values()), rel=1e-6)
    assert again["nll_per_token"] == sample["nll_per_token"]  # the same sample every time
    bigger, _ = score(str(data_bin), str(checkpoint), kind, max_sentences=500, **common)
    assert bigger["sentences"] == 200 and bigger["nll_per_token"] == whole["nll_per_token"]


def test_max_sentences_refuses_a_number_below_one(tiny_mt, tmp_path):
    _, data_bin, checkpoint = tiny_mt
    out = run("fairseq-skd-score-mt", data_bin, "--path", checkpoint, "--max-sentences", "0",
              check=False)
    assert out.returncode == 2 and "--max-sentences: a number of sentences >= 1, not '0'" in out.stderr
