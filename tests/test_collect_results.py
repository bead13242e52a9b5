"""fairseq-skd-collect on hand-written experiment folders: table values, CSV rows, paper numbers,
missing pieces as "-", resumed logs, figures (a curve for every variant), errors, the tables
over seeds with their verdicts; and the results package under it (log parser, training summary,
epoch lines, tables)."""

import csv
import json

import pytest

from fairseq_skd.cli import collect_results
from fairseq_skd.results import diagnostics, figures, layout, logs, paper, report, seeds, tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def log_line(kind, record, clock="15:03:42"):
    """A line as fairseq-train --log-format json writes it (values as strings, as fairseq does)."""
    body = {k: (v if k in ("epoch", "update") else f"{v:g}" if isinstance(v, float) else str(v))
            for k, v in record.items()}
    return f"2026-11-24 {clock} | INFO | {kind} | {json.dumps(body)}"


def train_log(updates, qn=lambda u: 0.3 + 0.01 * u, alpha=lambda u: min(1.0, 0.1 * u),
              valid_every=4, skd=True, bleu=None, start=1, epoch_size=4):
    """train_inner records for updates start..updates, valid and train records every epoch.
    skd=False: the log of fairseq's cross_entropy, which has no skd_* keys and no valid_nll_loss
    (its loss is the NLL); skd=True: self_kd_cross_entropy's, which also logs valid_skd_alpha
    as older versions did (the schedule's alpha, although validation applies none)."""
    lines = ["2026-11-24 15:03:41 | INFO | fairseq_cli.train | training on 1 devices (GPUs/TPUs)"]
    for u in range(start, updates + 1):
        rec = {"epoch": (u - 1) // epoch_size + 1, "update": round(u / epoch_size, 3),
               "loss": 5.0 - 0.1 * u, "nll_loss": 5.0 - 0.1 * u}
        if skd:
            rec.update(skd_alpha=alpha(u), skd_match=0.2, skd_qn=qn(u), skd_clip=0.25)
        rec.update(ppl=2 ** (5.0 - 0.1 * u), wps=100.0, num_updates=u, lr=0.003, wall=2 * u)
        lines.append(log_line("train_inner", rec))
        if u % valid_every == 0:
            valid = {"epoch": u // epoch_size, "valid_loss": 4.0 - 0.05 * u}
            if skd:
                valid.update(valid_nll_loss=4.0 - 0.05 * u, valid_skd_alpha=0.123, valid_skd_qn=0.111)
            if bleu is not None:
                valid["valid_bleu"] = bleu(u)
            valid.update(valid_ppl=10.0, valid_num_updates=u)
            lines.append(log_line("valid", valid))
            epoch = {"epoch": u // epoch_size, "train_loss": 4.5, "train_nll_loss": 4.5}
            if skd:
                epoch.update(train_skd_alpha=alpha(u), train_skd_qn=qn(u) - 0.005, train_skd_clip=0.2)
            epoch.update(train_num_updates=u, train_lr=0.003, train_wall=2 * u)
            lines.append(log_line("train", epoch))
    return lines


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def read_csv(path):
    with open(path) as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


def table_cells(md, title=None):
    """{model: [cells]} of the first table after the heading ``title`` (default: the first
    table of ``md``)."""
    text = md if title is None else md.split(title, 1)[1]
    lines = text.split("\n| ", 1)[1].split("\n\n", 1)[0].splitlines()[2:]  # under the header
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines}


def run(exp, out, name=None, task=None, paper_name="auto", draw=True):
    """One run folder's tables and figures into ``out``: (results, rows, markdown). The paper's
    numbers are the folder name's, as fairseq-skd-collect's default."""
    if paper_name == "auto":
        paper_name = exp.name if exp.name in collect_results.PAPER_EXPERIMENTS else None
    results = report.collect(exp, name, task, paper_name)
    rows, md = report.write(results, out, draw)
    return results, rows, md


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


LM_SCORES = {  # variant: (test nll/sentence, test ppl, valid nll/sentence)
    "baseline": (120.5, 150.25, 118.0),
    "skd": (118.25, 140.5, None),  # score_valid.json missing
    "noise_skd": (117.0, 135.75, 115.5),
}  # noise: not run


@pytest.fixture
def ptb(tmp_path):
    exp = tmp_path / "ptb"
    for variant, (test, ppl, valid) in LM_SCORES.items():
        d = exp / variant
        write_json(d / "score_test.json", {"subset": "test", "sentences": 3761, "tokens": 82430,
                                           "nll_per_sentence": test, "ppl": ppl, "checkpoint": "x.pt"})
        if valid is not None:
            write_json(d / "score_valid.json", {"subset": "valid", "sentences": 3370, "tokens": 73760,
                                                "nll_per_sentence": valid, "ppl": 99.0, "checkpoint": "x.pt"})
        write(d / "train.log", train_log(12, skd=variant != "baseline"))
    # noise_skd was resumed: the first run died after update 10 (last checkpoint at update 8);
    # the second run redoes updates 9.. with other q_n values and goes on to update 16
    write(exp / "noise_skd" / "train.log",
          train_log(10, qn=lambda u: 0.9) + train_log(16, qn=lambda u: 0.4 + 0.001 * u, start=9))
    return exp


def test_lm_table_csv_and_figures(ptb, tmp_path, capsys):
    out = tmp_path / "report"
    collect_results.main([str(ptb), "--out", str(out)])
    printed = capsys.readouterr().out

    rows = read_csv(out / "results.csv")
    assert list(rows) == list(LM_SCORES)  # a row for each variant that ran, none for noise
    for variant, (test, ppl, valid) in LM_SCORES.items():
        assert float(rows[variant]["test_nll_per_sentence"]) == test
        assert float(rows[variant]["test_ppl"]) == ppl
        assert rows[variant]["valid_nll_per_sentence"] == ("" if valid is None else str(valid))
        assert float(rows[variant]["paper_test_nll_per_sentence"]) == paper.TABLE2["ptb"][variant]
    assert float(rows["noise_skd"]["delta_vs_baseline"]) == pytest.approx(117.0 - 120.5)
    assert float(rows["noise_skd"]["paper_delta_vs_baseline"]) == pytest.approx(97.41 - 101.40)
    # last-epoch q_n / clip / alpha from the `train` records; the baseline logs none
    assert float(rows["skd"]["final_qn"]) == pytest.approx(0.3 + 0.12 - 0.005)
    assert float(rows["skd"]["final_clip"]) == pytest.approx(0.2)
    assert float(rows["skd"]["final_alpha"]) == pytest.approx(1.0)
    assert rows["skd"]["updates"] == "12"
    assert rows["baseline"]["final_qn"] == "" and rows["baseline"]["updates"] == "12"
    assert float(rows["baseline"]["final_alpha"]) == 0  # cross_entropy: trained without SKD
    assert float(rows["skd"]["best_valid_loss"]) == pytest.approx(4.0 - 0.05 * 12)
    # the resumed run replaces the first run's records from update 9 on
    assert rows["noise_skd"]["updates"] == "16"
    assert float(rows["noise_skd"]["final_qn"]) == pytest.approx(0.4 + 0.016 - 0.005)

    md = (out / "results.md").read_text()
    assert printed.startswith(md) and f"written to {out}/: results.md, results.csv" in printed
    table = table_cells(md)
    assert table["Baseline"][:6] == ["120.50", "+0.00", "150.25", "118.00", "101.40", "+0.00"]
    assert table["+SKD"][:6] == ["118.25", "-2.25", "140.50", "-", "99.38", "-2.02"]
    assert "+Noise |" not in md
    # updates and fairseq's wall clock (2 s an update in these logs), the cost the same here
    assert table["+Noise+SKD"][6:13] == ["16", "32s", "16", "32s", "0.4110", "0.2000", "1.0000"]
    assert float(rows["skd"]["seconds"]) == 24 and float(rows["skd"]["cost_seconds"]) == 24
    assert "Paper PTB" in md and "Sentences scored: test 3761, valid 3370." in md
    assert "- skd: score_valid.json missing" in md

    assert_png(out / "fig3_qn_alpha.png")
    assert_png(out / "valid_loss.png")
    assert not (out / "fig4_valid_bleu.png").exists()  # LM: no BLEU figure
    # a validation curve for every variant that was run, the baseline's cross_entropy included
    assert "`valid_loss.png`: validation NLL per token (base 2)" in md
    assert "all variants: `valid_loss`" in md and "curves: Baseline, +SKD, +Noise+SKD" in md
    # the training columns mean one thing, stated under the table
    assert "| Updates | Time | Cost: updates | Cost: time | train q_n | train clip rate | final alpha |" in md
    assert "train q_n: the mean q_n (Eq. 8) over the training positions" in md
    assert "over the last epoch of training" in md


def test_resumed_log_keeps_the_last_run(ptb):
    records = logs.parse_log(ptb / "noise_skd" / "train.log")
    updates, qn = logs.series(records, "train_inner", "skd_qn")
    assert updates == list(range(1, 17))
    assert qn[:8] == [0.9] * 8
    assert qn[8:] == pytest.approx([0.4 + 0.001 * u for u in range(9, 17)])
    assert logs.series(records, "valid", "valid_loss")[0] == [4, 8, 12, 16]
    assert [r["valid_num_updates"] for r in records["valid"]] == [4.0, 8.0, 12.0, 16.0]


MT_BLEU = {  # variant: {(subset, beam): bleu}
    "baseline": {("test", 1): 7.5, ("valid", 1): 8.25, ("test", 12): 9.0, ("valid", 12): 9.75},
    "noise": {("test", 1): 7.75, ("valid", 1): 8.5, ("test", 12): 9.25},  # valid beam 12 missing
    "skd": {("test", 1): 8.5, ("valid", 1): 9.5, ("test", 12): 10.0, ("valid", 12): 10.25},
    "noise_skd": {("test", 1): 8.75, ("valid", 1): 9.0, ("test", 12): 10.5, ("valid", 12): 10.75},
}
SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.3"


@pytest.fixture
def en_fi(tmp_path):
    exp = tmp_path / "wmt15_en_fi"
    for i, (variant, scores) in enumerate(MT_BLEU.items()):
        d = exp / variant
        for (subset, beam), bleu in scores.items():
            write_json(d / layout.bleu_file(subset, beam),
                       {"bleu": bleu, "signature": SIGNATURE, "sentences": 1370})
        write(d / "train.log", train_log(12, skd=variant in ("skd", "noise_skd"),
                                         bleu=lambda u, i=i: 2.0 + 0.5 * u + i))
    return exp


def test_mt_table_csv_and_figures(en_fi, tmp_path):
    out = tmp_path / "report"
    results, rows, md = run(en_fi, out)
    csv_rows = read_csv(out / "results.csv")
    for variant, scores in MT_BLEU.items():
        for beam in (1, 12):
            test, dev = paper.TABLE3["wmt15_en_fi"][variant][beam]
            assert float(csv_rows[variant][f"paper_test_bleu_beam{beam}"]) == test
            assert float(csv_rows[variant][f"paper_dev_bleu_beam{beam}"]) == dev
            for subset, column in (("test", "test"), ("valid", "dev")):
                value = csv_rows[variant][f"{column}_bleu_beam{beam}"]
                assert value == ("" if (subset, beam) not in scores else str(scores[subset, beam]))
        assert csv_rows[variant]["signature"] == SIGNATURE
    assert float(csv_rows["skd"]["final_qn"]) == pytest.approx(0.3 + 0.12 - 0.005)

    table = table_cells(md)
    assert table["Baseline"][:4] == ["7.50 (8.25)", "7.29 (8.28)", "9.00 (9.75)", "9.01 (9.85)"]
    assert table["+Noise"][:4] == ["7.75 (8.50)", "7.68 (8.50)", "9.25 (-)", "9.35 (9.53)"]
    assert table["+Noise+SKD"][:4] == ["8.75 (9.00)", "8.81 (8.95)", "10.50 (10.75)", "10.13 (10.47)"]
    assert table["+SKD"][4:8] == ["12", "24s", "12", "24s"]  # updates, time, their cost
    assert table["+SKD"][8] == "0.4150" and table["Baseline"][8] == "-"
    assert table["Baseline"][10] == "0.0000" and table["+SKD"][10] == "1.0000"  # final alpha
    assert f"sacreBLEU signature: `{SIGNATURE}`" in md
    assert "- noise: bleu_valid_beam12.json missing" in md
    assert "En-Fi" in md

    for name in ("fig3_qn_alpha.png", "fig4_valid_bleu.png", "valid_loss.png"):
        assert_png(out / name)
        assert f"`{name}`" in md
    # what each figure plots, read back from its matplotlib lines: every variant in Figs. 4 and
    # valid_loss (the baseline and +Noise log no valid_nll_loss), the SKD variants in Fig. 3
    curves = {drawn.file: drawn.curves for drawn in results["figures"]}
    assert curves["valid_loss.png"] == {"Validation loss during training (wmt15_en_fi)": list(MT_BLEU)}
    assert list(curves["fig4_valid_bleu.png"].values()) == [list(MT_BLEU)]
    assert list(curves["fig3_qn_alpha.png"].values()) == [["skd", "noise_skd"]] * 2


def test_mt_differing_signatures_and_sentence_counts_are_noted(en_fi, tmp_path):
    write_json(en_fi / "skd" / layout.bleu_file("test", 1),
               {"bleu": 8.5, "signature": SIGNATURE.replace("13a", "intl"), "sentences": 1000})
    _, _, md = run(en_fi, tmp_path / "out", draw=False)
    assert "sacreBLEU signatures differ" in md and "tok:intl" in md
    assert "test beam 1: variants were scored on different numbers of sentences" in md
    assert not (tmp_path / "out" / "fig4_valid_bleu.png").exists()


def test_partial_experiment_and_unknown_name(tmp_path):
    exp = tmp_path / "my_lm_run"
    write_json(exp / "skd" / "score_test.json", {"subset": "test", "sentences": 5, "tokens": 50,
                                                 "nll_per_sentence": 12.0, "ppl": 3.3})
    (exp / "scratch").mkdir()
    results, rows, md = run(exp, tmp_path / "out")
    assert results["task"] == "lm" and results["paper"] is None
    assert [(r["variant"], r["test_nll_per_sentence"]) for r in rows] == [("skd", 12.0)]
    assert "Paper" not in md and "paper_" not in (tmp_path / "out" / "results.csv").read_text()
    assert "skd: train.log missing" in md and "folders ignored (not a variant): scratch" in md
    assert "fig3_qn_alpha.png not drawn" in md
    assert not list((tmp_path / "out").glob("*.png"))


def test_clear_errors(tmp_path):
    missing = tmp_path / "ptb"
    with pytest.raises(SystemExit) as e:
        collect_results.main([str(missing)])
    assert f"experiment folder not found: {missing}" in str(e.value.code)

    (tmp_path / "wiki2" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        collect_results.main([str(tmp_path / "wiki2")])
    assert "has no variant folder" in str(e.value.code) and "noise_skd" in str(e.value.code)

    (tmp_path / "mystery" / "skd").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        collect_results.main([str(tmp_path / "mystery")])
    assert "--task lm or --task mt" in str(e.value.code)


# ---------------------------------------------------------------------------------------------
# fairseq_skd.results: the log parser, the training summary and the table writer that the
# collector and fairseq-skd-demo share


def test_training_summary_of_a_run_that_finished_no_epoch():
    records = logs.parse_log_text("\n".join(train_log(3)))  # killed before the first epoch ended
    assert records["train"] == [] and records["valid"] == []
    summary = logs.training_summary(records)
    assert summary == {"updates": 3, "epochs": None, "seconds": 6, "best_valid_loss": None,
                       "best_epoch": None, "rise_after_best": None, "qn": pytest.approx(0.33),
                       "clip": 0.25, "alpha": pytest.approx(0.3)}
    assert logs.training_summary(logs.parse_log_text("")) == dict.fromkeys(summary)


def test_training_summary_best_valid_loss_and_its_epoch():
    lines = train_log(12, skd=False)
    # a worse validation at the end: the best stays at epoch 2
    lines = [line.replace('"valid_loss": "3.4"', '"valid_loss": "3.7"') for line in lines]
    summary = logs.training_summary(logs.parse_log_text("\n".join(lines)))
    assert summary["best_valid_loss"] == pytest.approx(3.6) and summary["best_epoch"] == 2
    assert (summary["epochs"], summary["updates"]) == (3, 12)
    assert summary["qn"] is summary["clip"] is summary["alpha"] is None  # cross_entropy logs none


def test_the_parser_reads_fairseqs_and_hydras_lines_among_others():
    """raw_records: fairseq's own lines and hydra's [kind] form, with fairseq's other lines and a
    line cut short around them (tests/helpers.parse_json_logs is this parser)."""
    text = "\n".join(train_log(8, bleu=lambda u: u / 2) + [
        "2026-11-24 15:03:43 | INFO | fairseq.trainer | begin training epoch 3",
        '[2026-11-24 15:03:44,001][train_inner][INFO] - {"epoch": 3, "loss": "2.5", "num_updates": "9"}',
        '2026-11-24 15:03:45 | INFO | train_inner | {"epoch": 3, "loss": "2.4", "num_upd',
    ])
    inner = logs.raw_records(text, "train_inner")
    assert [r["num_updates"] for r in inner] == [str(u) for u in range(1, 9)] + ["9"]
    assert inner[-1] == {"epoch": 3, "loss": "2.5", "num_updates": "9"}
    for kind in logs.RECORD_KINDS:
        assert logs.raw_records(text, kind) != []


def test_markdown_and_csv_from_one_table():
    columns = [tables.Column("Model", tables.text("model"), align="left"),
               tables.Column("NLL", tables.number("nll")),
               tables.Column("Updates", lambda row: tables.count(row.get("updates")))]
    rows = [{"model": "+SKD", "nll": 1.234, "updates": 12.0}, {"model": "Baseline", "nll": None}]
    assert tables.markdown_table(columns, rows) == [
        "| Model | NLL | Updates |", "|---|---:|---:|", "| +SKD | 1.23 | 12 |", "| Baseline | - | - |"]


def test_csv_writes_missing_values_as_empty_fields(tmp_path):
    tables.write_results(tmp_path, "# table\n", [{"variant": "skd", "nll": 1.5},
                                                {"variant": "baseline", "updates": 3, "nll": None}])
    assert (tmp_path / "results.md").read_text() == "# table\n"
    assert (tmp_path / "results.csv").read_text() == "variant,nll,updates\nskd,1.5,\nbaseline,,3\n"


def test_noise_stays_visible_under_noise_skd_in_fig4(en_fi):
    # +Noise and +Noise+SKD with the same validation BLEU: two curves on the same points
    write(en_fi / "noise_skd" / "train.log", train_log(12, bleu=lambda u: 2.0 + 0.5 * u + 1))
    fig = figures.validation_curves(report.collect(en_fi), "valid_bleu", "BLEU", "Fig. 4")
    lines = {line.get_gid(): line for line in fig.axes[0].get_lines()}
    assert list(lines) == list(MT_BLEU)
    assert list(lines["noise"].get_ydata()) == list(lines["noise_skd"].get_ydata())
    styles = {(line.get_linestyle(), line.get_marker()) for line in lines.values()}
    assert len(styles) == 4  # each variant its own line style and marker
    assert all(line.get_markerfacecolor() == "none" for line in lines.values())  # hollow


def test_fig3_labels_the_clip_and_ticks_whole_updates(tmp_path):
    exp = tmp_path / "wmt15_en_fi"
    write(exp / "skd" / "train.log", train_log(4, valid_every=2, epoch_size=2))  # 4 updates
    results = report.collect(exp)
    fig = figures.qn_alpha(results)
    ax_q = fig.axes[0]
    clip = [line for line in ax_q.get_lines() if "clip" in line.get_label()]
    assert len(clip) == 1 and list(clip[0].get_ydata()) == [0.5, 0.5]
    assert "clip" in [text.get_text() for text in ax_q.get_legend().get_texts()][-1]
    for fig in (fig, figures.validation_curves(results, "valid_loss", "NLL", "loss")):
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_an_experiment_that_is_not_the_papers_scored_on_test_only(ptb, en_fi, tmp_path):
    """A run folder of another experiment, scored on test only (the synthetic dataset's): no
    paper columns, no valid columns, no notes about either."""
    seed = tmp_path / "seed1"
    ptb.rename(seed)
    for path in seed.glob("*/score_valid.json"):
        path.unlink()
    collect_results.main([str(seed), "--task", "lm", "--name", "lm, seed 1", "--no-figures"])
    md = (seed / "results.md").read_text()
    assert md.startswith("# lm, seed 1: Table 2")
    for leftover in ("Paper seed1", "Paper", "(paper)", "no paper numbers", "score_valid.json missing",
                     "Valid NLL", "valid -"):
        assert leftover not in md, leftover
    assert "Sentences scored: test 3761." in md
    rows = read_csv(seed / "results.csv")
    assert float(rows["skd"]["test_nll_per_sentence"]) == 118.25
    assert not [field for field in rows["skd"] if field.startswith(("paper_", "valid_"))]

    for path in en_fi.glob("*/bleu_valid_*.json"):
        path.unlink()
    _, rows, md = run(en_fi, tmp_path / "mt", task="mt", paper_name=None, draw=False)
    table = table_cells(md)
    assert table["Baseline"][:2] == ["7.50", "9.00"] and table["+Noise"][:2] == ["7.75", "9.25"]
    assert "(dev)" not in md and "bleu_valid" not in md and "(paper)" not in md and "Paper" not in md
    assert not [key for key in rows[0] if key.startswith(("paper_", "dev_"))]


def test_validation_alpha_is_not_read(tmp_path):
    """Validation applies alpha = 0; an older criterion logged the schedule's valid_skd_alpha
    there. Tables (training summary), epoch lines and figures read the training records only."""
    text = "\n".join(train_log(8))
    assert '"valid_skd_alpha": "0.123"' in text
    records = logs.parse_log_text(text)
    assert logs.training_summary(records)["alpha"] == pytest.approx(0.8)
    progress = logs.EpochProgress(epochs=2)
    lines = [line for line in map(progress.feed, text.splitlines()) if line]
    assert len(lines) == 2 and "alpha 0.80" in lines[1] and "0.12" not in lines[1]
    assert logs.series(records, "train_inner", "skd_alpha")[1][-1] == pytest.approx(0.8)


def test_one_line_per_epoch_with_a_time_estimate():
    clock = iter([100.0, 130.0, 160.0, 190.0])
    progress = logs.EpochProgress(epochs=3, clock=lambda: next(clock))
    lines = [progress.feed(line) for line in train_log(12, bleu=lambda u: u / 2.0)]
    printed = [line for line in lines if line]
    assert printed == [
        "epoch 1/3  train loss 4.500  nll 4.500  alpha 0.40  q_n 0.335  clip 0.200  valid loss 3.800"
        "  valid BLEU 2.00  (30s, about 1m00s left)",
        "epoch 2/3  train loss 4.500  nll 4.500  alpha 0.80  q_n 0.375  clip 0.200  valid loss 3.600"
        "  valid BLEU 4.00  (1m00s, about 30s left)",
        "epoch 3/3  train loss 4.500  nll 4.500  alpha 1.00  q_n 0.415  clip 0.200  valid loss 3.400"
        "  valid BLEU 6.00  (1m30s)",
    ]
    # fairseq's other lines, a resumed run's first epoch and a run of unknown length
    progress = logs.EpochProgress(clock=iter([0.0, 5.0]).__next__)
    assert progress.feed("2026-11-24 15:03:41 | INFO | fairseq_cli.train | done training") is None
    resumed = [line for line in map(progress.feed, train_log(12, start=9, skd=False)) if line]
    assert resumed == ["epoch 3  train loss 4.500  nll 4.500  valid loss 3.400  (5s)"]


# ---------------------------------------------------------------------------------------------
# prediction diagnostics: the table, the reliability diagram, best epoch and train-valid gap


def reliability(filled):
    """A 15-bin reliability table as fairseq-skd-score-lm/-mt write it, with ``filled``
    {bin: (count, mean confidence, accuracy)} and no token in the other bins."""
    table = []
    for i in range(15):
        count, confidence, accuracy = filled.get(i, (0, None, None))
        table.append({"lower": i / 15, "upper": (i + 1) / 15, "count": count,
                      "confidence": confidence, "accuracy": accuracy})
    return table


DIAGNOSTICS = {  # variant: (nll/token, T, nll at T, top-1, max prob, ECE, entropy, right, wrong)
    "baseline": (1.9231, 1.02, 1.9221, 0.581, 0.601, 0.024, 1.865, 0.357, 4.092),
    "skd": (1.92349, 1.0625, 1.91591, 0.585, 0.627, 0.0441, 1.705, 0.317, 4.182),
}
BINS = {
    "baseline": reliability({3: (10, 0.25, 0.2), 9: (5, 0.62, 0.8), 14: (1, 0.99, 1.0)}),
    "skd": reliability({4: (4, 0.3, 0.25), 9: (6, 0.61, 0.5)}),
}


def score_test(variant, sentences=40):
    nll, t, nll_t, top1, max_prob, ece, entropy, right, wrong = DIAGNOSTICS[variant]
    return {"subset": "test", "sentences": sentences, "tokens": 400, "nll_per_sentence": nll * 10,
            "nll_per_token": nll, "ppl": 6.8, "mean_entropy": entropy, "top1_accuracy": top1,
            "mean_max_prob": max_prob, "ece": ece, "nll_argmax_right": right,
            "nll_argmax_wrong": wrong, "reliability": BINS[variant],
            "calibration_subset": "valid", "temperature": t, "calibrated_nll_per_token": nll_t,
            "calibrated_ece": 0.01}


def epoch_lines(epoch, train, valid, criterion):
    """An epoch's valid and train records: the SKD criterion logs its SKD loss as train_loss and
    the NLL as train_nll_loss; fairseq's cross_entropy logs its loss, the NLL, only."""
    (train_loss, train_nll), (valid_loss,) = train, valid
    valid_record = {"epoch": epoch, "valid_loss": valid_loss, "valid_num_updates": 4 * epoch}
    train_record = {"epoch": epoch, "train_loss": train_loss, "train_num_updates": 4 * epoch}
    if criterion == "skd":
        valid_record["valid_nll_loss"] = valid_loss
        train_record["train_nll_loss"] = train_nll
    return [log_line("valid", valid_record), log_line("train", train_record)]


# epoch: ((train loss, train NLL), (valid loss,)); the best validation loss at epoch 2
HAND_LOGS = {
    "baseline": {1: ((4.5, None), (4.25,)), 2: ((3.75, None), (4.0,)), 3: ((3.0, None), (4.125,))},
    "skd": {1: ((4.75, 4.5), (4.375,)), 2: ((4.5, 4.125), (3.875,)), 3: ((4.25, 3.5), (3.9375,))},
}


@pytest.fixture
def diagnosed(tmp_path):
    """An MT experiment with the baseline and +SKD: score_test.json with hand-written
    diagnostics and bins, BLEU files, and hand-written logs."""
    exp = tmp_path / "wmt15_en_fi"
    for variant in ("baseline", "skd"):
        d = exp / variant
        write_json(d / layout.score_file("test"), score_test(variant))
        for subset in layout.SUBSETS:
            for beam in layout.BEAMS:
                write_json(d / layout.bleu_file(subset, beam),
                           {"bleu": 9.0, "signature": SIGNATURE, "sentences": 40})
        write(d / "train.log", [line for epoch, (train, valid) in HAND_LOGS[variant].items()
                                for line in epoch_lines(epoch, train, valid, variant)])
    write_json(exp / "baseline" / layout.score_file("train"),
               {**score_test("baseline"), "subset": "train", "nll_per_token": 1.5})
    return exp


def test_best_epoch_epochs_and_how_far_the_validation_loss_rose_after_it(diagnosed):
    for variant, rise in (("baseline", 4.125 - 4.0), ("skd", 3.9375 - 3.875)):
        summary = logs.training_summary(logs.parse_log(diagnosed / variant / "train.log"))
        assert summary["best_epoch"] == 2 and summary["epochs"] == 3, variant
        assert summary["rise_after_best"] == rise, variant
    # still at its best when it stopped: no rise
    text = (diagnosed / "skd" / "train.log").read_text()
    stopped = text.split('| valid | {"epoch": 3')[0]
    summary = logs.training_summary(logs.parse_log_text(stopped))
    assert summary["best_epoch"] == 2 and summary["rise_after_best"] == 0


def test_diagnostics_table_from_score_files(diagnosed, tmp_path):
    results, rows, md = run(diagnosed, tmp_path / "out")
    table = table_cells(md, "## Prediction diagnostics (test set)")
    header = md.split("## Prediction diagnostics (test set)", 1)[1].split("\n| ", 1)[1].split("\n")[0]
    assert header == ("Model | NLL/token | T | NLL/token at T | top-1 acc. | mean max prob | ECE | "
                      "entropy | NLL right | NLL wrong | best epoch | epochs | valid rise after "
                      "best (bits) | test - train NLL/token |")
    assert table == {  # the baseline's training sample scored at 1.5 nats a token, skd's not
        "Baseline": ["1.9231", "1.020", "1.9221", "0.581", "0.601", "0.024", "1.865", "0.357",
                     "4.092", "2", "3", "0.125", "+0.423"],
        "+SKD": ["1.9235", "1.062", "1.9159", "0.585", "0.627", "0.044", "1.705", "0.317",
                 "4.182", "2", "3", "0.062", "-"],
    }
    assert "over-confident" in md and "overfits" in md  # the legend says how to read it
    csv_rows = read_csv(tmp_path / "out" / "results.csv")
    assert float(csv_rows["skd"]["temperature"]) == 1.0625
    assert float(csv_rows["baseline"]["test_train_gap"]) == pytest.approx(1.9231 - 1.5)
    assert csv_rows["skd"]["best_epoch"] == "2" and float(csv_rows["skd"]["rise_after_best"]) == 0.0625
    # the MT task is told from the BLEU files although every variant has score_test.json too
    assert report.infer_task("mine", None, {v: diagnosed / v for v in ("baseline", "skd")}) == "mt"


def test_reliability_diagram_from_bins(diagnosed, tmp_path):
    results, _, md = run(diagnosed, tmp_path / "out")
    assert_png(tmp_path / "out" / "reliability.png")
    drawn = {d.file: d for d in results["figures"]}["reliability.png"]
    assert list(drawn.curves.values()) == [["baseline", "skd"]] * 2
    assert "`reliability.png`: reliability diagram" in md and "curves: Baseline, +SKD" in md

    fig = figures.reliability_diagram(BINS, "test")
    ax, ax_share = fig.axes
    lines = {line.get_gid(): line for line in ax.get_lines()}
    # a point per bin with tokens, at its mean confidence; empty bins skipped
    assert list(lines["baseline"].get_xdata()) == [0.25, 0.62, 0.99]
    assert list(lines["baseline"].get_ydata()) == [0.2, 0.8, 1.0]
    assert list(lines["skd"].get_xdata()) == [0.3, 0.61]
    assert list(lines["skd"].get_ydata()) == [0.25, 0.5]
    diagonal = [line for line in ax.get_lines() if line.get_label() == "perfect calibration"]
    assert len(diagonal) == 1 and list(diagonal[0].get_xdata()) == list(diagonal[0].get_ydata()) == [0, 1]
    shares = {line.get_gid(): line for line in ax_share.get_lines()}
    assert list(shares["skd"].get_ydata()) == pytest.approx([0.4 if i == 4 else 0.6 if i == 9 else 0
                                                             for i in range(15)])
    assert shares["skd"].get_xdata()[0] == pytest.approx(1 / 30)
    # no variant with a token: no figure
    assert figures.reliability_diagram({"skd": reliability({}), "noise": None}, "t") is None


def test_pooled_reliability_weights_by_count():
    pooled = diagnostics.pool_reliability([BINS["baseline"], BINS["skd"], None])
    assert [b["count"] for b in pooled] == [0, 0, 0, 10, 4, 0, 0, 0, 0, 11, 0, 0, 0, 0, 1]
    assert pooled[9]["confidence"] == pytest.approx((5 * 0.62 + 6 * 0.61) / 11)
    assert pooled[9]["accuracy"] == pytest.approx((5 * 0.8 + 6 * 0.5) / 11)
    assert pooled[3] == {**BINS["baseline"][3]} and pooled[0]["confidence"] is None
    assert diagnostics.pool_reliability([None]) is None
    with pytest.raises(ValueError, match="different bins"):
        diagnostics.pool_reliability([BINS["skd"], BINS["skd"][:14]])


# ---------------------------------------------------------------------------------------------
# an experiment over seeds: each seed's tables, and mean ± std over the seeds with verdicts


def table_rows(markdown, title):
    """[[cells], ...] of the first table under the heading that contains ``title``."""
    section = markdown.split(title, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def seeds_experiment(exp, nll, seeds=(1, 2), bins=None):
    """EXP/seed<N>/<variant>/ with score_test.json (test NLL/sentence ``nll[variant] + seed/10``,
    q_n at sigma 0.1) and a train.log, as the LM recipe leaves them."""
    for seed in seeds:
        for variant, value in nll.items():
            d = exp / f"seed{seed}" / variant
            write_json(d / "score_test.json", {
                "subset": "test", "sentences": 400, "tokens": 4000,
                "nll_per_sentence": value + seed / 10, "ppl": 2.0 * value,
                "nll_per_token": 2.5 + seed / 100, "temperature": 1.0 + seed / 10,
                "calibrated_nll_per_token": 2.5, "top1_accuracy": 0.5, "mean_max_prob": 0.6,
                "ece": 0.1, "mean_entropy": 2.0, "nll_argmax_right": 0.5, "nll_argmax_wrong": 4.0,
                "qn_sigma": 0.1, "median_qn": 0.3, "clip_rate": 0.0, "median_distance": 12.0,
                "reliability": (bins or {}).get((seed, variant))})
            write(d / "train.log", train_log(8 + 4 * seed, skd=variant != "baseline"))
    return exp


def test_verdicts_over_seeds_and_none_for_smoke(tmp_path):
    exp = seeds_experiment(tmp_path / "synthetic",
                           {"baseline": 24.0, "noise": 23.97, "skd": 22.0})
    md = seeds.write(exp, name="synthetic", task="lm", paper_name="ptb")
    assert md == (exp / "results.md").read_text()
    assert "## Language model (Table 2 style): 2 seeds (1 2), mean ± std over seeds" in md
    assert md.count("the baseline on") == 2  # an explicit verdict for each row but the baseline
    assert "- +SKD beat the baseline on test NLL/sentence (22.150 vs 24.150)." in md
    assert ("- +Noise beat the baseline on test NLL/sentence (24.120 vs 24.150), but by less "
            "than the spread over seeds (0.071): no clear difference.") in md
    header, *rows = table_rows(md, "Language model (Table 2 style)")
    assert header == ["model", "test NLL/sentence", "test ppl", "cost: updates", "cost: time (s)",
                      "best valid loss (base 2)", "final alpha", "median q_n", "clip rate",
                      "paper: PTB NLL/sentence"]
    assert [row[0] for row in rows] == ["Baseline", "+Noise", "+SKD"]  # the variants that ran
    assert rows[0][:2] == ["Baseline", "24.150 ± 0.071"] and rows[0][-1] == "101.40"
    assert rows[0][6] == "0.000 ± 0.000" and rows[2][6] == "1.000 ± 0.000"  # final alpha
    assert rows[0][5] == f"{statistics_of([3.4, 3.2])}"  # the seeds' best validation losses
    assert "q_n = min(exp(-0.1 d(W_t, W_n)), 0.5) measured on the test set" in md
    # every seed's rows in the CSV, and each seed's own tables in its folder
    with open(exp / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["seed"], r["variant"]) for r in records] == [
        (s, v) for s in ("1", "2") for v in ("baseline", "noise", "skd")]
    assert float(records[5]["test_nll_per_sentence"]) == 22.2
    assert (exp / "seed2" / "results.md").read_text().startswith("# synthetic, seed 2: Table 2")

    md = seeds.write(exp, name="synthetic", task="lm", smoke=True, draw=False)
    assert "plumbing check (--smoke), not a result" in md and "the baseline on" not in md
    assert "paper:" not in md  # no paper experiment named
    # one seed: no mean ± std, and a verdict says that there is no spread to judge by
    one = seeds_experiment(tmp_path / "one", {"baseline": 24.0, "skd": 22.0}, seeds=(1,))
    md = seeds.write(one, task="lm", draw=False)
    assert "seed 1 (one seed: no spread)" in md and "±" not in md
    assert md.count("one seed, so no spread to tell a difference from noise") == 1


def statistics_of(values):
    import statistics
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def test_diagnostics_over_seeds_and_the_pooled_reliability_diagram(tmp_path):
    def bins(count, confidence, accuracy):  # all tokens in bin 9
        return reliability({9: (count, confidence, accuracy)})

    tables = {(seed, variant): bins(10 * seed, 0.6, 0.4 + seed / 10)
              for seed in (1, 2) for variant in ("baseline", "skd")}
    exp = seeds_experiment(tmp_path / "lm", {"baseline": 24.0, "skd": 24.5}, bins=tables)
    md = seeds.write(exp, task="lm")
    header, *rows = table_rows(md, "## Language model: prediction diagnostics on the test "
                                   "set, mean ± std over seeds")
    assert header[0] == "model" and header[1:] == [h for _, h, _ in diagnostics.COLUMNS]
    assert rows[1][:3] == ["+SKD", "2.5150 ± 0.0071", "1.150 ± 0.071"]
    assert rows[1][-4] == "3.5 ± 0.7"  # best epoch: a mean of whole epochs (3 and 4)
    assert_png(exp / "reliability.png")
    line = next(line for line in md.splitlines() if line.startswith("`reliability.png`"))
    assert "seeds 1 2; the seeds pooled: bin counts summed" in line
    assert line.endswith("curves: Baseline, +SKD")
    # the seeds' bins pooled: 10 tokens at accuracy 0.5 and 20 at 0.6
    pooled = diagnostics.pool_reliability([tables[1, "skd"], tables[2, "skd"]])
    assert pooled[9]["count"] == 30 and pooled[9]["accuracy"] == pytest.approx((10 * 0.5 + 20 * 0.6) / 30)
    for seed in (1, 2):  # each seed's own figures
        assert_png(exp / f"seed{seed}" / "reliability.png")


def test_a_command_that_differs_from_the_baselines_beyond_the_variant_is_noted(tmp_path):
    """--skd-args and any other flag a variant got and the baseline did not: named in Notes."""
    exp = tmp_path / "exp"
    common = "fairseq-train DATA --arch skd_lstm_lm --lr 0.002 --seed 1 --max-epoch 6"
    commands = {
        "baseline": f"{common} --criterion cross_entropy --save-dir {exp}/baseline",
        "noise": f"{common} --criterion self_kd_cross_entropy --skd-alpha-max 0 "
                 f"--target-embed-noise 0.1 --save-dir {exp}/noise",
        "skd": (f"{common} --criterion self_kd_cross_entropy --skd-sigma 0.1 --skd-warmup-updates 5 "
                f"--skd-alpha-step 0.1 --skd-sigma auto --save-dir {exp}/skd --lr 0.5"),
    }
    for variant, command in commands.items():
        write(exp / variant / "train.log", [f"# 2026-12-06 10:00:00 {command}",
                                            *train_log(4, skd=variant != "baseline")])
        write_json(exp / variant / "score_test.json", score_test("baseline") if variant != "skd"
                   else score_test("skd"))
    results = report.collect(exp, task="lm")
    differing = [note for note in results["notes"] if "differs from the baseline" in note]
    assert differing == ["skd: its training command differs from the baseline's beyond the "
                         "variant's definition: --skd-sigma auto, --lr 0.5"]


def test_the_cost_of_a_distilled_variant_counts_its_teacher_and_the_translation_pass(tmp_path):
    """kd: the same seed's baseline as its teacher; seqkd: the same, found relative to EXP_DIR,
    and the translation pass; skd_kd: a teacher from elsewhere."""
    exp = tmp_path / "synthetic_en_xx"
    for variant, updates in (("baseline", 12), ("kd", 8), ("seqkd", 8), ("skd_kd", 4)):
        write(exp / variant / "train.log", train_log(updates, skd=False))  # 2 s an update
        write_json(exp / variant / "score_test.json", score_test("baseline"))
    write_json(exp / "translation.json", {"seconds": 10.0, "sentences": 200})
    write_json(exp / "kd" / "inputs.json", {"teacher": str(exp / "baseline" / "checkpoint_best.pt"),
                                            "teacher_run": str(exp / "baseline"), "translation": None})
    write_json(exp / "seqkd" / "inputs.json", {"teacher": "baseline/checkpoint_best.pt",
                                               "teacher_run": "baseline",
                                               "translation": "translation.json"})
    write_json(exp / "skd_kd" / "inputs.json", {"teacher": "/elsewhere/teacher.pt",
                                                "teacher_run": None, "translation": None})
    results = report.collect(exp, task="lm")
    rows = {row["variant"]: row for row in report.rows(results)}
    cost = {v: (rows[v]["cost_updates"], rows[v]["cost_seconds"]) for v in rows}
    assert cost == {"baseline": (12, 24), "kd": (8 + 12, 16 + 24),
                    "seqkd": (8 + 12, 16 + 24 + 10), "skd_kd": (4, 8)}
    assert rows["seqkd"]["updates"] == 8 and rows["seqkd"]["seconds"] == 16
    assert ("skd_kd: its teacher (/elsewhere/teacher.pt) was not trained in this experiment: "
            "its cost counts the student's training alone") in results["notes"]
