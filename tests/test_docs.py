"""The commands of README.md and docs/*.md, run as written (with tiny data put in place of the
user's), so the docs cannot drift from the code; and the README's flag table against the
criterion's config. ./test.sh is what CI runs; tests/test_study.py runs docs/study.md's
./run.sh command and tests/test_recipes.py the recipes on the same fixtures as docs/recipes.md.
Commands in ```text blocks need the network, several machines or a GPU: the tests below run the
torchrun one in its one-machine form."""

import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess

import pytest

import fairseq_skd  # noqa: F401  (torch's safe loader reads the checkpoints)

from helpers import (
    BIN,
    REPO,
    USER_DIR,
    make_reverse_translation_data,
    preprocess_translation,
    recipe_env,
)

DOCS = {path.relative_to(REPO).as_posix(): path.read_text()
        for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
README = DOCS["README.md"]


def bash_commands(language="bash", doc=None):
    """Every command in the bash (or other) blocks of ``doc`` (default: every doc), joined across
    backslash continuations."""
    commands = []
    for name, text in DOCS.items():
        if doc not in (None, name):
            continue
        for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.split("  #")[0].strip()
                if command:
                    commands.append(command)
    return commands


def doc_commands(program, doc="README.md"):
    return [c for c in bash_commands(doc=doc) if c.startswith(program)]


# Where each doc's commands run: the number of commands per (doc, program). A command added to a
# doc fails here until a test runs it.
RUN = {
    ("README.md", "./run.sh"): 1,  # tests/test_study.py runs it with docs/study.md's options
    ("README.md", "./test.sh"): 1,  # CI
    ("README.md", "fairseq-train"): 1, ("README.md", "fairseq-generate"): 1,
    ("README.md", "fairseq-skd-train"): 1,
    ("docs/study.md", "./run.sh"): 1,  # tests/test_study.py
    ("docs/recipes.md", "recipes/lm/run.sh"): 2, ("docs/recipes.md", "recipes/mt/run.sh"): 1,
    ("docs/several-workers.md", "fairseq-skd-train"): 1,
    ("docs/tools.md", "fairseq-hydra-train"): 1, ("docs/tools.md", "fairseq-skd-average"): 1,
    ("docs/distillation.md", "fairseq-train"): 2, ("docs/distillation.md", "fairseq-skd-cache-teacher"): 1,
    ("docs/distillation.md", "recipes/lm/run.sh"): 1, ("docs/distillation.md", "recipes/mt/run.sh"): 1,
    ("docs/huggingface.md", "python"): 1,
}


def test_every_command_of_the_docs_is_one_that_the_tests_or_ci_run():
    found = {}
    for doc in DOCS:
        for command in bash_commands(doc=doc):
            key = (doc, command.split()[0])
            found[key] = found.get(key, 0) + 1
    assert found == RUN


def test_quick_start_has_exactly_the_two_scripts_and_ci_runs_the_test_one():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick_start, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["./run.sh", "./test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\n./test.sh\n" in ci
    for script in ("run.sh", "test.sh"):
        assert "setup_env.sh" in (REPO / script).read_text()  # each installs what it needs


def test_the_add_skd_commands_run_as_written(tmp_path):
    train = doc_commands("fairseq-train")
    generate = doc_commands("fairseq-generate")
    assert len(train) == 1 and len(generate) == 1
    data_bin = preprocess_translation(make_reverse_translation_data(tmp_path / "data", n_train=200),
                                      joined_dictionary=True)
    save_dir = tmp_path / "checkpoints"

    def localise(command):
        argv = shlex.split(command.replace("data-bin/iwslt14.de-en", str(data_bin))
                           .replace("checkpoints/skd", str(save_dir)))
        argv[0] = str(BIN / argv[0])
        return argv

    # the user's command, on one CPU epoch of tiny data
    subprocess.run(localise(train[0]) + ["--max-epoch", "1", "--cpu", "--skd-warmup-updates", "0"],
                   check=True, capture_output=True)
    out = subprocess.run(localise(generate[0]) + ["--cpu", "--gen-subset", "valid", "--max-len-b", "5"],
                         check=True,
                         capture_output=True, text=True)
    assert "Translated 40 sentences" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def joined_mt_bin(tmp_path_factory):
    return preprocess_translation(make_reverse_translation_data(
        tmp_path_factory.mktemp("data"), n_train=200), joined_dictionary=True)


# The README's multi-worker commands, cut to a few updates of a 1-layer transformer on CPU.
SHORT_RUN = ["--cpu", "--max-update", "4", "--encoder-layers", "1", "--decoder-layers", "1",
             "--skd-warmup-updates", "0", "--no-save"]


def test_the_multi_worker_command_runs_as_written_with_two_cpu_workers(joined_mt_bin, tmp_path):
    (command,) = doc_commands("fairseq-skd-train", "docs/several-workers.md")
    argv = shlex.split(command.replace("data-bin/iwslt14.de-en", str(joined_mt_bin))
                       .replace("checkpoints/skd", str(tmp_path / "ckpt"))
                       .replace("--nproc 8", "--nproc 2"))
    argv[0] = str(BIN / argv[0])
    out = subprocess.run(argv + SHORT_RUN, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "training on 2 devices" in log and "distributed_world_size': 2" in log


def test_the_multi_node_torchrun_command_runs_on_one_machine(joined_mt_bin, tmp_path):
    """README's 2 x 8 GPU torchrun command as 1 machine x 2 CPU workers, through fairseq's own
    reading of torchrun's environment. That reading divides the rank by the GPU count, so the
    workers are told there is one GPU (they train on CPU: --cpu)."""
    (torchrun,) = [c for c in bash_commands("text", "docs/several-workers.md") if c.startswith("torchrun")]
    (flags,) = doc_commands("fairseq-skd-train", "docs/several-workers.md")
    flags = flags.split("--user-dir fairseq_skd", 1)[1].replace("checkpoints/skd",
                                                                 str(tmp_path / "ckpt"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = (torchrun.replace("...the flags above...", flags)
               .replace("data-bin/iwslt14.de-en", str(joined_mt_bin))
               .replace("--nnodes 2 --nproc-per-node 8", "--nnodes 1 --nproc-per-node 2")
               .replace("HOST0:29500", f"127.0.0.1:{port}")
               .replace("--distributed-world-size 16", "--distributed-world-size 2"))
    argv = shlex.split(command)
    argv[0] = str(BIN / argv[0])
    argv[argv.index("--no-python") + 1] = str(BIN / "fairseq-train")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import torch\ntorch.cuda.device_count = lambda: 1\n")
    env = dict(os.environ, PYTHONPATH=str(shim), OMP_NUM_THREADS="1")
    out = subprocess.run(argv + SHORT_RUN + ["--distributed-backend", "gloo",
                                             "--ddp-backend", "legacy_ddp"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "training on 2 devices" in log and "distributed_world_size': 2" in log
    assert "'load_checkpoint_on_all_dp_ranks': True" in log


def test_the_hydra_config_trains_and_refuses_a_bad_value(tiny_lm, tmp_path):
    (command,) = doc_commands("fairseq-hydra-train", "docs/tools.md")
    _, data_bin, _ = tiny_lm
    argv = shlex.split(command.replace("$PWD/data-bin/ptb", str(data_bin))
                       .replace("$PWD/fairseq_skd", USER_DIR))
    argv[0] = str(BIN / argv[0])
    tiny = ["model._name=skd_lstm_lm_tiny", "optimization.max_epoch=1", "common.cpu=true",
            f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    out = subprocess.run(argv + tiny, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert '"train_skd_alpha"' in out.stdout + out.stderr and (tmp_path / "ckpt" / "checkpoint_best.pt").is_file()
    assert "'dropout': 0.5" in out.stdout + out.stderr  # the recipe's model, as the YAML says
    bad = subprocess.run(argv + tiny + ["+criterion.skd_qn_max=1.5"], cwd=REPO, capture_output=True,
                         text=True)
    assert bad.returncode != 0
    assert "--skd-qn-max must be in (0, 1], got 1.5" in bad.stdout + bad.stderr


def test_tensorboard_event_files_hold_the_skd_scalars(tiny_lm):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    text, _, _ = tiny_lm
    tags = {}
    for kind in ("train_inner", "train", "valid"):
        events = EventAccumulator(str(text.parent / "tensorboard" / kind))
        events.Reload()
        tags[kind] = set(events.Tags()["scalars"])
    skd = {"skd_alpha", "skd_qn", "skd_clip", "skd_match", "skd_sigma"}
    assert skd <= tags["train_inner"] and skd <= tags["train"]
    assert skd - {"skd_alpha"} <= tags["valid"] and "skd_alpha" not in tags["valid"]


def test_the_python_example_runs_as_written(tiny_lm, tiny_mt):
    (code,) = re.findall(r"```python\n(.*?)```", DOCS["docs/models.md"], flags=re.S)
    for name, (_, data_bin, checkpoint) in (("lm", tiny_lm), ("mt", tiny_mt)):
        code = (code.replace(f'"checkpoints/{name}/checkpoint_best.pt"', repr(str(checkpoint)))
                .replace(f'"checkpoints/{name}"', repr(str(checkpoint.parent)))
                .replace(f'"data-bin/{name}"', repr(str(data_bin))))
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    score, translation = out.stdout.strip().splitlines()[-2:]
    assert float(score.replace("tensor(", "").rstrip(")")) < 0
    assert translation.split() and set(translation.split()) <= {f"W{i}" for i in range(24)}


def test_the_averaging_command_averages(tiny_mt, tmp_path):
    import torch

    (command,) = doc_commands("fairseq-skd-average", "docs/tools.md")
    folder = tmp_path / "mt"
    shutil.copytree(tiny_mt[2].parent, folder)
    argv = shlex.split(command.replace("checkpoints/mt", str(folder)))
    subprocess.run([str(BIN / argv[0]), *argv[1:]], check=True, capture_output=True)
    average = torch.load(folder / "checkpoint_avg2.pt", map_location="cpu")["model"]
    first, second = (torch.load(folder / f"checkpoint{e}.pt", map_location="cpu")["model"]
                     for e in (1, 2))
    assert average.keys() == first.keys()
    for name, value in average.items():
        assert torch.allclose(value, (first[name] + second[name]) / 2), name


def table_rows(text, first_header):
    """{first cell: [cells]} of the markdown table whose header starts with ``first_header``."""
    table = text.split(f"| {first_header} |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = {}
    for line in table:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_readme_flag_table_is_the_criterions_config():
    """Every flag of self_kd_cross_entropy's config, in its order, with its default and allowed
    values, as the config's fields say (fairseq_skd/criterions/config_fields.py)."""
    from fairseq_skd.criterions.config_fields import describe_flags
    from fairseq_skd.criterions.self_kd_cross_entropy import SelfKDCrossEntropyConfig

    rows = table_rows(README, "flag")
    flags = describe_flags(SelfKDCrossEntropyConfig)
    assert list(rows) == [f"`{f.flag}`" for f in flags]
    for f in flags:
        _paper, default, allowed, _meaning = rows[f"`{f.flag}`"]
        assert default == str(f.default), f.flag
        assert allowed == str(f.allowed), f.flag


def test_fairseq_skd_train_help_lists_the_criterions_flags_with_defaults_and_ranges():
    from fairseq_skd.criterions.config_fields import describe_flags
    from fairseq_skd.criterions.self_kd_cross_entropy import SelfKDCrossEntropyConfig

    (command,) = doc_commands("fairseq-skd-train")
    argv = shlex.split(command)
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("usage: fairseq-train") and "INFO" not in out.stdout + out.stderr
    help_text = " ".join(out.stdout.split())  # argparse wraps the lines
    for f in describe_flags(SelfKDCrossEntropyConfig):
        described = help_text.split(f" {f.flag} ", 1)[1]
        if hasattr(f.allowed, "interval"):
            assert f"(default: {f.default}; range {f.allowed})" in described.split(" --skd-")[0] \
                or f"(default: {f.default}; range {f.allowed})" in described[:600], (f.flag, described[:600])
        else:  # choices: argparse lists them beside the flag
            assert described.startswith("{" + ",".join(f.allowed.values) + "}"), f.flag
            assert f"(default: {f.default})" in described[:600], f.flag
    assert "--decoder-layers" in help_text  # the architecture's flags too


def test_the_criterion_python_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", DOCS["docs/criterion.md"], flags=re.S)
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.splitlines()[0] == "--skd-sigma 0.1 (0, inf) or 'auto'"


def test_the_recipe_commands_of_the_docs_take_their_options_and_prepare_their_data(tmp_path):
    """docs/recipes.md's recipe commands, up to their data stage (tests/test_recipes.py runs
    the same recipes on the same fixtures through every stage)."""
    for i, command in enumerate(bash_commands(doc="docs/recipes.md")):
        argv = shlex.split(re.sub(r"/tmp/exp/\S+", str(tmp_path / f"exp{i}"), command))
        if argv[-1] == "--help":
            out = subprocess.run(["bash", *argv], cwd=REPO, capture_output=True, text=True, check=True)
            assert out.stdout.startswith("Usage:") and "--seeds" in out.stdout
            continue
        out = subprocess.run(["bash", *argv, "--stop-stage", "0", "--prep-dir", str(tmp_path / f"data{i}")],
                             cwd=REPO, capture_output=True, text=True, env=recipe_env())
        assert out.returncode == 0, (command, out.stderr[-2000:])
        assert (tmp_path / f"data{i}" / ".data.done").is_file(), command


def test_the_run_sh_commands_in_the_docs_text_take_their_options(tmp_path):
    """The ./run.sh commands the docs quote in their text, up to the data stage."""
    commands = sorted({c for text in DOCS.values() for c in re.findall(r"`(\./run\.sh[^`]*)`", text)})
    assert "./run.sh --variants all" in commands and "./run.sh --task lm --seeds 1" in commands
    for i, command in enumerate(commands):
        argv = shlex.split(command)
        extra = argv.index("--") if "--" in argv else len(argv)
        argv[extra:extra] = ["--stop-stage", "0", "--out", str(tmp_path / f"out{i}")]
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=recipe_env())
        assert out.returncode == 0, (command, out.stderr[-2000:])
        assert list((tmp_path / f"out{i}" / "data").glob("*/.data.done")), command


def test_the_distillation_flag_table_is_the_criterions_config():
    from fairseq_skd.criterions.config_fields import describe_flags
    from fairseq_skd.criterions.kd_cross_entropy import KDCrossEntropyConfig

    rows = table_rows(DOCS["docs/distillation.md"], "flag")
    flags = [f for f in describe_flags(KDCrossEntropyConfig) if f.flag.startswith("--kd-")]
    assert list(rows) == [f"`{f.flag}`" for f in flags]
    for f in flags:
        default, allowed, _meaning = rows[f"`{f.flag}`"]
        assert (default, allowed) == (str(f.default), str(f.allowed)), f.flag


def test_the_distillation_commands_run_as_written(joined_mt_bin, tmp_path):
    """docs/distillation.md: online, then the cache and a student trained from it, on tiny data
    with a tiny transformer teacher, one epoch each (the sizes cut down by flags that come
    last)."""
    teacher_dir = tmp_path / "checkpoints" / "teacher"
    tiny = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
            "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
            "--decoder-ffn-embed-dim", "64", "--max-epoch", "1", "--cpu", "--warmup-updates", "10"]
    subprocess.run([str(BIN / "fairseq-skd-train"), str(joined_mt_bin), "--user-dir", USER_DIR,
                    "--task", "translation", "--arch", "transformer_iwslt_de_en",
                    "--optimizer", "adam", "--lr", "5e-4", "--max-tokens", "4096",
                    "--save-dir", str(teacher_dir), *tiny], check=True, capture_output=True)

    def localise(command):
        argv = shlex.split(command.replace("data-bin/iwslt14.de-en", str(joined_mt_bin))
                           .replace("checkpoints/", f"{tmp_path}/checkpoints/"))
        argv[0] = str(BIN / argv[0])
        return argv + (tiny if "fairseq-train" in argv[0] else ["--cpu"])

    online, cached = doc_commands("fairseq-train", "docs/distillation.md")
    (cache,) = doc_commands("fairseq-skd-cache-teacher", "docs/distillation.md")
    for command in (online, cache, cached):
        out = subprocess.run(localise(command), capture_output=True, text=True)
        assert out.returncode == 0, (command, out.stderr[-3000:])
    assert (joined_mt_bin / "teacher-top8" / "meta.json").is_file()
    for student in ("student", "student-cached"):
        log = (tmp_path / "checkpoints" / student / "checkpoint_last.pt")
        assert log.is_file(), student


def test_the_distillation_recipe_command_trains_the_baseline_first_as_the_teacher(tmp_path):
    (command,) = doc_commands("recipes/lm/run.sh", "docs/distillation.md")
    argv = shlex.split(command.replace("/tmp/exp/kd", str(tmp_path / "exp")))
    out = subprocess.run(["bash", *argv, "--prep-dir", str(tmp_path / "data")], cwd=REPO,
                         capture_output=True, text=True, env=recipe_env())
    assert out.returncode == 0, out.stderr[-3000:]
    results = (tmp_path / "exp" / "results.md").read_text()
    assert "| Baseline |" in results and "| KD (a 0.5) |" in results and "| +SKD+KD (a 0.5) |" in results
    teacher = tmp_path / "exp" / "seed1" / "baseline" / "checkpoint_best.pt"
    for variant in ("kd", "skd_kd"):
        command = (tmp_path / "exp" / "seed1" / variant / "train.log").read_text().splitlines()[0]
        assert f"--kd-teacher {teacher}" in command, variant
        inputs = json.loads((tmp_path / "exp" / "seed1" / variant / "inputs.json").read_text())
        assert inputs == {"teacher": str(teacher), "teacher_run": str(teacher.parent), "translation": None}
    assert "--skd-alpha-max 1" in (tmp_path / "exp" / "seed1" / "skd_kd" / "train.log").read_text()
    assert not (tmp_path / "exp" / "seed1" / "baseline" / "inputs.json").exists()


def test_the_seqkd_recipe_command_trains_its_students_on_the_teachers_translations(tmp_path):
    """docs/distillation.md's translation command up to its training stage (4): the baseline,
    its translation of the training set, the student trained on it, its inputs.json; the
    translation is kept for the next student. (tests/test_seqkd.py checks the translation.)"""
    (command,) = doc_commands("recipes/mt/run.sh", "docs/distillation.md")
    exp, data = tmp_path / "exp", tmp_path / "data"
    argv = shlex.split(command.replace("/tmp/exp/seqkd", str(exp)))
    out = subprocess.run(["bash", *argv, "--prep-dir", str(data), "--stop-stage", "4"], cwd=REPO,
                         capture_output=True, text=True, env=recipe_env())
    assert out.returncode == 0, out.stderr[-3000:]
    distilled = exp / "seqkd_data" / "seed1"
    teacher = exp / "seed1" / "baseline" / "checkpoint_best.pt"
    report = json.loads((distilled / "translation.json").read_text())
    sources = (data / "bpe" / "train.en").read_text().splitlines()
    assert {k: report[k] for k in ("sentences", "beam", "teacher", "shards")} == {
        "sentences": len(sources), "beam": 5, "teacher": str(teacher), "shards": 2}
    assert (distilled / "text" / "train.en").read_text().splitlines() == sources
    assert len((distilled / "text" / "train.xx").read_text().splitlines()) == len(sources)
    for name in ("dict.en.txt", "dict.xx.txt", "train.en-xx.en.bin", "test.en-xx.xx.bin"):
        assert (distilled / "bin" / name).read_bytes() == (data / "bin" / name).read_bytes(), name
    assert "Seq-KD data: 300 sentences; empty " in out.stderr and (distilled / ".done").is_file()
    command = (exp / "seed1" / "seqkd" / "train.log").read_text().splitlines()[0].split()
    assert command[4] == str(distilled / "bin") and "--criterion cross_entropy" in " ".join(command)
    inputs = json.loads((exp / "seed1" / "seqkd" / "inputs.json").read_text())
    assert inputs == {"teacher": str(teacher), "teacher_run": str(teacher.parent),
                      "translation": str(distilled / "translation.json")}


def test_the_plain_pytorch_example_runs_as_written():
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", DOCS["docs/huggingface.md"], flags=re.S)
               if "self_kd_loss" in block]
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [line.split() for line in out.stdout.splitlines()]
    assert [(s[0], s[1]) for s in steps] == [("0", "0.0"), ("1", "0.5"), ("2", "1.0")]


def test_the_skd_trainer_snippet_runs_as_written(tmp_path):
    """docs/huggingface.md's SKDTrainer lines, after a prelude that puts a tiny GPT-2, two steps
    of training arguments and random data in the place of the user's."""
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", DOCS["docs/huggingface.md"], flags=re.S)
               if "SKDTrainer(" in block]
    prelude = f"""
import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments, default_data_collator
model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2))
training_args = TrainingArguments(output_dir={str(tmp_path)!r}, max_steps=2, logging_steps=1,
                                  report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
data = [{{"input_ids": torch.randint(0, 40, (8,)), "labels": torch.randint(0, 40, (8,))}} for _ in range(8)]
train = valid = data
collate = default_data_collator
"""
    code = prelude + code + "\nprint(sorted(k for k in trainer.state.log_history[0] if k.startswith('skd_')))"
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, env=recipe_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(["skd_alpha", "skd_clip", "skd_match", "skd_qn", "skd_sigma"])


def test_the_hf_example_trains_both_and_compares_them(tmp_path):
    """docs/huggingface.md's command on the synthetic corpus, 40 steps of a 32-wide model."""
    from fairseq_skd.data.synthetic import write_lm_corpus

    (command,) = doc_commands("python", "docs/huggingface.md")
    write_lm_corpus(tmp_path / "data", 400, 50, 50)
    argv = shlex.split(command.replace("data/", f"{tmp_path}/data/")
                       .replace("outputs/hf_lm", str(tmp_path / "out")))
    out = subprocess.run([str(BIN / "python"), *argv[1:], "--steps", "40", "--dim", "32"],
                         cwd=REPO, capture_output=True, text=True, env=recipe_env())
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) == {"cross_entropy", "skd"}
    for r in results.values():
        assert 0 < r["valid_nll_per_token"] < 6 and r["valid_ppl"] == pytest.approx(math.exp(r["valid_nll_per_token"]))
    assert results["skd"]["skd_alpha"] > 0 and "| skd |" in out.stdout


def heading_anchor(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_reaches_a_file_and_its_heading():
    anchors = {name: {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
               for name, text in DOCS.items()}
    links = [(name, target) for name, text in DOCS.items()
             for target in re.findall(r"\]\(([^)\s]+\.md(?:#[^)\s]*)?)\)", text)]
    assert len(links) > 20
    for name, target in links:
        path, _, anchor = target.partition("#")
        resolved = (REPO / name).parent.joinpath(path).resolve().relative_to(REPO).as_posix()
        assert resolved in DOCS, f"{name}: link to {target}: no such file"
        assert not anchor or anchor in anchors[resolved], f"{name}: link to {target}: no such heading"
