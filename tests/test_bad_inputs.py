"""Bad input to the project's own commands: a clear error (or refusal) that names the flag or file
and says what to do, before any work, and nothing already written changed. One case per item."""

import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from helpers import BIN, USER_DIR

REPO = Path(__file__).resolve().parents[1]


def snapshot(*folders):
    """{path: (size, mtime)} of every file under ``folders``."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns)
            for folder in folders for p in Path(folder).rglob("*") if p.is_file()}


def refused(argv, *named, cwd=None, watch=(), code=None):
    """Run a command that must fail: non-zero exit (``code`` if given), every string of
    ``named`` in its message, and no file under ``watch`` changed."""
    before = snapshot(*watch)
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0, message[-3000:]
    if code is not None:
        assert proc.returncode == code, message[-3000:]
    for text in named:
        assert str(text) in message, (text, message[-3000:])
    assert "Traceback" not in message, message[-3000:]
    assert snapshot(*watch) == before
    return message


# --- fairseq-skd-score-lm / fairseq-skd-score-mt -------------------------------------------------


@pytest.fixture
def lm_copy(tiny_lm, tmp_path):
    """A copy of the tiny LM's DATA_BIN and checkpoint folder to damage."""
    _, data_bin, checkpoint = tiny_lm
    shutil.copytree(data_bin, tmp_path / "bin")
    shutil.copytree(checkpoint.parent, tmp_path / "ckpt")
    return tmp_path / "bin", tmp_path / "ckpt" / checkpoint.name


def score_lm(data_bin, checkpoint, *extra):
    return [BIN / "fairseq-skd-score-lm", data_bin, "--path", checkpoint, "--cpu", *extra]


def test_score_lm_refuses_a_dictionary_of_another_size(lm_copy):
    data_bin, checkpoint = lm_copy
    with open(data_bin / "dict.txt", "a") as f:
        f.write("extra_word 1\n")
    refused(score_lm(data_bin, checkpoint), data_bin / "dict.txt", checkpoint,
            watch=[checkpoint.parent])


def test_score_lm_refuses_the_same_size_dictionary_with_the_words_in_another_order(lm_copy):
    data_bin, checkpoint = lm_copy
    lines = (data_bin / "dict.txt").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (data_bin / "dict.txt").write_text("\n".join(lines) + "\n")
    refused(score_lm(data_bin, checkpoint), data_bin / "dict.txt", "not the dictionary",
            "fairseq-preprocess --srcdict", watch=[checkpoint.parent])


def test_score_lm_refuses_a_translation_checkpoint(tiny_lm, tiny_mt):
    _, data_bin, _ = tiny_lm
    refused(score_lm(data_bin, tiny_mt[2]), tiny_mt[2], "fairseq-skd-score-mt")


def test_score_mt_refuses_a_language_model_checkpoint(tiny_lm, tiny_mt):
    refused([BIN / "fairseq-skd-score-mt", tiny_mt[1], "--path", tiny_lm[2], "--cpu"],
            tiny_lm[2], "fairseq-skd-score-lm")


def test_score_lm_refuses_a_json_in_a_missing_folder_before_scoring(tiny_lm, tmp_path):
    _, data_bin, checkpoint = tiny_lm
    out = tmp_path / "missing" / "score.json"
    refused(score_lm(data_bin, checkpoint, "--json", out), "--json", tmp_path / "missing")


