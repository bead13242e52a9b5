"""One recipe run's results as the paper's tables and figures, the paper's numbers beside ours.

    fairseq-skd-collect exp/wmt15_en_fi
    # writes exp/wmt15_en_fi/results.md, results.csv, fig3_qn_alpha.png, fig4_valid_bleu.png,
    # valid_loss.png and prints the table

Reads the layout described in ``fairseq_skd.cli.recipe_layout`` (a folder per variant with
``train.log`` and the score files of ``fairseq-skd-score-lm`` / ``fairseq-skd-bleu``):

- LM experiments (ptb, wiki2): Table 2, test NLL per sentence (and perplexity) per variant;
- MT experiments (wmt15_*): Table 3, BLEU "test (dev)" for beam 1 and beam 12, with the
  sacreBLEU signature(s) under the table;
- for every variant, the number of updates and, for the SKD variants, the mean q_n, the rate of
  clipped q_n and alpha over the last epoch (``train`` record; the last ``train_inner`` record
  if no epoch finished);
- figures: q_n and alpha over updates (Fig. 3), validation BLEU over updates (Fig. 4, MT),
  validation NLL per token over updates (both).

A variant that was not run or a missing score file shows as "-" and is listed under Notes.
"""

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from fairseq_skd.cli import recipe_layout as layout
from fairseq_skd.cli.requirements import require_packages

MISSING = "-"


class CollectError(Exception):
    """A user-facing failure: no such folder, nothing to collect."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fairseq-skd-collect",
        description="Tables (markdown + CSV) and figures of one recipe run, in the format of "
        "Hahn & Choi (2019) Tables 2-3 and Figs. 3-4, with the paper's numbers beside ours.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("exp_dir", metavar="EXP_DIR",
                        help="experiment folder (ptb, wiki2, wmt15_en_fi, wmt15_fi_en, wmt15_en_de) "
                        f"holding variant folders ({', '.join(layout.VARIANTS)})")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: EXP_DIR)")
    parser.add_argument("--experiment", help="experiment name for the paper's numbers "
                        "(default: the folder's name)")
    parser.add_argument("--task", choices=["lm", "mt"],
                        help="LM (Table 2) or MT (Table 3); default: from the experiment name, "
                        "else from the score files found")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    return parser


# ---------------------------------------------------------------------------------------------
# reading


def _read_json(path, notes, label):
    if not path.is_file():
        notes.append(f"{label}: {path.name} missing")
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        notes.append(f"{label}: {path.name} unreadable ({e})")
        return None


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def training_summary(records):
    """Updates done, and the last epoch's mean q_n / clip rate / alpha (None where not logged)."""
    inner, epochs = records["train_inner"], records["train"]
    updates = None
    if inner:
        updates = inner[-1]["num_updates"]
    if epochs:
        updates = max(updates or 0, epochs[-1]["train_num_updates"])
    summary = {"updates": None if updates is None else int(updates), "qn": None, "clip": None, "alpha": None}
    for key in ("qn", "clip", "alpha"):
        epoch = [r for r in epochs if _number(r.get(f"train_skd_{key}")) is not None]
        inner_ = [r for r in inner if _number(r.get(f"skd_{key}")) is not None]
        # the epoch mean, unless training went on after the last finished epoch
        if epoch and (not inner_ or epoch[-1]["train_num_updates"] >= inner_[-1]["num_updates"]):
            summary[key] = epoch[-1][f"train_skd_{key}"]
        elif inner_:
            summary[key] = inner_[-1][f"skd_{key}"]
    return summary


def infer_task(name, variant_dirs):
    if name in layout.LM_EXPERIMENTS:
        return "lm"
    if name in layout.MT_EXPERIMENTS:
        return "mt"
    for d in variant_dirs.values():
        if any(d.glob("bleu_*.json")):
            return "mt"
        if any(d.glob("score_*.json")):
            return "lm"
    return None


