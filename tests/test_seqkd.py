"""Sequence-level knowledge distillation's data (recipes/utils/seqkd_data.sh, run by the MT
recipe before its seqkd and seqkd_skd variants train; docs/distillation.md): the training set of
the tiny reverse-and-rename corpus translated in two shards by a teacher trained one epoch at a
learning rate of 1e-7 (so nearly as initialised: its translations differ from sentence to
sentence, and most run to the length limit of 8 words the tests set). One target line per
training sentence, in training order, beside its source; the student's dictionaries and sources
byte for byte the data's; a killed run, run again, translates only the missing shard and gives
the same files as two shards translated at once; the report of empty hypotheses and of those at
the length limit, whose rule is fairseq's own; the variants' flags, and the LM recipe refusing
them. tests/test_docs.py runs the recipe's command of docs/distillation.md up to the student's
training."""

import hashlib
import importlib.util
import json
import subprocess

import pytest
import torch
from fairseq.data import data_utils

import fairseq_skd  # noqa: F401  (registers skd_bahdanau_tiny)
from helpers import (REPO, USER_DIR, build_model, generate, make_dictionary, random_sentences,
                     recipe_env, run)

SCRIPT = REPO / "recipes" / "utils" / "seqkd_data.sh"
SEQKD_PY = REPO / "recipes" / "utils" / "seqkd.py"
VARIANTS_PY = REPO / "fairseq_skd" / "variants.py"