def corrupt_a_tensor(checkpoint):
    """Flip one byte of the largest stored tensor of a torch checkpoint (a zip of uncompressed
    members), in place: the archive stays readable, the member's CRC no longer matches.
    Returns the member's name."""
    with zipfile.ZipFile(checkpoint) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    assert member.compress_type == zipfile.ZIP_STORED and "/data/" in member.filename
    content = bytearray(checkpoint.read_bytes())
    header = member.header_offset  # local header: 30 bytes, then the name and the extra field
    name_length, extra_length = struct.unpack("<HH", content[header + 26 : header + 30])
    content[header + 30 + name_length + extra_length + member.file_size // 2] ^= 0x40
    checkpoint.write_bytes(bytes(content))
    return member.filename


@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes", "corrupt member"])
def test_score_lm_names_a_damaged_checkpoint(damage, lm_copy):
    data_bin, checkpoint = lm_copy
    content = checkpoint.read_bytes()
    if damage == "corrupt member":  # loads (torch checks no CRC), with a wrong weight
        member = corrupt_a_tensor(checkpoint)
        refused(score_lm(data_bin, checkpoint), checkpoint,
                f"is not a usable checkpoint: its member {member} is corrupt")
        return
    checkpoint.write_bytes({"truncated": content[: len(content) // 2], "empty": b"",
                            "random bytes": os.urandom(4096)}[damage])
    refused(score_lm(data_bin, checkpoint), checkpoint, "checkpoint")


@pytest.mark.parametrize("damage", ["index", "data"])
def test_score_lm_names_damaged_binarized_data(damage, lm_copy):
    data_bin, checkpoint = lm_copy
    if damage == "index":
        (data_bin / "test.idx").write_bytes(os.urandom(100))
    else:
        (data_bin / "test.bin").write_bytes((data_bin / "test.bin").read_bytes()[:50])
    refused(score_lm(data_bin, checkpoint), f"'test' in {data_bin}", "binarize the text again")


# --- fairseq-skd-bleu ------------------------------------------------------------------------------


def test_bleu_refuses_an_unknown_detokenizer_language(tmp_path):
    (tmp_path / "gen.txt").write_text("H-0\t-0.1\ta b\n")
    (tmp_path / "ref.txt").write_text("a b\n")
    refused([BIN / "fairseq-skd-bleu", "--generate-output", tmp_path / "gen.txt", "--reference",
             tmp_path / "ref.txt", "--detokenize-lang", "xx"], "--detokenize-lang", "'xx'", code=2)


# --- fairseq-skd-train -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,named", [
    (["--nproc", "0"], "argument --nproc: must be at least 1, got 0"),
    (["--nproc", "two"], "argument --nproc: takes a whole number of workers, got 'two'"),
    (["--nproc", "2", "--cpu", "--ddp-backend", "c10d"], "--ddp-backend c10d"),
    (["--nproc", "2", "--cpu", "--distributed-world-size", "4"], "--distributed-world-size 4"),
])
def test_train_launcher_refuses_settings_that_cannot_work(argv, named, tmp_path):
    refused([BIN / "fairseq-skd-train", *argv, "data-bin", "--save-dir", tmp_path / "run"], named)
    assert not (tmp_path / "run").exists()


# --- kd_cross_entropy and fairseq-skd-cache-teacher ------------------------------------------------


def test_a_teacher_that_does_not_exist_is_a_usage_error(tiny_lm, tmp_path):
    _, data_bin, _ = tiny_lm
    refused([BIN / "fairseq-train", data_bin, "--user-dir", USER_DIR, "--task", "language_modeling",
             "--arch", "skd_lstm_lm_tiny", "--criterion", "kd_cross_entropy", "--kd-teacher",
             tmp_path / "nope.pt", "--save-dir", tmp_path / "run"],
            f"argument --kd-teacher: must name an existing file: '{tmp_path / 'nope.pt'}' is not one",
            code=2)
    assert not (tmp_path / "run").exists()


def test_the_cache_tool_refuses_a_damaged_teacher_before_any_work(tiny_lm, tmp_path):
    _, data_bin, teacher = tiny_lm
    damaged = tmp_path / "teacher.pt"
    damaged.write_bytes(teacher.read_bytes()[:1000])
    refused([BIN / "fairseq-skd-cache-teacher", data_bin, "--teacher", damaged, "--out",
             tmp_path / "cache"], f"--teacher {damaged}: it is not a complete torch checkpoint")
    assert not (tmp_path / "cache").exists()