def collect(exp_dir, experiment=None, task=None):
    """Everything the tables and figures need, as plain data."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise CollectError(f"experiment folder not found: {exp_dir}")
    variant_dirs = {v: exp_dir / v for v in layout.VARIANTS if (exp_dir / v).is_dir()}
    if not variant_dirs:
        raise CollectError(f"{exp_dir} has no variant folder (expected one or more of "
                           f"{', '.join(layout.VARIANTS)})")
    name = experiment or exp_dir.resolve().name
    task = task or infer_task(name, variant_dirs)
    if task is None:
        raise CollectError(f"cannot tell whether {exp_dir} is an LM or MT experiment (unknown name "
                           f"'{name}' and no score files): pass --task lm or --task mt")
    notes = []
    others = sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and p.name not in layout.VARIANTS)
    if others:
        notes.append(f"folders ignored (not a variant): {', '.join(others)}")
    known = layout.PAPER_TABLE2 if task == "lm" else layout.PAPER_TABLE3
    if name not in known:
        notes.append(f"no paper numbers for experiment '{name}' "
                     f"(known: {', '.join(sorted(known))})")

    variants = {}
    for variant in layout.VARIANTS:
        label = variant
        entry = {"run": variant in variant_dirs, "logs": None, "training": None, "scores": {}}
        variants[variant] = entry
        if not entry["run"]:
            notes.append(f"{variant}: not run (no folder {variant}/)")
            continue
        d = variant_dirs[variant]
        log = d / layout.TRAIN_LOG
        if log.is_file():
            entry["logs"] = layout.parse_log(log)
            entry["training"] = training_summary(entry["logs"])
            if not entry["logs"]["train_inner"] and not entry["logs"]["valid"]:
                notes.append(f"{variant}: {layout.TRAIN_LOG} has no JSON train_inner/valid records "
                             "(was it run with --log-format json?)")
        else:
            notes.append(f"{variant}: {layout.TRAIN_LOG} missing (no curves, no q_n)")
        if task == "lm":
            for subset in ("test", "valid"):
                data = _read_json(d / layout.lm_score_file(subset), notes, label)
                if data is not None and data.get("subset", subset) != subset:
                    notes.append(f"{variant}: {layout.lm_score_file(subset)} is for subset "
                                 f"'{data['subset']}'")
                entry["scores"][subset] = data
        else:
            for subset in ("test", "valid"):
                for beam in layout.BEAMS:
                    entry["scores"][(subset, beam)] = _read_json(d / layout.bleu_file(subset, beam), notes, label)
    _check_sentence_counts(variants, notes)
    return {"experiment": name, "task": task, "exp_dir": str(exp_dir), "variants": variants, "notes": notes}


def _check_sentence_counts(variants, notes):
    counts = {}
    for variant, entry in variants.items():
        for key, data in entry["scores"].items():
            if data and _number(data.get("sentences")) is not None:
                counts.setdefault(key, {})[variant] = data["sentences"]
    for key, per_variant in counts.items():
        if len(set(per_variant.values())) > 1:
            label = key if isinstance(key, str) else f"{key[0]} beam {key[1]}"
            notes.append(f"{label}: variants were scored on different numbers of sentences "
                         f"({per_variant}); their scores are not comparable")


# ---------------------------------------------------------------------------------------------
# tables


def _fmt(value, digits=2):
    return MISSING if value is None else f"{value:.{digits}f}"


def _score(data, key):
    return _number(data.get(key)) if data else None


def lm_rows(results):
    name = results["experiment"]
    paper = layout.PAPER_TABLE2.get(name, {})
    base = results["variants"]["baseline"]["scores"].get("test")
    base_ours, base_paper = _score(base, "nll_per_sentence"), paper.get("baseline")
    rows = []
    for variant, entry in results["variants"].items():
        test, valid = entry["scores"].get("test"), entry["scores"].get("valid")
        training = entry["training"] or {}
        ours = _score(test, "nll_per_sentence")
        rows.append({
            "experiment": name,
            "variant": variant,
            "model": layout.VARIANT_NAMES[variant],
            "test_nll_per_sentence": ours,
            "test_ppl": _score(test, "ppl"),
            "test_sentences": _score(test, "sentences"),
            "valid_nll_per_sentence": _score(valid, "nll_per_sentence"),
            "valid_ppl": _score(valid, "ppl"),
            "delta_vs_baseline": None if ours is None or base_ours is None else ours - base_ours,
            "paper_test_nll_per_sentence": paper.get(variant),
            "paper_delta_vs_baseline": (None if variant not in paper or base_paper is None
                                        else paper[variant] - base_paper),
            "updates": training.get("updates"),
            "final_qn": training.get("qn"),
            "final_clip": training.get("clip"),
            "final_alpha": training.get("alpha"),
        })
    return rows


def mt_rows(results):
    name = results["experiment"]
    paper = layout.PAPER_TABLE3.get(name, {})
    rows = []
    for variant, entry in results["variants"].items():
        training = entry["training"] or {}
        row = {"experiment": name, "variant": variant, "model": layout.VARIANT_NAMES[variant]}
        for beam in layout.BEAMS:
            row[f"test_bleu_beam{beam}"] = _score(entry["scores"].get(("test", beam)), "bleu")
            row[f"dev_bleu_beam{beam}"] = _score(entry["scores"].get(("valid", beam)), "bleu")
        for beam in layout.BEAMS:
            test, dev = paper.get(variant, {}).get(beam, (None, None))
            row[f"paper_test_bleu_beam{beam}"] = test
            row[f"paper_dev_bleu_beam{beam}"] = dev
        row.update({
            "updates": training.get("updates"),
            "final_qn": training.get("qn"),
            "final_clip": training.get("clip"),
            "final_alpha": training.get("alpha"),
        })
        rows.append(row)
    return rows


def signatures(results):
    """{signature: [files]} over the BLEU files found."""
    found = {}
    for variant, entry in results["variants"].items():
        for key, data in entry["scores"].items():
            if data and isinstance(key, tuple) and data.get("signature"):
                found.setdefault(data["signature"], []).append(f"{variant}/{layout.bleu_file(*key)}")
    return found


def _test_dev(test, dev):
    if test is None and dev is None:
        return MISSING
    return f"{_fmt(test)} ({_fmt(dev)})"


def _updates(value):
    return MISSING if value is None else str(int(value))


def markdown(results, rows, figures):
    name, task = results["experiment"], results["task"]
    lines = []
    if task == "lm":
        dataset = layout.LM_EXPERIMENTS.get(name, name)
        lines += [
            f"# {name}: Table 2 (language modelling), test NLL per sentence",
            "",
            "NLL per sentence: natural log, `</s>` included, mean over the test sentences "
            "(`fairseq-skd-score-lm`); lower is better. Δ: difference to the baseline of the same "
            "column. Perplexity: exp(total NLL / total tokens).",
            "",
            f"| Model | Test NLL/sent. (ours) | Δ (ours) | Test ppl (ours) | Valid NLL/sent. (ours) "
            f"| Paper {dataset} | Δ (paper) | Updates | q_n | clip rate | alpha |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {_fmt(r['test_nll_per_sentence'])} | {_signed(r['delta_vs_baseline'])} "
                f"| {_fmt(r['test_ppl'])} | {_fmt(r['valid_nll_per_sentence'])} "
                f"| {_fmt(r['paper_test_nll_per_sentence'])} | {_signed(r['paper_delta_vs_baseline'])} "
                f"| {_updates(r['updates'])} | {_fmt(r['final_qn'], 4)} | {_fmt(r['final_clip'], 4)} "
                f"| {_fmt(r['final_alpha'], 4)} |"
            )
        counts = [f"{subset} {_sentences(results, subset)}" for subset in ("test", "valid")]
        lines += ["", f"Sentences scored: {', '.join(counts)}."]
    else:
        pair = layout.MT_EXPERIMENTS.get(name, name)
        lines += [
            f"# {name}: Table 3 (translation), BLEU test (dev)",
            "",
            "Detokenized sacreBLEU (`fairseq-skd-bleu`), test set with the development set in "
            f"parentheses, as in the paper; paper: {pair} rows of Table 3.",
            "",
            "| Model | Beam 1 (ours) | Beam 1 (paper) | Beam 12 (ours) | Beam 12 (paper) "
            "| Updates | q_n | clip rate | alpha |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {_test_dev(r['test_bleu_beam1'], r['dev_bleu_beam1'])} "
                f"| {_test_dev(r['paper_test_bleu_beam1'], r['paper_dev_bleu_beam1'])} "
                f"| {_test_dev(r['test_bleu_beam12'], r['dev_bleu_beam12'])} "
                f"| {_test_dev(r['paper_test_bleu_beam12'], r['paper_dev_bleu_beam12'])} "
                f"| {_updates(r['updates'])} | {_fmt(r['final_qn'], 4)} | {_fmt(r['final_clip'], 4)} "
                f"| {_fmt(r['final_alpha'], 4)} |"
            )
        sigs = signatures(results)
        lines.append("")
        if len(sigs) == 1:
            lines.append(f"sacreBLEU signature: `{next(iter(sigs))}`")
        elif sigs:
            lines.append("sacreBLEU signatures differ between files (scores not comparable):")
            lines += [f"- `{sig}`: {', '.join(files)}" for sig, files in sigs.items()]
        else:
            lines.append(f"sacreBLEU signature: {MISSING} (no BLEU file found)")
    lines += [
        "",
        "q_n: mean q_n (Eq. 8) over the positions where the prediction is not the target, as the "
        "criterion logs it, i.e. after clipping at --skd-qn-max (so it cannot rise above that "
        "value as the paper's Fig. 3(a) does); clip rate: the fraction of those q_n clipped; "
        "alpha: the SKD weight (Eq. 12). Values over the last "
        "epoch of training (`train` record of train.log; the last `train_inner` record if no epoch "
        f"finished). {MISSING}: not logged (the criterion is not self_kd_cross_entropy) or not run.",
    ]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"- `{name}`: {caption}" for name, caption in figures]
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in results["notes"]] or ["- none: every file was found"]
    return "\n".join(lines) + "\n"


def _sentences(results, subset):
    found = {data["sentences"] for entry in results["variants"].values()
             for data in [entry["scores"].get(subset)] if data and "sentences" in data}
    return MISSING if not found else "/".join(str(n) for n in sorted(found))


def _signed(value):
    return MISSING if value is None else f"{value:+.2f}"


def write_csv(path, rows, results):
    fields = list(rows[0])
    if results["task"] == "mt":
        fields.append("signature")
        sigs = signatures(results)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            out = {k: ("" if v is None else v) for k, v in row.items()}
            if results["task"] == "mt":
                mine = [s for s, files in sigs.items() if any(x.startswith(row["variant"] + "/") for x in files)]
                out["signature"] = " ; ".join(mine)
            writer.writerow(out)


# ---------------------------------------------------------------------------------------------
# figures


def _figure(ncols=1):
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg canvas for PNG

    fig = Figure(figsize=(5.5 * ncols, 4), layout="tight")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _plot_curves(results, kind, key, variants):
    curves = {}
    for variant in variants:
        logs = results["variants"][variant]["logs"]
        if logs:
            xs, ys = layout.series(logs, kind, key)
            if xs:
                curves[variant] = (xs, ys)
    return curves


def figure_qn_alpha(results, path):
    qn = _plot_curves(results, "train_inner", "skd_qn", layout.SKD_VARIANTS)
    alpha = _plot_curves(results, "train_inner", "skd_alpha", layout.SKD_VARIANTS)
    if not qn and not alpha:
        return False
    fig, (ax_q, ax_a) = _figure(2)
    for variant, (xs, ys) in qn.items():
        ax_q.plot(xs, ys, label=layout.VARIANT_NAMES[variant], linewidth=1)
    ax_q.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax_q.set(title=f"(a) q_n during training ({results['experiment']})", xlabel="updates",
             ylabel="mean q_n where prediction != target (as logged)")
    for variant, (xs, ys) in alpha.items():
        ax_a.plot(xs, ys, label=layout.VARIANT_NAMES[variant], linewidth=1)
    ax_a.set(title="(b) alpha schedule", xlabel="updates", ylabel="alpha")
    for ax in (ax_q, ax_a):
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return True


def figure_valid(results, path, key, ylabel, title):
    curves = _plot_curves(results, "valid", key, layout.VARIANTS)
    if not curves:
        return False
    fig, (ax,) = _figure(1)
    for variant, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=layout.VARIANT_NAMES[variant], linewidth=1)
    ax.set(title=title, xlabel="updates", ylabel=ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return True


def write_figures(results, out):
    name, written = results["experiment"], []
    if figure_qn_alpha(results, out / "fig3_qn_alpha.png"):
        written.append(("fig3_qn_alpha.png", "q_n and alpha over updates for the SKD variants (paper Fig. 3)"))
    else:
        results["notes"].append("fig3_qn_alpha.png not drawn: no skd_qn/skd_alpha in the SKD variants' logs")
    if results["task"] == "mt":
        if figure_valid(results, out / "fig4_valid_bleu.png", "valid_bleu", "validation BLEU",
                        f"Validation BLEU during training ({name})"):
            written.append(("fig4_valid_bleu.png", "validation BLEU over updates, all variants (paper Fig. 4)"))
        else:
            results["notes"].append("fig4_valid_bleu.png not drawn: no valid_bleu in the logs "
                                    "(train with --eval-bleu)")
    if figure_valid(results, out / "valid_loss.png", "valid_nll_loss",
                    "validation NLL per token (bits)", f"Validation loss during training ({name})"):
        written.append(("valid_loss.png", "validation NLL per token (base 2, cross-entropy part) over updates"))
    else:
        results["notes"].append("valid_loss.png not drawn: no valid records in the logs")
    return written


# ---------------------------------------------------------------------------------------------


def run(exp_dir, out=None, experiment=None, task=None, figures=True):
    """Collect, write results.md / results.csv (and figures); returns (results, rows, markdown)."""
    results = collect(exp_dir, experiment, task)
    out = Path(out) if out else Path(exp_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = lm_rows(results) if results["task"] == "lm" else mt_rows(results)
    written = write_figures(results, out) if figures else []
    text = markdown(results, rows, written)
    (out / "results.md").write_text(text)
    write_csv(out / "results.csv", rows, results)
    return results, rows, text


def main(argv=None):
    args = build_parser().parse_args(argv)
    require_packages("fairseq-skd-collect", [] if args.no_figures else ["matplotlib"])
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font search logs at DEBUG
    try:
        _, _, text = run(args.exp_dir, args.out, args.experiment, args.task, not args.no_figures)
    except CollectError as e:
        sys.exit(f"fairseq-skd-collect: error: {e}")
    print(text, end="")
    print(f"written to {Path(args.out or args.exp_dir)}/ (results.md, results.csv"
          f"{'' if args.no_figures else ', figures'})", flush=True)


if __name__ == "__main__":
    main()
