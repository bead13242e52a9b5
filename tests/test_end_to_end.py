"""fairseq-train with self_kd_cross_entropy on fairseq's own architectures, then
fairseq-generate / fairseq-eval-lm with --user-dir; resume; checkpoint loading safety."""

import argparse
import functools
import pickle
import re
import shutil

import numpy
import pytest
import torch
from fairseq import checkpoint_utils, options, tasks

import fairseq_skd  # noqa: F401
from fairseq_skd.modules.output_embedding import OutputEmbeddingNotFound, find_output_embedding

from helpers import (FAIRSEQ_ARCHS, LM_TASK, USER_DIR, make_lm_data,
                     make_reverse_translation_data, parse_json_logs, preprocess_lm,
                     preprocess_translation, run, train)

SKD = ["--criterion", "self_kd_cross_entropy", "--skd-warmup-updates", 3, "--skd-alpha-step", 0.2,
       "--skd-sigma", 0.1]
OPTIM = ["--optimizer", "adam", "--lr", 0.003, "--max-tokens", 600,
         "--required-batch-size-multiple", 1]

SHARED = ["--share-decoder-input-output-embed"]


@pytest.fixture(scope="module")
def mt_bin(tmp_path_factory):
    return preprocess_translation(make_reverse_translation_data(tmp_path_factory.mktemp("mt")))


@pytest.fixture(scope="module")
def lm_bin(tmp_path_factory):
    return preprocess_lm(make_lm_data(tmp_path_factory.mktemp("lm")))


def model_from_flags(data_bin, task_args, arch_args):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_bin), "--user-dir", USER_DIR, *map(str, task_args + arch_args)])
    task = tasks.setup_task(args)
    return task.build_model(args)


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
@pytest.mark.parametrize("arch", list(FAIRSEQ_ARCHS))
def test_output_embedding_found_for_fairseq_architectures(arch, shared, mt_bin, lm_bin):
    lm = arch.endswith("_lm")
    model = model_from_flags(lm_bin if lm else mt_bin,
                             LM_TASK if lm else ["--task", "translation"],
                             FAIRSEQ_ARCHS[arch] + (SHARED if shared else []))
    w = find_output_embedding(model)
    decoder = model.decoder
    assert w.shape == (len(decoder.dictionary), 32)  # FAIRSEQ_ARCHS: 32-dimensional
    if shared:
        assert w is decoder.embed_tokens.weight
    else:
        assert w is not decoder.embed_tokens.weight
        expected = decoder.fc_out.weight if arch.startswith("lstm") else decoder.output_projection.weight
        assert w is expected


def test_adaptive_softmax_is_refused_naming_the_flag(lm_bin):
    model = model_from_flags(lm_bin, LM_TASK,
                             FAIRSEQ_ARCHS["transformer_lm"] + ["--adaptive-softmax-cutoff", 8])
    with pytest.raises(OutputEmbeddingNotFound, match="--adaptive-softmax-cutoff"):
        find_output_embedding(model)


# --eval-bleu puts numpy arrays (its n-gram counts) into the checkpoint: they must load too.
EVAL_BLEU = ["--eval-bleu", "--eval-bleu-args", '{"beam": 1}', "--best-checkpoint-metric", "bleu",
             "--maximize-best-checkpoint-metric"]


# --label-smoothing: with SKD's alpha 0 and no label smoothing the training loss function is
# the NLL itself, and validation would report the NLL without the criterion's doing.
@pytest.mark.parametrize("arch,extra", [("lstm", ["--target-embed-noise", 0.1, "--label-smoothing",
                                                  0.1, *EVAL_BLEU]),
                                        ("transformer", SHARED)])