# --- the recipes ------------------------------------------------------------------------------------

LM_RECIPE = REPO / "recipes" / "lm" / "run.sh"
MT_RECIPE = REPO / "recipes" / "mt" / "run.sh"


def recipe(script, *args):
    return ["bash", script, *args]


@pytest.fixture
def lm_corpus(tmp_path):
    corpus = tmp_path / "my_text"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"{split}.txt").write_text("a b c\nd e\n")
    return corpus


@pytest.fixture
def mt_corpus(tmp_path):
    corpus = tmp_path / "my_pairs"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("en", "tr"):
            (corpus / f"{split}.{lang}").write_text("a b c\nd e\n")
    return corpus


@pytest.mark.parametrize("argv,named", [
    (["--seeds", "-1"], "--seeds takes whole numbers from 0 to 2**32 - 1 (fairseq's range), not '-1'"),
    (["--seeds", "4294967296"], "not '4294967296'"),
    (["--seeds", "1 2 1"], "--seeds 1 2 1: each seed once"),
    (["--seeds", " "], "--seeds is empty"),
    (["--variants", "skd typo"], "--variants: unknown variant 'typo'"),
])
def test_recipe_refuses_bad_seeds_and_variants_before_writing_anything(argv, named, tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "kept.txt").write_text("written by an earlier run\n")
    refused(recipe(LM_RECIPE, "--dataset", "synthetic", "--smoke", "--exp-dir", tmp_path / "exp",
                   "--prep-dir", tmp_path / "data", *argv), named, watch=[tmp_path])
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("argv,named", [
    (["--task", "both_of_them"], "--task is lm, mt or both, not 'both_of_them'"),
    (["--out", "{file}/study"], "is a file, not a folder"),
])
def test_the_main_job_refuses_bad_options_before_writing_anything(argv, named, tmp_path):
    (tmp_path / "file").write_text("not a folder\n")
    argv = [arg.replace("{file}", str(tmp_path / "file")) for arg in argv]
    refused([REPO / "run.sh", *argv], named, watch=[tmp_path])


def test_recipe_refuses_a_stage_range_that_selects_nothing(tmp_path):
    out = tmp_path / "exp"
    refused(recipe(LM_RECIPE, "--dataset", "ptb", "--stage", "4", "--stop-stage", "2",
                   "--exp-dir", out), "--stage 4 --stop-stage 2 selects no stage")
    assert not out.exists()


def test_recipe_refuses_skd_flags_after_the_double_dash(lm_corpus, tmp_path):
    refused(recipe(LM_RECIPE, "--corpus", lm_corpus, "--prep-dir", tmp_path / "data", "--",
                   "--skd-sigma", "0.3"), "--skd-sigma", "--skd-args")
    assert not (tmp_path / "data").exists()


def test_recipe_refuses_flags_fairseq_train_would_refuse_before_any_stage(lm_corpus, tmp_path):
    refused(recipe(LM_RECIPE, "--corpus", lm_corpus, "--prep-dir", tmp_path / "data",
                   "--variants", "baseline skd", "--skd-args", "--skd-sigma -1", "--", "--bogus"),
            "the baseline run's fairseq-train command line is refused", "--bogus",
            "the skd run's fairseq-train command line is refused")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("damage,named", [
    ("missing split", "test.txt not found"),
    ("empty file", "valid.txt is empty"),
])
def test_lm_recipe_checks_the_corpus_files_first(damage, named, lm_corpus, tmp_path):
    if damage == "missing split":
        (lm_corpus / "test.txt").unlink()
    else:
        (lm_corpus / "valid.txt").write_text("\n")
    refused(recipe(LM_RECIPE, "--corpus", lm_corpus, "--prep-dir", tmp_path / "data"),
            named, lm_corpus)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("damage,pair,named", [
    ("mismatched lines", "en-tr", "valid.tr has 3: not a parallel pair"),
    ("none", "en-de", "train.de not found"),  # a language code without its files
    ("none", "en-xx", "'xx' is not an ISO 639-1 language code"),
    ("empty file", "en-tr", "test.en is empty"),
])
def test_mt_recipe_checks_the_corpus_files_first(damage, pair, named, mt_corpus, tmp_path):
    if damage == "mismatched lines":
        (mt_corpus / "valid.tr").write_text("a\nb\nc\n")
    elif damage == "empty file":
        (mt_corpus / "test.en").write_text("")
    if pair == "en-xx":
        for split in ("train", "valid", "test"):
            shutil.copy(mt_corpus / f"{split}.tr", mt_corpus / f"{split}.xx")
    refused(recipe(MT_RECIPE, "--pair", pair, "--corpus", mt_corpus, "--prep-dir", tmp_path / "data"),
            named)
    assert not (tmp_path / "data").exists()


