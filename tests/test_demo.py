"""The offline study (README's main job) in its smoke mode: the output folder is complete and
its commands re-run."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# this checkout's fairseq_skd in the demo and the tools it runs, whichever one is installed
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([str(BIN / "fairseq-skd-demo"), "--smoke", "--out", str(out),
                           "--variants", "baseline", "skd"], capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def table_rows(markdown, title):
    section = markdown.split(title, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_tables_have_a_row_per_variant_and_task(demo_out):
    out, stdout = demo_out
    table = (out / "results.md").read_text()
    assert table in stdout  # printed at the end
    for title, metric in (("Language model", "test NLL/sentence"),
                          ("Translation", "test BLEU beam 12")):
        header, *rows = table_rows(table, title)
        assert metric in header and "median q_n" in header and "clip rate" in header
        assert [row[0] for row in rows] == ["Baseline", "+SKD"]
        for row in rows:
            assert all(cell not in ("", "-") for cell in row)
    assert table.count("the baseline on") == 2  # an explicit verdict for each SKD row
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["task"], r["variant"]) for r in records] == [
        ("lm", "baseline"), ("lm", "skd"), ("mt", "baseline"), ("mt", "skd")]
    for r in records:
        assert 0 <= float(r["median_qn"]) <= 0.5 and 0 <= float(r["clip_rate"]) <= 1
    assert float(records[0]["test_nll_per_sentence"]) > 0
    assert float(records[1]["final_alpha"]) > 0


def test_figures_are_pngs(demo_out):
    out, _ = demo_out
    for task in ("lm", "mt"):
        figures = sorted((out / task / "seed1").glob("*.png"))
        assert figures, task
        for figure in figures:
            data = figure.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 5000, figure


def test_commands_file_reruns_a_row(demo_out, tmp_path):
    out, _ = demo_out
    commands = (out / "commands.sh").read_text().splitlines()
    train = [c for c in commands if "fairseq-skd-train" in c and "--criterion self_kd_cross_entropy" in c]
    assert len(train) == 2  # the +SKD row of each task
    # re-run the LM's +SKD training by hand into a new folder: the same validation losses
    exp = str(out / "lm" / "seed1")
    rerun = train[0].replace(exp, str(tmp_path))
    subprocess.run(["bash", "-c", "set -euo pipefail; " + rerun], check=True, capture_output=True,
                   env=ENV)

    def valid_losses(text):
        return [line.split("valid_loss")[1][:12] for line in text.splitlines() if "| valid |" in line]

    original = (out / "lm" / "seed1" / "skd" / "train.log").read_text()
    assert valid_losses((tmp_path / "skd" / "train.log").read_text()) == valid_losses(original) != []


def test_ablation_rows_train_the_options_beyond_the_paper(tmp_path):
    proc = subprocess.run([str(BIN / "fairseq-skd-demo"), "--smoke", "--task", "lm", "--epochs", "1",
                           "--out", str(tmp_path), "--variants", "baseline", "skd_topk"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header, *rows = table_rows((tmp_path / "results.md").read_text(), "Language model")
    assert [row[0] for row in rows] == ["Baseline", "+SKD (top-10 soft targets)"]
    commands = (tmp_path / "commands.sh").read_text()
    assert "--skd-soft-targets topk" in commands
