"""The offline study (README's main job) in its smoke mode: the output folder is complete, its
commands re-run, the terminal shows what a person reads, a failing step says why; and the
study's tables for a run of several seeds."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# this checkout's fairseq_skd in the demo and the tools it runs, whichever one is installed
ENV = dict(os.environ,
           PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([str(BIN / "fairseq-skd-demo"), "--smoke", "--out", str(out),
                           "--variants", "baseline", "skd"], capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, proc.stderr


def table_rows(markdown, title):
    section = markdown.split(title, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_tables_have_a_row_per_variant_and_task(demo_out):
    out, stdout, _ = demo_out
    table = (out / "results.md").read_text()
    assert table in stdout  # printed at the end
    for title, metric in (("Language model", "test NLL/sentence"),
                          ("Translation", "test BLEU beam 12")):
        header, *rows = table_rows(table, title)
        assert metric in header and "median q_n" in header and "clip rate" in header
        assert [row[0] for row in rows] == ["Baseline", "+SKD"]
        for row in rows:
            assert all(cell not in ("", "-") for cell in row)
    # --smoke is a plumbing check: said so above each table, and no verdict, no mean ± std
    assert table.count("plumbing check (--smoke), not a result") == 2
    assert "the baseline on" not in table and "beat" not in table and "±" not in table
    assert ("median q_n / clip rate: q_n = min(exp(-0.1 d(W_t, W_n)), 0.5) measured on the test "
            "set") in table
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["task"], r["variant"]) for r in records] == [
        ("lm", "baseline"), ("lm", "skd"), ("mt", "baseline"), ("mt", "skd")]
    for r in records:
        assert 0 <= float(r["median_qn"]) <= 0.5 and 0 <= float(r["clip_rate"]) <= 1
    assert float(records[0]["test_nll_per_sentence"]) > 0
    assert float(records[1]["final_alpha"]) > 0


DIAGNOSTICS_HEADER = ["model", "NLL/token", "T", "NLL/token at T", "top-1 acc.", "mean max prob",
                      "ECE", "entropy", "NLL right", "NLL wrong", "best epoch",
                      "train-valid NLL gap (bits)"]


def test_diagnostics_tables_and_reliability_diagrams(demo_out):
    out, stdout, _ = demo_out
    table = (out / "results.md").read_text()
    for task, name in (("lm", "Language model"), ("mt", "Translation")):
        header, *rows = table_rows(table, f"## {name}: prediction diagnostics on the test set")
        assert header == DIAGNOSTICS_HEADER
        assert [row[0] for row in rows] == ["Baseline", "+SKD"]
        for row in rows:
            assert all(cell not in ("", "-") for cell in row), row
            assert 0 <= float(row[4]) <= 1 and 0 <= float(row[5]) <= 1 and float(row[2]) > 0
            assert 1 <= int(row[10]) <= 2  # the best of the smoke run's 2 epochs
        # the figure, pooled over the seeds (one here), a curve per variant in both panels
        data = (out / task / "reliability.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        line = next(line for line in table.splitlines() if line.startswith(f"`{task}/reliability.png`"))
        assert "seed 1" in line and line.endswith("curves: Baseline, +SKD"), line
        # per seed, the collector's diagram from the same score files
        md = (out / task / "seed1" / "results.md").read_text()
        assert "`reliability.png`: reliability diagram" in md and "## Prediction diagnostics" in md
        assert (out / task / "seed1" / "skd" / "score_test.json").is_file()
    assert "`train_nll_loss`" in table and "over-confident" in table  # the legend
    assert "lm/reliability.png" in stdout.split("The study's output is in", 1)[1]
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    for r in records:
        assert float(r["temperature"]) > 0 and 0 <= float(r["ece"]) <= 1
        assert r["best_epoch"] in ("1", "2") and r["train_valid_gap"] != ""


def test_figures_are_pngs(demo_out):
    out, _, _ = demo_out
    for task in ("lm", "mt"):
        figures = sorted((out / task / "seed1").glob("*.png"))
        assert figures, task
        for figure in figures:
            data = figure.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 5000, figure


def test_commands_file_reruns_a_row(demo_out, tmp_path):
    out, _, _ = demo_out
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


def test_per_seed_tables_have_no_recipe_leftovers_and_every_curve(demo_out):
    out, _, _ = demo_out
    for task in ("lm", "mt"):
        md = (out / task / "seed1" / "results.md").read_text()
        assert md.startswith(f"# {task}/seed1: Table {2 if task == 'lm' else 3}")
        for leftover in ("Paper seed1", "(paper)", "no paper numbers", "score_valid.json missing",
                         "bleu_valid_beam", "Valid NLL", "(dev)"):
            assert leftover not in md, (task, leftover)
        assert "| train q_n | train clip rate | final alpha |" in md  # the training log's, stated
        figures = {line.split("`")[1]: line for line in md.splitlines() if line.startswith("- `")}
        assert figures["valid_loss.png"].endswith("curves: Baseline, +SKD"), figures
        if task == "mt":
            assert figures["fig4_valid_bleu.png"].endswith("curves: Baseline, +SKD"), figures


def test_the_terminal_shows_what_a_person_reads(demo_out):
    out, stdout, stderr = demo_out
    for task in ("lm", "mt"):
        assert f"{task}, seed 1: Baseline (run" in stdout and f"{task}, seed 1: +SKD (run" in stdout
    assert ("mt, seed 1: +SKD (run 4 of 4): training 2 epochs, fairseq's log in "
            "mt/seed1/skd/train.log") in stdout
    epochs = [line.strip() for line in stdout.splitlines() if line.strip().startswith("epoch ")]
    assert len(epochs) == 8, epochs  # 2 epochs x 2 variants x 2 tasks
    assert all(re.search(r"^epoch 1/2  train loss .* valid loss \S+ .*\(\S+, about \S+ left\)$", line)
               for line in epochs[::2]), epochs
    assert any("valid BLEU" in line for line in epochs)
    assert "test NLL/sentence" in stdout and "test BLEU" in stdout
    # where everything is, last
    where = stdout.split("The study's output is in", 1)[1]
    assert str(out) in where and "results.md, results.csv" in where and "commands.sh" in where
    for name in ("lm/seed1/", "mt/seed1/", "fig3_qn_alpha.png", "fig4_valid_bleu.png", "valid_loss.png",
                 "train.log"):
        assert name in where, name
    # fairseq's own lines stay in the logs (but for its tensorboardX notice at import, before
    # the demo starts)
    noise = [line for line in (stdout + stderr).splitlines()
             if "INFO" in line and "tensorboardX" not in line or "pin_memory" in line
             or "Warning" in line]
    assert noise == []


def test_a_failing_step_shows_the_last_lines_of_its_log(tmp_path):
    # fairseq-train takes the command line (the study checks that first) but fails at its
    # start: no batch fits in 1 token
    proc = subprocess.run([str(BIN / "fairseq-skd-demo"), "--smoke", "--task", "lm",
                           "--variants", "baseline", "--out", str(tmp_path), "--", "--max-tokens", "1"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1
    log = tmp_path / "lm" / "seed1" / "baseline" / "train.log"
    assert (f"fairseq-skd-demo: error: training Baseline (lm, seed 1) failed: fairseq-skd-train "
            f"exited with status 1. The last lines of its output (all of it in {log}):") in proc.stderr
    assert "    Exception: The dataset is empty." in proc.stderr  # the cause
    assert "The dataset is empty" in log.read_text()
    assert f"The command (also in {tmp_path / 'commands.sh'}):" in proc.stderr


def test_verdicts_for_several_seeds_and_none_for_smoke(tmp_path):
    from fairseq_skd.cli.demo import write_tables

    results = [{"task": "lm", "variant": variant, "seed": seed,
                "test_nll_per_sentence": nll + seed / 10, "test_ppl": 2.0 * nll,
                "best_valid_loss": 3.0, "updates": 40, "final_alpha": 1.0 if "skd" in variant else 0.0,
                "median_qn": 0.3, "clip_rate": 0.0, "median_distance": 12.0}
               for seed in (1, 2)
               for variant, nll in (("baseline", 24.0), ("noise", 23.97), ("skd", 22.0))]
    write_tables(results, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "## Language model (Table 2 style): 2 seeds (1 2), mean ± std over seeds" in table
    assert table.count("the baseline on") == 2  # an explicit verdict for each row but the baseline
    assert "- +SKD beat the baseline on test NLL/sentence (22.150 vs 24.150)." in table
    assert ("- +Noise beat the baseline on test NLL/sentence (24.120 vs 24.150), but by less "
            "than") in table
    header, *rows = table_rows(table, "Language model")
    assert rows[0][:2] == ["Baseline", "24.150 ± 0.071"]

    write_tables(results, tmp_path, smoke=True)
    table = (tmp_path / "results.md").read_text()
    assert "plumbing check (--smoke), not a result" in table and "the baseline on" not in table
    # one seed: no mean ± std, and a verdict says that there is no spread to judge by
    write_tables([r for r in results if r["seed"] == 1], tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "seed 1 (one seed: no spread)" in table and "±" not in table
    assert table.count("one seed, so no spread to tell a difference from noise") == 2


def test_diagnostics_over_seeds_and_the_pooled_reliability_diagram(tmp_path):
    from fairseq_skd.cli.demo import write_reliability_diagrams, write_tables

    def bins(count, confidence, accuracy):  # all tokens in bin 9
        return [{"lower": i / 15, "upper": (i + 1) / 15, "count": count if i == 9 else 0,
                 "confidence": confidence if i == 9 else None,
                 "accuracy": accuracy if i == 9 else None} for i in range(15)]

    results = [{"task": "lm", "variant": variant, "seed": seed, "test_nll_per_sentence": 24.0,
                "test_ppl": 12.0, "best_valid_loss": 3.0, "updates": 40, "final_alpha": 0.0,
                "median_qn": 0.3, "clip_rate": 0.0, "nll_per_token": nll + seed / 100,
                "temperature": 1.0 + seed / 10, "calibrated_nll_per_token": nll,
                "top1_accuracy": 0.5, "mean_max_prob": 0.6, "ece": 0.1, "mean_entropy": 2.0,
                "nll_argmax_right": 0.5, "nll_argmax_wrong": 4.0, "best_epoch": 2 + seed,
                "train_valid_gap": -0.25 * seed, "reliability": bins(10 * seed, 0.6, 0.4 + seed / 10)}
               for seed in (1, 2) for variant, nll in (("baseline", 3.0), ("skd", 3.5))]
    drawn = write_reliability_diagrams(results, tmp_path)
    write_tables(results, tmp_path, reliability=drawn)
    table = (tmp_path / "results.md").read_text()
    header, *rows = table_rows(table, "## Language model: prediction diagnostics on the test "
                                      "set, mean ± std over seeds")
    assert header == DIAGNOSTICS_HEADER
    assert rows[1] == ["+SKD", "3.5150 ± 0.0071", "1.150 ± 0.071", "3.5000 ± 0.0000",
                       "0.500 ± 0.000", "0.600 ± 0.000", "0.100 ± 0.000", "2.000 ± 0.000",
                       "0.500 ± 0.000", "4.000 ± 0.000", "3.5 ± 0.7", "-0.375 ± 0.177"]
    assert drawn["lm"].file == "lm/reliability.png" and (tmp_path / "lm" / "reliability.png").is_file()
    assert list(drawn["lm"].curves.values()) == [["baseline", "skd"]] * 2
    assert "seeds 1 2; the seeds pooled: bin counts summed" in table
    # the seeds' bins pooled: 10 tokens at accuracy 0.5 and 20 at 0.6
    from fairseq_skd.results import diagnostics

    pooled = diagnostics.pool_reliability([r["reliability"] for r in results if r["variant"] == "skd"])
    assert pooled[9]["count"] == 30 and pooled[9]["accuracy"] == pytest.approx((10 * 0.5 + 20 * 0.6) / 30)


def test_ablation_rows_train_the_options_beyond_the_paper(tmp_path):
    proc = subprocess.run([str(BIN / "fairseq-skd-demo"), "--smoke", "--task", "lm", "--epochs", "1",
                           "--out", str(tmp_path), "--variants", "baseline", "skd_topk"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header, *rows = table_rows((tmp_path / "results.md").read_text(), "Language model")
    assert [row[0] for row in rows] == ["Baseline", "+SKD (top-10 soft targets)"]
    commands = (tmp_path / "commands.sh").read_text()
    assert "--skd-soft-targets topk" in commands
