"""README.md's commands, run as written (with tiny data put in place of the user's), so the
front door cannot drift from the code. ./test.sh is what CI runs; ./run.sh calls the same
fairseq-skd-demo that tests/test_demo.py runs in smoke mode."""

import re
import shlex
import subprocess
from pathlib import Path

from fairseq_cli_helpers import BIN, REPO, make_reverse_translation_data, preprocess_translation

README = (REPO / "README.md").read_text()


def bash_commands():
    """Every command in README's bash blocks, joined across backslash continuations."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
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
    assert {c.split()[0] for c in bash_commands()} == {"./run.sh", "./test.sh", "fairseq-train",
                                                     "fairseq-generate"}


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
