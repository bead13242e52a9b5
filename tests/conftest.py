"""Fixtures shared by several test modules: tiny trained checkpoints of the plugin's two models,
trained once per session through fairseq-skd-train (so their dictionaries sit beside them)."""

import pytest

from helpers import (LM_TASK, USER_DIR, make_lm_data, make_reverse_translation_data, preprocess_lm,
                     preprocess_translation, run)

TINY_TRAINING = ["--optimizer", "adam", "--lr", 0.005, "--max-tokens", 600, "--max-epoch", 2,
                 "--required-batch-size-multiple", 1, "--criterion", "self_kd_cross_entropy",
                 "--skd-warmup-updates", 5, "--skd-alpha-step", 0.1, "--cpu", "--seed", 1,
                 "--num-workers", 0, "--no-progress-bar", "--log-format", "json", "--log-interval", 5]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """(data folder with train/valid/test.txt, DATA_BIN, checkpoint_best.pt) of skd_lstm_lm_tiny,
    with TensorBoard event files in the data folder's sibling tensorboard/."""
    root = tmp_path_factory.mktemp("tiny_lm")
    data_bin = preprocess_lm(make_lm_data(root / "text", n_train=200))
    save_dir = root / "checkpoints"
    run("fairseq-skd-train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir,
        *LM_TASK, "--arch", "skd_lstm_lm_tiny", "--tensorboard-logdir", root / "tensorboard",
        *TINY_TRAINING)
    return root / "text", data_bin, save_dir / "checkpoint_best.pt"


@pytest.fixture(scope="session")
def tiny_mt(tmp_path_factory):
    """(data folder with train/valid/test.in/.out, DATA_BIN, checkpoint_best.pt) of
    skd_bahdanau_tiny on the reverse-and-rename task."""
    root = tmp_path_factory.mktemp("tiny_mt")
    data_bin = preprocess_translation(make_reverse_translation_data(root / "text", n_train=200))
    save_dir = root / "checkpoints"
    run("fairseq-skd-train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir,
        "--task", "translation", "--arch", "skd_bahdanau_tiny", *TINY_TRAINING)
    return root / "text", data_bin, save_dir / "checkpoint_best.pt"