# --- fairseq-skd-average ----------------------------------------------------------------------------


@pytest.mark.parametrize("case,named", [
    ("output is an input", "is one of the inputs: writing the average there would replace that checkpoint"),
    ("repeated input", "twice"),
])
def test_average_refuses_to_overwrite_an_input_or_count_one_twice(case, named, tiny_mt, tmp_path):
    folder = tmp_path / "mt"
    shutil.copytree(tiny_mt[2].parent, folder)
    first, second = folder / "checkpoint1.pt", folder / "checkpoint2.pt"
    if case == "output is an input":
        argv = ["--inputs", first, second, "--output", second]
    else:
        argv = ["--inputs", first, folder / "." / "checkpoint1.pt", "--output", folder / "avg.pt"]
    refused([BIN / "fairseq-skd-average", *argv], named, watch=[folder])
    assert not (folder / "avg.pt").exists()


# --- fairseq-skd-train's pre-flight checks: before any worker starts, nothing written -------------


def launcher(data_bin, save_dir, *extra):
    return [BIN / "fairseq-skd-train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir,
            "--task", "language_modeling", "--sample-break-mode", "eos", "--arch",
            "skd_lstm_lm_tiny", "--criterion", "self_kd_cross_entropy", "--max-epoch", 1,
            "--cpu", *extra]


@pytest.fixture
def resumable(lm_copy, tmp_path):
    """The tiny LM's data and its checkpoint folder (checkpoint1.pt, 2.pt, _best, _last), copied."""
    data_bin, checkpoint = lm_copy
    return data_bin, checkpoint.parent


def test_a_restore_file_that_does_not_exist_is_refused(resumable, tmp_path):
    data_bin, _ = resumable
    refused(launcher(data_bin, tmp_path / "run", "--restore-file", tmp_path / "nope.pt"),
            f"--restore-file {tmp_path / 'nope.pt'}: no such file (fairseq-train would train "
            "from scratch", code=1)
    assert not (tmp_path / "run").exists()


def test_a_damaged_restore_file_is_refused(resumable, tmp_path):
    data_bin, folder = resumable
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"\x00" * 100)
    refused(launcher(data_bin, tmp_path / "run", "--restore-file", damaged),
            f"--restore-file {damaged}: it is not a complete torch checkpoint", code=1)


def test_resuming_on_data_of_another_dictionary_of_the_same_size_is_refused(resumable, tmp_path):
    data_bin, folder = resumable
    words = (data_bin / "dict.txt").read_text().splitlines()
    words[0], words[1] = words[1], words[0]
    (data_bin / "dict.txt").write_text("\n".join(words) + "\n")
    first, second = (w.split()[0] for w in words[:2])
    refused(launcher(data_bin, folder), f"{data_bin / 'dict.txt'} is not the dictionary "
            f"{folder / 'checkpoint_last.pt'} was trained with",
            f"{len(words)} and {len(words)} words; the first difference is word 1: '{second}' "
            f"against '{first}'", code=1, watch=[folder])


