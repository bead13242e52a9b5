"""README.md's commands, run as written (with tiny data put in place of the user's), so the
front door cannot drift from the code. ./test.sh is what CI runs; ./run.sh calls the same
fairseq-skd-demo that tests/test_demo.py runs in smoke mode."""

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
)

README = (REPO / "README.md").read_text()


def bash_commands(language="bash"):
    """Every command in README's bash (or other) blocks, joined across backslash continuations."""
    commands = []
    for block in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#")[0].strip()
            if command:
                commands.append(command)
    return commands


def readme_commands(program):
    return [c for c in bash_commands() if c.startswith(program)]


def test_every_readme_command_is_one_that_the_tests_or_ci_run():
    # ./test.sh: CI runs it; ./run.sh: fairseq-skd-demo, which tests/test_demo.py runs;
    # fairseq-train / fairseq-generate: run below as written
    assert {c.split()[0] for c in bash_commands()} == {
        "./run.sh", "./test.sh", "fairseq-train", "fairseq-generate", "fairseq-skd-train",
        "fairseq-hydra-train", "fairseq-skd-average"}


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
    train = readme_commands("fairseq-train")
    generate = readme_commands("fairseq-generate")
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
    (command,) = readme_commands("fairseq-skd-train")
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
    (torchrun,) = [c for c in bash_commands("text") if c.startswith("torchrun")]
    (flags,) = readme_commands("fairseq-skd-train")
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
    (command,) = readme_commands("fairseq-hydra-train")
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
    (code,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
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

    (command,) = readme_commands("fairseq-skd-average")
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
