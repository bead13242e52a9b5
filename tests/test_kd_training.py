"""kd_cross_entropy through fairseq-train (fairseq-skd-train) on tiny data: training from the
cached top-K equals training with the teacher online, 2 workers equal 1 worker with
--update-freq 2, a resumed run equals an uninterrupted one, a teacher of other dictionaries and
a cache of other data or settings are refused before training; students of the plugin's two
architectures and of fairseq's transformer, each with its teacher."""

import shutil

import pytest
import torch

import fairseq_skd  # noqa: F401  (torch's safe loader reads the checkpoints)

from helpers import LM_TASK, USER_DIR, by_update, last_weights, run, train_workers

TRAIN = ["--optimizer", "adam", "--lr", 0.005, "--max-tokens", 300, "--max-epoch", 3,
         "--required-batch-size-multiple", 1, "--cpu", "--seed", 1, "--num-workers", 0,
         "--dropout", 0, "--update-epoch-batch-itr", "True", "--no-progress-bar",
         "--log-format", "json", "--log-interval", 1, "--criterion", "kd_cross_entropy",
         "--kd-alpha", 0.5]
LOGGED = ("loss", "nll_loss", "kd_loss", "kd_teacher_nll", "kd_agree")


def train(data_bin, save_dir, *extra, nproc=1, arch=("--arch", "skd_lstm_lm_tiny", *LM_TASK)):
    """A student trained with ``extra`` flags; {update: train_inner record}."""
    return by_update(train_workers(data_bin, save_dir, *arch, *TRAIN, *extra, nproc=nproc))


@pytest.fixture(scope="module")
def online_top4(tiny_lm, tmp_path_factory):
    _, data_bin, teacher = tiny_lm
    save_dir = tmp_path_factory.mktemp("online_top4")
    return save_dir, train(data_bin, save_dir, "--kd-teacher", teacher, "--kd-topk", 4,
                           "--kd-temperature", 2)


def test_training_from_the_cache_equals_training_with_the_teacher_online(online_top4, tiny_lm,
                                                                         tmp_path):
    _, data_bin, teacher = tiny_lm
    cache = tmp_path / "cache"
    out = run("fairseq-skd-cache-teacher", data_bin, "--teacher", teacher, "--topk", 4,
              "--temperature", 2, "--out", cache, "--cpu")
    assert "train: 200 sentences" in out.stdout
    cached = train(data_bin, tmp_path / "cached", "--kd-teacher-cache", cache, "--kd-topk", 4,
                   "--kd-temperature", 2)
    online_dir, online = online_top4
    assert sorted(cached) == sorted(online) and len(online) == 18  # 6 updates x 3 epochs
    for update, record in online.items():
        for key in LOGGED:  # the cache keeps the probabilities in float16
            assert float(cached[update][key]) == pytest.approx(float(record[key]), abs=2e-3), (update, key)
    w_online, w_cached = last_weights(online_dir), last_weights(tmp_path / "cached")
    for name, value in w_online.items():
        torch.testing.assert_close(w_cached[name], value, rtol=1e-2, atol=1e-3)


def test_two_workers_equal_one_worker_with_update_freq_2(online_top4, tiny_lm, tmp_path):
    _, data_bin, teacher = tiny_lm
    kd = ["--kd-teacher", teacher, "--kd-topk", 4, "--kd-temperature", 2]
    two = train(data_bin, tmp_path / "two", *kd, nproc=2)
    one = train(data_bin, tmp_path / "one", *kd, "--update-freq", 2)
    assert sorted(one) == sorted(two) and len(two) == 9  # 3 updates of 2 x 300 tokens x 3 epochs
    for update in two:
        assert {k: one[update][k] for k in LOGGED} == {k: two[update][k] for k in LOGGED}, update
    w1, w2 = last_weights(tmp_path / "one"), last_weights(tmp_path / "two")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_resumed_run_equals_an_uninterrupted_one(online_top4, tiny_lm, tmp_path):
    _, data_bin, teacher = tiny_lm
    reference_dir, reference = online_top4
    save_dir = tmp_path / "resumed"
    kd = ["--kd-teacher", teacher, "--kd-topk", 4, "--kd-temperature", 2]
    train(data_bin, save_dir, *kd, "--max-epoch", 1)  # later flags win: stop after epoch 1
    resumed = train(data_bin, save_dir, *kd)  # resumes from checkpoint_last.pt to epoch 3
    assert "Loaded checkpoint" in (save_dir / "train.log").read_text()
    for update, record in reference.items():
        assert {k: resumed[update][k] for k in LOGGED} == {k: record[k] for k in LOGGED}, update
    w_ref, w = last_weights(reference_dir), last_weights(save_dir)
    assert all(torch.equal(w_ref[k], w[k]) for k in w_ref)
    # the teacher is not in the student's checkpoint: only the student's own parameters
    assert w.keys() == torch.load(reference_dir / "checkpoint1.pt", map_location="cpu")["model"].keys()
    assert not [k for k in torch.load(save_dir / "checkpoint_last.pt", map_location="cpu")
                if "teacher" in k]


