"""rdrop_cross_entropy through fairseq-skd-train on tiny data: every architecture the recipes
train, the translation runs validating with --eval-bleu (which fairseq's R-Drop criterion makes
fail); the validation NLL in train.log is the checkpoint's own NLL on the validation set
(fairseq's R-Drop criterion logs twice it); 2 workers train what 1 worker with --update-freq 2
trains."""

import math

import pytest
import torch

from fairseq_skd.evaluation.scoring import load_model_and_task, load_subset, score_subset

from helpers import (FAIRSEQ_ARCHS, LM_TASK, by_update, last_weights, parse_json_logs,
                     train_workers)

TRAIN = ["--optimizer", "adam", "--lr", 0.005, "--max-tokens", 600, "--max-epoch", 2,
         "--required-batch-size-multiple", 1, "--cpu", "--seed", 1, "--num-workers", 0,
         "--no-progress-bar", "--log-format", "json", "--log-interval", 1,
         "--criterion", "rdrop_cross_entropy", "--rdrop-alpha", 5]
LOGGED = ("loss", "nll_loss", "rdrop_kl_loss")
EVAL_BLEU = ["--eval-bleu", "--eval-bleu-args", '{"beam": 1}']
ARCHS = {  # the recipes' models: --model lstm (the paper's) and transformer
    "skd_lstm_lm_tiny": ("lm", ["--arch", "skd_lstm_lm_tiny", *LM_TASK]),
    "transformer_lm": ("lm", [*FAIRSEQ_ARCHS["transformer_lm"], *LM_TASK]),
    "skd_bahdanau_tiny": ("mt", ["--arch", "skd_bahdanau_tiny", "--task", "translation",
                                 *EVAL_BLEU]),
    "transformer": ("mt", [*FAIRSEQ_ARCHS["transformer"], "--task", "translation", *EVAL_BLEU]),
}


def checkpoint_nll(checkpoint, data_bin, kind):
    """The NLL per target token (base 2) of ``checkpoint`` on the validation set, teacher-forced,
    dropout off."""
    model, task = load_model_and_task(str(checkpoint), str(data_bin), kind)
    scores, _, _ = score_subset(model, task, load_subset(task, str(data_bin), "valid"))
    return sum(nll for _, nll in scores.values()) / sum(n for n, _ in scores.values()) / math.log(2)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_recipe_architecture_trains_and_validates_with_its_plain_nll(arch, tiny_lm, tiny_mt,
                                                                           tmp_path):
    kind, flags = ARCHS[arch]
    data_bin = (tiny_lm if kind == "lm" else tiny_mt)[1]
    log = train_workers(data_bin, tmp_path, *flags, *TRAIN, "--dropout", 0.3)
    inner = by_update(log).values()
    assert len(inner) > 5 and all(float(r["rdrop_kl_loss"]) > 0 for r in inner)
    valid = parse_json_logs(log, "valid")
    assert len(valid) == 2 and all(r["valid_loss"] == r["valid_nll_loss"] for r in valid)
    assert "valid_rdrop_kl_loss" not in valid[-1]  # validation runs the batch once
    if kind == "mt":
        assert all("valid_bleu" in r for r in valid)
    # the last validation scored the last checkpoint: its NLL, not twice it
    expected = checkpoint_nll(tmp_path / "checkpoint_last.pt", data_bin, kind)
    assert float(valid[-1]["valid_nll_loss"]) == pytest.approx(expected, abs=1.5e-3)


def test_two_workers_equal_one_worker_with_update_freq_2(tiny_lm, tmp_path):
    """Without dropout (2 workers draw other masks than 1 worker does), so the two passes agree
    and the KL is 0: the losses, summed over the workers' copies and normalised once, are the
    same, and so are the weights to float rounding. Not bitwise: each sentence and its copy go
    through one matrix product of the doubled batch, whose CPU kernels may round rows apart
    depending on where the batch lies in memory, so the copies' outputs can differ in their last
    bits and leave a KL gradient of that size (once in seven runs: the logs agreed at every
    update, the final weights not bitwise)."""
    data_bin = tiny_lm[1]
    flags = ["--arch", "skd_lstm_lm_tiny", *LM_TASK, *TRAIN, "--max-tokens", 300, "--dropout", 0,
             "--update-epoch-batch-itr", "True"]
    two = by_update(train_workers(data_bin, tmp_path / "two", *flags, nproc=2))
    one = by_update(train_workers(data_bin, tmp_path / "one", *flags, "--update-freq", 2))
    assert sorted(one) == sorted(two) and len(two) >= 6
    for update in two:
        assert [one[update].get(k) for k in LOGGED] == [two[update].get(k) for k in LOGGED], update
        assert float(two[update].get("rdrop_kl_loss", 0)) == 0  # logged only when above 0
    w1, w2 = last_weights(tmp_path / "one"), last_weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6), (k, (w1[k] - w2[k]).abs().max())