def test_a_checkpoint_last_behind_another_checkpoint_is_refused(resumable):
    data_bin, folder = resumable
    shutil.copy(folder / "checkpoint1.pt", folder / "checkpoint_last.pt")
    refused(launcher(data_bin, folder), f"{folder / 'checkpoint_last.pt'} is at update",
            "would overwrite checkpoints further in training", code=1, watch=[folder])


@pytest.mark.parametrize("damage,named", [
    ("cut data", "has {size} bytes but its index train.idx describes"),
    ("garbage index", "train.idx is not a readable fairseq index"),
    ("empty dictionary", "dict.txt is an empty dictionary"),
    ("word id beyond the dictionary", "but {data}/dict.txt has"),
])
def test_binarized_data_is_checked_before_training(damage, named, resumable, tmp_path):
    data_bin, _ = resumable
    data = data_bin / "train.bin"
    if damage == "cut data":
        data.write_bytes(data.read_bytes()[:-2])
    elif damage == "garbage index":
        (data_bin / "train.idx").write_bytes(os.urandom(64))
    elif damage == "empty dictionary":
        (data_bin / "dict.txt").write_text("")
    else:  # the dictionary of another, smaller binarization
        (data_bin / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(3)))
    refused(launcher(data_bin, tmp_path / "run"),
            named.format(size=data.stat().st_size, data=data_bin), "binarize the text again", code=1)
    assert not (tmp_path / "run").exists()


def test_more_cpu_workers_than_cores_are_refused(resumable, tmp_path):
    data_bin, _ = resumable
    cores = len(os.sched_getaffinity(0))
    refused(launcher(data_bin, tmp_path / "run", "--nproc", cores + 1),
            f"--nproc {cores + 1} CPU workers on {cores} core(s)", code=1)


def test_an_adaptive_softmax_with_skd_is_refused_with_the_reason(resumable, tmp_path):
    data_bin, _ = resumable
    refused([BIN / "fairseq-skd-train", data_bin, "--user-dir", USER_DIR, "--save-dir",
             tmp_path / "run", "--task", "language_modeling", "--arch", "transformer_lm",
             "--criterion", "self_kd_cross_entropy", "--adaptive-softmax-cutoff", "10,20", "--cpu"],
            "--adaptive-softmax-cutoff with --criterion self_kd_cross_entropy: fairseq drops the "
            "adaptive softmax", code=1)


def test_skd_args_take_the_skd_criterions_flags_only(lm_corpus, tmp_path):
    refused(recipe(LM_RECIPE, "--corpus", lm_corpus, "--prep-dir", tmp_path / "data",
                   "--skd-args", "--skd-sigma auto --lr 0.5"),
            "--skd-args takes the SKD criterion's own flags only", "--lr is not one: flags for "
            "every variant go after --")
    assert not (tmp_path / "data").exists()


# --- a checkpoint given to a tool of the other task ---------------------------------------------
# (fairseq's own tools: the plugin's model refuses to build, and fairseq shows its traceback)


def refused_by_fairseq(argv, named):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == f"ValueError: {named}"


@pytest.mark.parametrize("tool, data, checkpoint, named", [
    ("fairseq-generate", "mt", "lm", "skd_lstm_lm is a language model and the task is "
     "TranslationTask: use it with --task language_modeling"),
    ("fairseq-eval-lm", "lm", "mt", "skd_bahdanau is a translation model and the task is "
     "LanguageModelingTask: use it with --task translation"),
])
def test_a_checkpoint_given_to_a_tool_of_the_other_task_is_refused_naming_the_task(
        tool, data, checkpoint, named, tiny_lm, tiny_mt):
    tiny = {"lm": tiny_lm, "mt": tiny_mt}
    refused_by_fairseq([BIN / tool, tiny[data][1], "--user-dir", USER_DIR, "--path",
                        tiny[checkpoint][2], "--cpu"], named)