def refused(data_bin, save_dir, *extra):
    out = run("fairseq-train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir,
              "--arch", "skd_lstm_lm_tiny", *LM_TASK, *TRAIN, *extra, check=False)
    assert out.returncode != 0 and not (save_dir / "checkpoint1.pt").exists()
    return out.stdout + out.stderr


def test_a_teacher_of_other_dictionaries_is_refused_naming_sizes_and_first_difference(
        tiny_lm, tmp_path):
    _, data_bin, teacher = tiny_lm
    other = tmp_path / "teacher"
    shutil.copytree(teacher.parent, other)
    words = (other / "dict.txt").read_text().splitlines()
    words[2], words[3] = words[3], words[2]  # the same words, two of them swapped
    (other / "dict.txt").write_text("\n".join(words) + "\n")
    message = refused(data_bin, tmp_path / "run", "--kd-teacher", other / teacher.name)
    first, second = (w.split()[0] for w in words[2:4])
    assert (f"have {len(words)} and {len(words)} words; the first difference is word 3: "
            f"'{first}' against '{second}'") in message
    (other / "dict.txt").write_text("\n".join(words[:-1]) + "\n")  # one word fewer
    message = refused(data_bin, tmp_path / "run", "--kd-teacher", other / teacher.name)
    assert f"have {len(words) - 1} and {len(words)} words" in message


def test_a_cache_of_other_data_or_settings_is_refused(tiny_lm, tmp_path):
    _, data_bin, teacher = tiny_lm
    cache = tmp_path / "cache"
    run("fairseq-skd-cache-teacher", data_bin, "--teacher", teacher, "--topk", 4, "--out", cache,
        "--cpu")
    message = refused(data_bin, tmp_path / "run", "--kd-teacher-cache", cache, "--kd-topk", 8)
    assert "was made with topk 4, this training needs 8" in message
    message = refused(data_bin, tmp_path / "run", "--kd-teacher-cache", cache, "--kd-topk", 4,
                      "--kd-temperature", 2)
    assert "was made with temperature 1.0, this training needs 2.0" in message
    other = tmp_path / "bin"
    shutil.copytree(data_bin, other)
    with open(other / "train.bin", "ab") as f:
        f.write(b"\0\0")
    message = refused(other, tmp_path / "run", "--kd-teacher-cache", cache, "--kd-topk", 4)
    assert f"was made from other data: {other / 'train.bin'} is not the file it was made from" in message


@pytest.mark.parametrize("student", ["skd_bahdanau_tiny", "transformer"])
def test_a_translation_student_learns_from_its_teacher(student, tiny_mt, tmp_path):
    """An skd_bahdanau teacher distilled into the plugin's NMT model and into fairseq's
    transformer (1 layer), online with the whole distribution."""
    _, data_bin, teacher = tiny_mt
    arch = ["--task", "translation", "--arch", student]
    if student == "transformer":
        arch += ["--encoder-layers", 1, "--decoder-layers", 1, "--encoder-embed-dim", 32,
                 "--decoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64,
                 "--decoder-ffn-embed-dim", 64, "--encoder-attention-heads", 2,
                 "--decoder-attention-heads", 2]
    records = train(data_bin, tmp_path / "student", "--kd-teacher", teacher, "--max-epoch", 2,
                    arch=arch)
    kd = [float(r["kd_loss"]) for r in records.values()]
    assert len(kd) > 5 and all(k >= 0 for k in kd) and kd[-1] < kd[0]  # it moves towards the teacher
    teacher_nll = {float(r["kd_teacher_nll"]) for r in records.values()}
    assert all(0 < nll < 10 for nll in teacher_nll)
