"""The offline study (README's main job, ./run.sh): both recipes on their synthetic dataset, in
smoke mode with two seeds, as docs/study.md shows it. The output folder is
complete, the tables pool the seeds, the terminal shows what a person reads, its commands re-run
by hand, a failing step says why."""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# docs/study.md's smoke command, as written there
STUDY = next(shlex.split(line)[1:] for line in (REPO / "docs" / "study.md").read_text().splitlines()
             if line.startswith("./run.sh --smoke"))


def env():
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    # this interpreter's environment (./run.sh's set-up finds it ready: the stamp matches)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.pop("VIRTUAL_ENV", None)
    return e


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    proc = subprocess.run([str(REPO / "run.sh"), *STUDY, "--out", str(out)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc.stdout, proc.stderr


def table_rows(markdown, title):
    section = markdown.split(title, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.mark.parametrize("task,title,metric", [
    ("lm", "Language model (Table 2 style)", "test NLL/sentence"),
    ("mt", "Translation (Table 3 style)", "test BLEU beam 12")])
def test_tables_pool_the_seeds_with_a_row_per_variant(study, task, title, metric):
    out, stdout, _ = study
    table = (out / task / "results.md").read_text()
    assert table in stdout  # printed when the recipe ends
    header, *rows = table_rows(table, title)
    assert metric in header and "median q_n" in header and "clip rate" in header
    assert [row[0] for row in rows] == ["Baseline", "+SKD"]  # the variants that ran, no others
    for row in rows:
        assert all(cell not in ("", "-") for cell in row), row
        assert " ± " in row[1]  # two seeds: mean ± std
    # --smoke is a plumbing check: said so, and no verdict
    assert "plumbing check (--smoke), not a result" in table
    assert "the baseline on" not in table and "beat" not in table
    assert "q_n = min(exp(-0.1 d(W_t, W_n)), 0.5) measured on the test set" in table
    with open(out / task / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["seed"], r["variant"]) for r in records] == [
        ("1", "baseline"), ("1", "skd"), ("2", "baseline"), ("2", "skd")]
    for r in records:
        assert 0 <= float(r["median_qn"]) <= 0.5 and 0 <= float(r["clip_rate"]) <= 1
        assert float(r["temperature"]) > 0 and r["best_epoch"] in ("1", "2")
    assert float(records[1]["final_alpha"]) == 1.0 and float(records[0]["final_alpha"]) == 0.0


@pytest.mark.parametrize("task", ["lm", "mt"])
def test_diagnostics_figures_and_each_seeds_tables(study, task):
    out, _, _ = study
    table = (out / task / "results.md").read_text()
    name = {"lm": "Language model", "mt": "Translation"}[task]
    header, *rows = table_rows(table, f"## {name}: prediction diagnostics on the test set")
    assert header[-4:] == ["best epoch", "epochs", "valid rise after best (bits)",
                           "test - train NLL/token"]
    assert [row[0] for row in rows] == ["Baseline", "+SKD"]
    line = next(line for line in table.splitlines() if line.startswith("`reliability.png`"))
    assert "seeds 1 2; the seeds pooled" in line and line.endswith("curves: Baseline, +SKD")
    figures = [out / task / "reliability.png"]
    for seed in (1, 2):
        md = (out / task / f"seed{seed}" / "results.md").read_text()
        assert md.startswith(f"# synthetic_small{'_en_xx' if task == 'mt' else ''}, seed {seed}: Table")
        assert "## Prediction diagnostics (test set)" in md and "(dev)" not in md
        figures += sorted((out / task / f"seed{seed}").glob("*.png"))
        assert (out / task / f"seed{seed}" / "skd" / "score_test.json").is_file()
    assert len(figures) == 1 + 2 * (3 if task == "lm" else 4)  # fig3, (fig4), valid_loss, reliability
    for figure in figures:
        data = figure.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, figure


def test_the_terminal_shows_what_a_person_reads(study):
    out, stdout, stderr = study
    terminal = stdout + stderr
    for task in ("lm", "mt"):
        log = out / task / "seed2" / "skd" / "train.log"
        assert f"skd, seed 2 (run 4 of 4): training, fairseq's log in {log}" in terminal
    epochs = [line.strip() for line in stdout.splitlines() if line.strip().startswith("epoch ")]
    assert len(epochs) == 16, epochs  # 2 epochs x 2 variants x 2 seeds x 2 tasks
    assert all(re.search(r"^epoch 1/2  train loss .* valid loss \S+ .*\(\S+, about \S+ left\)$", line)
               for line in epochs[::2]), epochs
    assert any("valid BLEU" in line for line in epochs)
    assert "skd, seed 1: test: 100 sentences" in stderr and "median q_n" in stderr
    assert "skd, seed 1: test beam 12: BLEU = " in stderr
    where = stdout.split("The study's output is in", 1)[1]
    for name in ("lm/results.md", "mt/reliability.png", "seed<N>/", "train.log", "commands.sh"):
        assert name in where, name
    # fairseq's own lines stay in the logs (but for its tensorboardX notice at import)
    noise = [line for line in terminal.splitlines()
             if "| INFO |" in line and "tensorboardX" not in line or "pin_memory" in line
             or "Warning" in line or "Exception ignored" in line]
    assert noise == []


def test_commands_file_reruns_a_training(study, tmp_path):
    out, _, _ = study
    commands = (out / "lm" / "commands.sh").read_text().splitlines()
    train = [c for c in commands if c.startswith("fairseq-skd-train")
             and "self_kd_cross_entropy" in c and "seed1" in c]
    assert len(train) == 1
    # re-run the LM's +SKD training of seed 1 by hand into a new folder: the same validation
    rerun = train[0].replace(str(out / "lm" / "seed1" / "skd"), str(tmp_path))
    subprocess.run(["bash", "-c", "set -euo pipefail; " + rerun], check=True,
                   capture_output=True, env=env(), cwd=REPO)

    def valid_losses(text):
        return [line.split("valid_loss")[1][:12] for line in text.splitlines() if "| valid |" in line]

    original = (out / "lm" / "seed1" / "skd" / "train.log").read_text()
    assert valid_losses((tmp_path / "train.log").read_text()) == valid_losses(original) != []


def test_a_failing_training_shows_the_last_lines_of_its_log(tmp_path):
    # fairseq-train takes the command line (the recipe checks that first) but fails at its
    # start: no batch fits in 1 token
    proc = subprocess.run(["bash", str(REPO / "recipes" / "lm" / "run.sh"), "--dataset",
                           "synthetic", "--smoke", "--variants", "baseline", "--exp-dir",
                           str(tmp_path / "exp"), "--prep-dir", str(tmp_path / "data"), "--",
                           "--max-tokens", "1"], capture_output=True, text=True, env=env())
    assert proc.returncode == 1
    log = tmp_path / "exp" / "seed1" / "baseline" / "train.log"
    assert (f"fairseq-skd-train: error: fairseq-train exited with status 1. The last lines of "
            f"its output (all of it in {log}):") in proc.stderr
    assert "    Exception: The dataset is empty." in proc.stderr  # the cause
    assert "The dataset is empty" in log.read_text()
    assert "ERROR: training baseline, seed 1 (run 1 of 1) failed" in proc.stderr


def test_run_sh_takes_one_dataset_a_folder(tmp_path):
    def run_sh(*args):
        return subprocess.run(["bash", str(REPO / "run.sh"), *args], capture_output=True,
                              text=True, env=env())

    bad = run_sh("--dataset", "ptb", "--out", str(tmp_path / "a"))
    assert bad.returncode == 1
    assert "run.sh: --dataset is synthetic-small (the default) or synthetic, not 'ptb'" in bad.stderr
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "DATASET").write_text("synthetic\n")  # a study of the other dataset
    mixed = run_sh("--out", str(tmp_path / "b"), "--task", "lm")
    assert mixed.returncode == 1 and not (tmp_path / "b" / "lm").exists()
    assert (f"run.sh: --out {tmp_path / 'b'} holds the study of --dataset synthetic, not "
            "synthetic-small: give another --out") in mixed.stderr