def seqkd_module():
    spec = importlib.util.spec_from_file_location("seqkd", SEQKD_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(teacher, data_bin, out, *extra):
    """seqkd_data.sh: shards of 100 sentences, at most 8 words a translation."""
    return subprocess.run(["bash", str(SCRIPT), "--teacher", str(teacher), "--data-bin", str(data_bin),
                           "--out", str(out), "--source-lang", "in", "--target-lang", "out",
                           "--shard-size", "100", "--max-len-a", "0", "--max-len-b", "8", "--nj", "1",
                           *map(str, extra), "--", "--max-tokens", "300"],
                          cwd=REPO, env=recipe_env(), capture_output=True, text=True)


@pytest.fixture(scope="module")
def teacher(tiny_mt, tmp_path_factory):
    """(checkpoint, DATA_BIN) of the nearly untrained teacher, on tiny_mt's data."""
    _, data_bin, _ = tiny_mt
    save_dir = tmp_path_factory.mktemp("seqkd_teacher")
    run("fairseq-skd-train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir,
        "--task", "translation", "--arch", "skd_bahdanau_tiny", "--optimizer", "adam",
        "--lr", 1e-7, "--max-tokens", 4000, "--max-epoch", 1, "--no-epoch-checkpoints",
        "--required-batch-size-multiple", 1, "--cpu", "--seed", 1, "--num-workers", 0)
    return save_dir / "checkpoint_best.pt", data_bin


@pytest.fixture(scope="module")
def two_at_once(teacher, tmp_path_factory):
    """The 200 training sentences in 2 shards, translated at once (--nproc 2)."""
    out = tmp_path_factory.mktemp("seqkd") / "two_at_once"
    proc = make_data(*teacher, out, "--nproc", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr


def hypotheses(gen):
    """{id: (source, hypothesis)} of a fairseq-generate output."""
    sources, found = {}, {}
    for line in gen.read_text().splitlines():
        if line.startswith("S-"):
            sid, text = line[2:].split("\t", 1)
            sources[int(sid)] = text
        elif line.startswith("H-"):
            sid, _, text = line[2:].split("\t", 2)
            found[int(sid)] = (sources[int(sid)], text)
    return found


def test_one_translation_per_training_sentence_in_order_with_the_datas_dictionaries(
        tiny_mt, teacher, two_at_once):
    text = tiny_mt[0]
    checkpoint, data_bin = teacher
    out, stderr = two_at_once
    sources = (out / "text" / "train.in").read_text().splitlines()
    targets = (out / "text" / "train.out").read_text().splitlines()
    assert sources == (text / "train.in").read_text().splitlines()  # training order
    assert len(targets) == len(sources) == 200
    # each line is its shard's translation of that sentence: shard I holds sentences
    # 100 (I-1) .. 100 I - 1 under the ids 0..99
    for shard in (1, 2):
        for i, pair in hypotheses(out / "shards" / f"{shard}.gen").items():
            assert (sources[100 * (shard - 1) + i], targets[100 * (shard - 1) + i]) == pair
    assert len(set(targets)) > 5  # a translation of each sentence, not one for all
    # the student's data: the data's dictionaries and sources byte for byte, valid and test kept
    for name in ("dict.in.txt", "dict.out.txt", "train.in-out.in.bin", "train.in-out.in.idx",
                 "valid.in-out.out.bin", "test.in-out.in.idx"):
        assert (out / "bin" / name).read_bytes() == (data_bin / name).read_bytes(), name
    assert (out / "bin" / "train.in-out.out.idx").is_file()
    report = json.loads((out / "translation.json").read_text())
    assert {k: report[k] for k in ("sentences", "beam", "teacher", "shards", "nproc", "empty")} == {
        "sentences": 200, "beam": 5, "teacher": str(checkpoint), "shards": 2, "nproc": 2, "empty": 0}
    assert report["seconds"] > 0
    # at the limit: the translations of 8 words (fairseq cut them there; a = 0, b = 8)
    assert report["truncated"] == sum(len(t.split()) == 8 for t in targets) > 100
    assert report["truncated_share"] == report["truncated"] / 200
    assert (f"Seq-KD data: 200 sentences; empty 0 (0.0%), at the length limit {report['truncated']} "
            f"({100 * report['truncated_share']:.1f}%)") in stderr
    assert (out / ".done").is_file() and not list(out.glob("shards/*.part"))


def test_a_killed_run_translates_only_its_missing_shard_and_gives_the_same_files(teacher, two_at_once,
                                                                                tmp_path):
    """A run killed while translating shard 1 (its .gen.part left, nothing merged), run again
    with one shard at a time: shard 2 is kept, and every file equals the run's that translated
    both shards at once (a shard's output does not depend on what runs beside it)."""
    done, _ = two_at_once
    out = tmp_path / "killed"
    (out / "shards").mkdir(parents=True)
    for name in ("settings", "shards/2.gen", "shards/2.seconds", "shards/2.log"):
        (out / name).write_bytes((done / name).read_bytes())
    (out / "shards" / "1.gen.part").write_text("S-0\tw1 w2\nH-0\t-0.1\tW2\n")  # cut short
    kept = (out / "shards" / "2.gen").stat().st_mtime_ns
    proc = make_data(*teacher, out, "--nproc", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shards done already (a previous run): 2; translating: 1" in proc.stderr
    assert "shard 1 of 2: translating" in proc.stderr and "shard 2 of 2: translating" not in proc.stderr
    assert (out / "shards" / "2.gen").stat().st_mtime_ns == kept
    for name in ("text/train.in", "text/train.out", "bin/train.in-out.out.bin", "bin/train.in-out.out.idx",
                 "shards/1.gen"):
        assert (out / name).read_bytes() == (done / name).read_bytes(), name
    assert json.loads((out / "translation.json").read_text())["sentences"] == 200
    # once done, a run does nothing; other settings are refused rather than mixed in
    again = make_data(*teacher, out)
    assert again.returncode == 0 and "done already" in again.stderr
    other = make_data(*teacher, out, "--beam", 4)
    assert other.returncode != 0
    assert f"{out} was started with other settings" in other.stderr and "beam" in other.stderr


def write_gen(path, records):
    """A fairseq-generate output of (id, source, hypothesis), in the order given."""
    path.write_text("".join(f"S-{i}\t{s}\nT-{i}\tref\nH-{i}\t-0.5\t{h}\nD-{i}\t-0.5\t{h}\n"
                            for i, s, h in records))


def test_the_report_counts_empty_and_length_limited_hypotheses(tmp_path):
    """Limit int(1.2 * (source units + 1) + 2): 6 units for a 3-unit source, 8 for a 5-unit
    one. A dropped sentence stops the merge naming it."""
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    write_gen(out / "shards" / "1.gen", [(1, "a b c", "w w w w w w"), (0, "a b c", "")])
    write_gen(out / "shards" / "2.gen", [(0, "a b c d e", "w w w w w w w"), (1, "a b c", "w w w w w")])
    merge = ["python3", str(SEQKD_PY), "merge", str(out), "--shard-size", "2", "--src", "x",
             "--tgt", "y", "--max-len-a", "1.2", "--max-len-b", "2", "--beam", "5"]
    proc = subprocess.run([*merge, "--sentences", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "4 sentences; empty 1 (25.0%), at the length limit 1 (25.0%)"
    assert (out / "text" / "train.y").read_text().splitlines() == [
        "", "w w w w w w", "w w w w w w w", "w w w w w"]
    report = json.loads((out / "translation.json").read_text())
    assert {k: report[k] for k in ("sentences", "empty", "truncated", "shards")} == {
        "sentences": 4, "empty": 1, "truncated": 1, "shards": 2}
    assert report["empty_share"] == report["truncated_share"] == 0.25
    write_gen(out / "shards" / "2.gen", [(1, "a b c", "w")])  # sentence 0 dropped
    proc = subprocess.run([*merge, "--sentences", "4"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "2.gen: 1 of its 2 sentences have no translation (ids 0)" in proc.stderr
    assert "#5036" in proc.stderr


def test_the_length_limit_is_the_one_fairseqs_beam_search_cuts_at():
    """An untrained model rarely ends a sentence: fairseq's SequenceGenerator cuts its
    hypotheses at int(a * batch source length + b), and each cut hypothesis is counted, the
    shorter sources' (a longer limit, from the batch's longest source) too."""
    at_length_limit = seqkd_module().at_length_limit
    d = make_dictionary(20)
    model = build_model("skd_bahdanau_tiny", d, seed=1).eval()
    sentences = random_sentences(d, [3, 7, 5, 2], torch.Generator().manual_seed(1))
    src = data_utils.collate_tokens(sentences, d.pad(), d.eos(), left_pad=True)
    a, b = 0.5, 2
    limit = int(a * src.size(1) + b)  # sequence_generator.py, src_len = the padded length
    hypos = generate(model, src, beam=2, max_len_a=a, max_len_b=b)
    cut = 0
    for sentence, hypo in zip(sentences, hypos):
        units = len(hypo[0]["tokens"]) - 1  # without </s>
        assert units <= limit
        if units == limit:
            cut += 1
            assert at_length_limit(len(sentence) - 1, units, a, b)
    assert cut >= 2


def variants(*args):
    return subprocess.run(["python3", str(VARIANTS_PY), *args], capture_output=True, text=True)


def test_the_seqkd_variants_flags_and_tasks():
    schedule = ["--sigma", "0.1", "--warmup", "5", "--alpha-step", "0.2", "--noise-std", "0.1"]
    assert variants("flags", "seqkd", *schedule, "--task", "mt").stdout.split() == [
        "--criterion", "cross_entropy"]  # plain cross-entropy, on the teacher's translations
    skd = variants("flags", "skd", *schedule, "--skd-args", "--skd-lambda 0.9").stdout
    assert variants("flags", "seqkd_skd", *schedule, "--skd-args", "--skd-lambda 0.9").stdout == skd
    assert variants("expand", "distillation", "--task", "mt").stdout.split() == [
        "baseline", "kd", "skd_kd", "seqkd", "seqkd_skd"]
    assert variants("expand", "distillation", "--task", "lm").stdout.split() == ["baseline", "kd", "skd_kd"]
    assert "seqkd" not in variants("expand", "all").stdout
    assert variants("expand", "all distillation", "--only", "translations").stdout.split() == [
        "seqkd", "seqkd_skd"]
    refused = variants("flags", "seqkd_skd", *schedule, "--task", "lm")
    assert refused.returncode == 2 and "is for the translation recipe only" in refused.stderr


def test_the_lm_recipe_refuses_the_seqkd_variants_naming_variants(tmp_path):
    proc = subprocess.run(["bash", "recipes/lm/run.sh", "--dataset", "synthetic", "--variants",
                           "baseline seqkd", "--prep-dir", str(tmp_path / "data"),
                           "--exp-dir", str(tmp_path / "exp")],
                          cwd=REPO, env=recipe_env(), capture_output=True, text=True)
    assert proc.returncode != 0
    assert ("--variants: variant 'seqkd' (Seq-KD (beam 5)) is for the translation recipe only, "
            "not the language-model one") in proc.stderr
    assert not (tmp_path / "data").exists()


def test_each_teacher_has_its_data_folder_and_each_distilled_run_names_its_inputs(tmp_path):
    """The born-again teacher's translations: EXP_DIR/seqkd_data/seed<N>; a --teacher's: one
    folder for every seed, named by its path; inputs.json says which, teacher_run null."""
    given = tmp_path / "teacher.pt"
    given.write_bytes(b"")
    script = (f"set -euo pipefail; . recipes/utils/common.sh; exp_dir={tmp_path}/exp; "
              "seqkd_variants='seqkd seqkd_skd '; seqkd_dir 1; teacher_inputs 1 seqkd; "
              f"teacher={given}; seqkd_dir 1; seqkd_dir 2; teacher_inputs 2 seqkd_skd")
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=recipe_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    own, given_1, given_2 = proc.stdout.split()
    assert own == f"{tmp_path}/exp/seqkd_data/seed1"
    digest = hashlib.sha256(f"{given}\n".encode()).hexdigest()[:12]
    assert given_1 == given_2 == f"{tmp_path}/exp/seqkd_data/teacher_{digest}"
    assert json.loads((tmp_path / "exp" / "seed1" / "seqkd" / "inputs.json").read_text()) == {
        "teacher": f"{tmp_path}/exp/seed1/baseline/checkpoint_best.pt",
        "teacher_run": f"{tmp_path}/exp/seed1/baseline", "translation": f"{own}/translation.json"}
    assert json.loads((tmp_path / "exp" / "seed2" / "seqkd_skd" / "inputs.json").read_text()) == {
        "teacher": str(given), "teacher_run": None, "translation": f"{given_1}/translation.json"}