def test_translation_train_then_generate(arch, extra, mt_bin, tmp_path):
    proc = train(mt_bin, tmp_path, "--task", "translation", *FAIRSEQ_ARCHS[arch], *SKD, *OPTIM,
                 *extra, "--max-epoch", 3)
    inner = parse_json_logs(proc.stdout)
    assert float(inner[-1]["skd_alpha"]) > 0 and "skd_qn" in inner[-1] and "skd_clip" in inner[-1]
    valid = parse_json_logs(proc.stdout, "valid")[-1]
    assert valid["valid_loss"] == valid["valid_nll_loss"]  # validation reports the plain NLL

    gen = run("fairseq-generate", mt_bin, "--user-dir", USER_DIR, "--path",
              tmp_path / "checkpoint_last.pt", "--gen-subset", "test", "--beam", 3,
              "--batch-size", 16, "--required-batch-size-multiple", 1, "--cpu")
    hypotheses = [line for line in gen.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 40  # every test sentence translated
    assert "Translated 40 sentences" in gen.stdout + gen.stderr


@pytest.mark.parametrize("arch,extra", [("lstm_lm", []), ("transformer_lm", SHARED)])
def test_language_model_train_then_eval_lm(arch, extra, lm_bin, tmp_path):
    train(lm_bin, tmp_path, *LM_TASK, *FAIRSEQ_ARCHS[arch], *SKD, *OPTIM, *extra,
          "--target-embed-noise", 0.05, "--label-smoothing", 0.1, "--max-epoch", 2)
    test_tokens = sum(len(line.split()) + 1 for line in
                      (lm_bin.parent / "test.txt").read_text().splitlines())
    ev = run("fairseq-eval-lm", lm_bin, "--user-dir", USER_DIR, "--path",
             tmp_path / "checkpoint_best.pt", "--gen-subset", "test", "--sample-break-mode", "eos",
             "--tokens-per-sample", 64, "--batch-size", 16, "--cpu")
    evaluated = re.search(r"Evaluated (\d+) tokens", ev.stdout + ev.stderr)
    assert evaluated and int(evaluated.group(1)) == test_tokens
    # fairseq-validate reports the plain NLL as the loss (not the label-smoothed one), like
    # validation during training
    val = run("fairseq-validate", lm_bin, "--user-dir", USER_DIR, "--path",
              tmp_path / "checkpoint_best.pt", "--valid-subset", "test", *LM_TASK,
              "--max-tokens", 600, "--required-batch-size-multiple", 1, "--cpu")
    losses = re.findall(r"\| loss ([\d.]+) \| nll_loss ([\d.]+)", val.stdout + val.stderr)
    assert losses and losses[0][0] == losses[0][1]


def test_resume_from_an_earlier_checkpoint_matches_uninterrupted_run(lm_bin, tmp_path):
    # fairseq builds an epoch's batches with seed + the epoch the iterator was created in, and
    # reuses them: epoch 1's in an uninterrupted run, epoch 3's after resuming at epoch 3, so
    # the two see different batches. --update-epoch-batch-itr True rebuilds them every epoch,
    # which makes resuming exact (the recipes pass it too).
    args = ["--update-epoch-batch-itr", "True", *LM_TASK, *FAIRSEQ_ARCHS["lstm_lm"],
            "--criterion", "self_kd_cross_entropy",
            "--skd-warmup-updates", 16, "--skd-alpha-step", 0.05, "--target-embed-noise", 0.1,
            "--dropout", 0.2, *OPTIM, "--max-epoch", 4]
    full = parse_json_logs(train(lm_bin, tmp_path / "full", *args).stdout)
    per_epoch = max(int(r["num_updates"]) for r in full if r["epoch"] == 2)
    resumed_proc = train(lm_bin, tmp_path / "resumed", *args, "--restore-file",
                         tmp_path / "full" / "checkpoint2.pt")
    resumed = parse_json_logs(resumed_proc.stdout)
    assert "Loaded checkpoint" in resumed_proc.stdout
    after = [r for r in full if int(r["num_updates"]) > per_epoch]
    assert len(after) == len(resumed) > 0
    assert float(after[0]["skd_alpha"]) == 0 < float(after[-1]["skd_alpha"])  # alpha starts mid-run
    for a, b in zip(after, resumed):
        for key in ("num_updates", "loss", "nll_loss", "skd_alpha", "skd_qn", "skd_clip"):
            assert a[key] == b[key], (key, a, b)


def test_checkpoint_with_an_unexpected_global_is_refused(lm_bin, tmp_path):
    train(lm_bin, tmp_path, *LM_TASK, *FAIRSEQ_ARCHS["lstm_lm"], *SKD, *OPTIM, "--max-epoch", 1)
    good = tmp_path / "checkpoint_last.pt"
    state = checkpoint_utils.load_checkpoint_to_cpu(str(good))  # the safe loader accepts it
    assert state["cfg"]["model"].arch == "lstm_lm"  # an argparse.Namespace, allow-listed

    # a global outside the allow-list (here one that would call print on load) is refused
    state = torch.load(good, weights_only=False)  # our own file: trusted
    state["extra_state"]["payload"] = functools.partial(print, "code ran while loading")
    bad = tmp_path / "tampered.pt"
    torch.save(state, bad)
    with pytest.raises(pickle.UnpicklingError, match="functools.partial"):
        checkpoint_utils.load_checkpoint_to_cpu(str(bad))
    shutil.copy(bad, tmp_path / "checkpoint_last.pt")
    proc = run("fairseq-eval-lm", lm_bin, "--user-dir", USER_DIR, "--path", bad, "--cpu",
               "--sample-break-mode", "eos", "--tokens-per-sample", 64, check=False)
    assert proc.returncode != 0 and "code ran while loading" not in proc.stdout


def test_the_allow_list_outlives_another_librarys_numpy_allow_list(tmp_path):
    """transformers' Trainer allow-lists numpy's array globals around its own torch.load when it
    resumes, and removes them afterwards: fairseq checkpoints (an argparse.Namespace, --eval-bleu's
    int64 counts) still load in that process."""
    path = tmp_path / "state.pt"
    torch.save({"args": argparse.Namespace(arch="lstm"), "counts": numpy.arange(4)}, path)
    numpy_globals = [numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype,
                     type(numpy.arange(1).dtype)]
    with torch.serialization.safe_globals(numpy_globals):
        pass
    state = torch.load(path, weights_only=True)
    assert state["args"].arch == "lstm" and state["counts"].tolist() == [0, 1, 2, 3]


def test_bad_flag_value_stops_fairseq_train_with_a_usage_error(lm_bin, tmp_path):
    proc = run("fairseq-train", lm_bin, "--user-dir", USER_DIR, *LM_TASK, *FAIRSEQ_ARCHS["lstm_lm"],
               "--criterion", "self_kd_cross_entropy", "--skd-qn-max", 1.5, "--cpu",
               "--save-dir", tmp_path, check=False)
    assert proc.returncode == 2
    assert "argument --skd-qn-max: must be in (0, 1], got 1.5" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
