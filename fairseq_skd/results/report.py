"""One run folder's tables and figures: a row per variant, in the format of the paper's
Tables 2 and 3, the paper's numbers beside ours where the experiment is one of the paper's.

A run folder (``fairseq_skd.results.layout``) holds a folder per variant with ``train.log`` and
the score files of ``fairseq-skd-score-lm`` / ``fairseq-skd-score-mt`` / ``fairseq-skd-bleu``.
:func:`collect` reads it into plain data, :func:`rows` gives a row per variant (results.csv),
:func:`markdown` the tables (results.md):

- LM: test NLL per sentence (and perplexity) per variant, Table 2;
- MT: BLEU "test (dev)" for each beam decoded, Table 3, with the sacreBLEU signature(s);
- for every variant, the number of updates and, for the SKD variants, the mean q_n, the rate of
  clipped q_n and alpha over the last epoch of training (``train`` record; the last
  ``train_inner`` record if no epoch finished);
- both tasks: a prediction diagnostics table from each variant's ``score_test.json`` and its
  training log (:mod:`.diagnostics`);
- the figures of :mod:`.figures`.

Only the variants that have a folder get a row; a missing score file shows as "-" and is
listed under Notes. The subsets shown are those scored (a file of them in some variant).
``fairseq_skd.results.seeds`` pools the run folders of several seeds.
"""

import collections
import json
import re
import shlex
from pathlib import Path

from ..variants import NAMES, VARIANTS, definition_flags, uses_skd_criterion
from . import diagnostics, layout, paper
from .figures import write_figures
from .logs import is_number, parse_log, training_summary
from .tables import (MISSING, Column, count, elapsed, fmt, formatted, markdown_table, number,
                     signed, text, write_results)


class CollectError(Exception):
    """A user-facing failure: no such folder, nothing to collect."""


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


def infer_task(name, paper_name, variant_dirs):
    """lm or mt from the experiment's (or its paper experiment's) name, else from its score
    files: BLEU files anywhere make it MT (an MT variant has score_test.json too), score files
    alone LM; None if neither."""
    for known in (paper_name, name):
        if known in layout.LM_EXPERIMENTS:
            return "lm"
        if known in layout.MT_EXPERIMENTS:
            return "mt"
    for pattern, task in (("bleu_*.json", "mt"), ("score_*.json", "lm")):
        if any(any(d.glob(pattern)) for d in variant_dirs.values()):
            return task
    return None


def subsets_scored(variant_dirs):
    """The subsets with a score or BLEU file in some variant's folder, test first; test alone
    if there is none yet (its files are then reported missing)."""
    found = [subset for subset in layout.SUBSETS
             if any(any(d.glob(f"*_{subset}*.json")) for d in variant_dirs.values())]
    return tuple(found) or ("test",)


def collect(exp_dir, name=None, task=None, paper_name=None):
    """Everything the tables and figures need, as plain data. ``name``: the experiment's name in
    titles (default: the folder's); ``paper_name``: the paper experiment whose numbers go beside
    ours (``layout.LM_EXPERIMENTS`` / ``MT_EXPERIMENTS``), None for none."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise CollectError(f"experiment folder not found: {exp_dir}")
    variant_dirs = {v: exp_dir / v for v in VARIANTS if (exp_dir / v).is_dir()}
    if not variant_dirs:
        raise CollectError(f"{exp_dir} has no variant folder (expected one or more of "
                           f"{', '.join(VARIANTS)}, or seed<N> folders holding them)")
    name = name or exp_dir.resolve().name
    task = task or infer_task(name, paper_name, variant_dirs)
    if task is None:
        raise CollectError(f"cannot tell whether {exp_dir} is an LM or MT experiment (unknown name "
                           f"'{name}' and no score files): pass --task lm or --task mt")
    if paper_name is not None and paper_name not in paper.table(task):
        raise CollectError(f"no paper numbers for '{paper_name}' in the {task} table (known: "
                           f"{', '.join(sorted(paper.table(task)))})")
    notes = []
    others = sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and p.name not in VARIANTS)
    if others:
        notes.append(f"folders ignored (not a variant): {', '.join(others)}")
    subsets = subsets_scored(variant_dirs)
    beams = beams_decoded(variant_dirs.values()) if task == "mt" else ()
    variants = {}
    for variant, d in variant_dirs.items():
        entry = {"logs": None, "training": None, "scores": {}}
        variants[variant] = entry
        log = d / layout.TRAIN_LOG
        if log.is_file():
            entry["logs"] = parse_log(log)
            entry["training"] = training_summary(entry["logs"])
            if not entry["logs"]["train_inner"] and not entry["logs"]["valid"]:
                notes.append(f"{variant}: {layout.TRAIN_LOG} has no JSON train_inner/valid records "
                             "(was it run with --log-format json?)")
        else:
            notes.append(f"{variant}: {layout.TRAIN_LOG} missing (no curves, no q_n)")
        for subset in subsets:
            # LM: the NLL and diagnostics of every subset; MT: BLEU, and the test set's
            # teacher-forced NLL and diagnostics
            if task == "lm" or subset == "test":
                data = _read_json(d / layout.score_file(subset), notes, variant)
                if data is not None and data.get("subset", subset) != subset:
                    notes.append(f"{variant}: {layout.score_file(subset)} is for subset "
                                 f"'{data['subset']}'")
                if data is not None and subset == "test" and "mean_entropy" not in data:
                    notes.append(f"{variant}: {layout.score_file(subset)} has no prediction "
                                 "diagnostics (score it again with this version)")
                entry["scores"][subset] = data
            if task == "mt":
                for beam in beams:
                    entry["scores"][(subset, beam)] = _read_json(d / layout.bleu_file(subset, beam),
                                                                 notes, variant)
        train_sample = d / layout.score_file(layout.TRAIN_SAMPLE)
        if train_sample.is_file():
            entry["scores"][layout.TRAIN_SAMPLE] = _read_json(train_sample, notes, variant)
    # once every run's log is read: a distilled variant's cost counts its teacher's training
    trained = {d.resolve(): variants[v]["training"] for v, d in variant_dirs.items()}
    for variant, d in variant_dirs.items():
        variants[variant]["cost"] = training_cost(d, variants[variant]["training"], exp_dir,
                                                  notes, variant, trained)
    notes += command_differences(variant_dirs)
    _check_sentence_counts(variants, notes)
    return {"experiment": name, "task": task, "exp_dir": str(exp_dir), "variants": variants,
            "subsets": subsets, "beams": beams, "paper": paper_name, "notes": notes}


def training_cost(variant_dir, training, exp_dir, notes, variant, trained=None):
    """{"updates", "seconds"}: what the variant cost to train, its teacher's training and the
    translation pass of sequence-level KD included (``inputs.json``, written by the recipes for
    the variants that learn from a teacher); None where the training log gives no figure.
    ``trained``: the training summaries read already, by run folder (resolved)."""
    if not training or training.get("updates") is None:
        return None
    updates, seconds = training["updates"], training.get("seconds")
    inputs_path = variant_dir / layout.INPUTS
    if not inputs_path.is_file():
        return {"updates": updates, "seconds": seconds}
    inputs = _read_json(inputs_path, notes, variant) or {}

    def found(path):
        path = Path(path)
        return path if path.is_absolute() else Path(exp_dir) / path

    teacher_run = inputs.get("teacher_run") and found(inputs["teacher_run"])
    teacher = (trained or {}).get(teacher_run.resolve()) if teacher_run else None
    if teacher is None and teacher_run and (teacher_run / layout.TRAIN_LOG).is_file():
        teacher = training_summary(parse_log(teacher_run / layout.TRAIN_LOG))
    if teacher is not None:
        updates += teacher.get("updates") or 0
        seconds = None if seconds is None or teacher.get("seconds") is None else \
            seconds + teacher["seconds"]
    elif inputs.get("teacher"):
        notes.append(f"{variant}: its teacher ({inputs['teacher']}) was not trained in this "
                     "experiment: its cost counts the student's training alone")
    translation = inputs.get("translation")
    if translation:
        data = _read_json(found(translation), notes, variant)
        if data and is_number(data.get("seconds")) and seconds is not None:
            seconds += data["seconds"]
    return {"updates": updates, "seconds": seconds}


def training_command(log):
    """The words of the fairseq-train command a train.log records first (``# DATE TIME CMD``,
    fairseq-skd-train --log's line), or None."""
    if not log.is_file():
        return None
    with open(log, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    return shlex.split(first)[3:] if first.startswith("# ") else None


def flag_pairs(words, skip=()):
    """(flag, value) pairs of a command line, the program and the paths that differ by run
    (``skip``) left out; a flag without a value has None."""
    pairs = []
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
            if word not in skip:
                pairs.append((word, value))
    return pairs


def command_differences(variant_dirs):
    """Notes on every flag in which a variant's training command differs from the baseline's
    beyond what the variant's definition (fairseq_skd/variants.py) sets: a difference the table
    would otherwise credit to the variant."""
    per_run = ("--save-dir", "--log", "--kd-teacher")
    commands = {v: training_command(d / layout.TRAIN_LOG) for v, d in variant_dirs.items()}
    if commands.get("baseline") is None:
        return []
    baseline = collections.Counter(flag_pairs(commands["baseline"], per_run))
    baseline -= collections.Counter({("--criterion", "cross_entropy"): 1})
    notes = []
    for variant, command in commands.items():
        if variant == "baseline" or command is None:
            continue
        pairs, own = flag_pairs(command, per_run), set(definition_flags(variant))
        beyond = []
        for flag, value in pairs:  # the definition's flags, once each
            if flag in own:
                own.discard(flag)
            else:
                beyond.append((flag, value))
        extra = collections.Counter(beyond) - baseline
        missing = baseline - collections.Counter(beyond)
        if extra or missing:
            said = [f"{flag} {value}" if value is not None else flag for flag, value in extra]
            said += [f"not {flag} {value}" if value is not None else f"not {flag}"
                     for flag, value in missing]
            notes.append(f"{variant}: its training command differs from the baseline's beyond "
                         f"the variant's definition: {', '.join(said)}")
    return notes


def beams_decoded(variant_dirs):
    """The beam widths of the BLEU files present (a recipe's --beams), else the paper's."""
    found = {int(m.group(1)) for d in variant_dirs for p in d.glob("bleu_*_beam*.json")
             if (m := re.search(r"_beam(\d+)\.json$", p.name))}
    return tuple(sorted(found)) or layout.BEAMS


def _check_sentence_counts(variants, notes):
    counts = {}
    for variant, entry in variants.items():
        for key, data in entry["scores"].items():
            if data and is_number(data.get("sentences")):
                counts.setdefault(key, {})[variant] = data["sentences"]
    for key, per_variant in counts.items():
        if len(set(per_variant.values())) > 1:
            label = key if isinstance(key, str) else f"{key[0]} beam {key[1]}"
            notes.append(f"{label}: variants were scored on different numbers of sentences "
                         f"({per_variant}); their scores are not comparable")


# ---------------------------------------------------------------------------------------------
# rows (results.csv) and tables (results.md)


# fairseq-skd-score-lm/-mt's q_n at one sigma (fairseq_skd.evaluation.qn)
QN_KEYS = ("qn_sigma", "median_qn", "clip_rate", "median_distance")


def _score(data, key):
    value = data.get(key) if data else None
    return value if is_number(value) else None


def _training_columns(variant, entry):
    """The training log's values and the cost; alpha is 0 for a variant trained without the SKD
    criterion, which logs none."""
    training, cost = entry["training"] or {}, entry.get("cost") or {}
    alpha = training.get("alpha")
    if alpha is None and training and not uses_skd_criterion(variant):
        alpha = 0.0
    return {"updates": training.get("updates"), "seconds": training.get("seconds"),
            "cost_updates": cost.get("updates"), "cost_seconds": cost.get("seconds"),
            "best_valid_loss": training.get("best_valid_loss"),
            "final_qn": training.get("qn"), "final_clip": training.get("clip"),
            "final_alpha": alpha}


def _test_set_columns(entry):
    """score_test.json's diagnostics and q_n, the training log's regime, and the test - train
    NLL gap (score_test.json against score_train.json)."""
    test, training = entry["scores"].get("test"), entry["training"] or {}
    test_nll = _score(test, "nll_per_token")
    train_nll = _score(entry["scores"].get(layout.TRAIN_SAMPLE), "nll_per_token")
    return {**{key: _score(test, key) for key in (*diagnostics.SCORE_KEYS, *QN_KEYS)},
            "best_epoch": training.get("best_epoch"), "epochs": training.get("epochs"),
            "rise_after_best": training.get("rise_after_best"),
            "test_train_gap": None if test_nll is None or train_nll is None else test_nll - train_nll}


def _only(results, row):
    """``row`` without the columns of subsets not scored and, without the paper, its columns."""
    prefixes = {"test": ("test_",), "valid": ("valid_", "dev_")}  # MT calls valid "dev"
    dropped = tuple(p for s in layout.SUBSETS if s not in results["subsets"] for p in prefixes[s])
    dropped += () if results["paper"] else ("paper_",)
    return {k: v for k, v in row.items() if not k.startswith(dropped)}


def lm_rows(results):
    name = results["paper"]
    base = results["variants"].get("baseline", {"scores": {}})["scores"].get("test")
    base_ours, base_paper = _score(base, "nll_per_sentence"), paper.nll_per_sentence(name, "baseline")
    rows = []
    for variant, entry in results["variants"].items():
        test, valid = entry["scores"].get("test"), entry["scores"].get("valid")
        ours, theirs = _score(test, "nll_per_sentence"), paper.nll_per_sentence(name, variant)
        rows.append(_only(results, {
            "experiment": results["experiment"],
            "variant": variant,
            "model": NAMES[variant],
            "test_nll_per_sentence": ours,
            "test_ppl": _score(test, "ppl"),
            "test_sentences": _score(test, "sentences"),
            "valid_nll_per_sentence": _score(valid, "nll_per_sentence"),
            "valid_ppl": _score(valid, "ppl"),
            "delta_vs_baseline": None if ours is None or base_ours is None else ours - base_ours,
            "paper_test_nll_per_sentence": theirs,
            "paper_delta_vs_baseline": None if theirs is None or base_paper is None else theirs - base_paper,
            **_training_columns(variant, entry),
            **_test_set_columns(entry),
        }))
    return rows


def mt_rows(results):
    name = results["paper"]
    sigs = signatures(results)
    rows = []
    for variant, entry in results["variants"].items():
        row = {"experiment": results["experiment"], "variant": variant, "model": NAMES[variant]}
        for beam in results["beams"]:
            row[f"test_bleu_beam{beam}"] = _score(entry["scores"].get(("test", beam)), "bleu")
            row[f"dev_bleu_beam{beam}"] = _score(entry["scores"].get(("valid", beam)), "bleu")
        for beam in results["beams"]:
            row[f"paper_test_bleu_beam{beam}"] = paper.bleu(name, variant, beam, "test")
            row[f"paper_dev_bleu_beam{beam}"] = paper.bleu(name, variant, beam, "valid")
        row.update(_training_columns(variant, entry))
        row.update(_test_set_columns(entry))
        row["signature"] = " ; ".join(s for s, files in sigs.items()
                                      if any(x.startswith(variant + "/") for x in files))
        rows.append(_only(results, row))
    return rows


def signatures(results):
    """{signature: [files]} over the BLEU files found."""
    found = {}
    for variant, entry in results["variants"].items():
        for key, data in entry["scores"].items():
            if data and isinstance(key, tuple) and data.get("signature"):
                found.setdefault(data["signature"], []).append(f"{variant}/{layout.bleu_file(*key)}")
    return found


def _test_dev(test_key, dev_key):
    """A "test (dev)" cell; "test" alone where the row has no ``dev_key`` column."""
    def cell(row):
        if dev_key not in row:
            return fmt(row.get(test_key))
        if row.get(test_key) is None and row.get(dev_key) is None:
            return MISSING
        return f"{fmt(row.get(test_key))} ({fmt(row.get(dev_key))})"
    return cell


# The training log's values (one meaning in every table: the last epoch of training).
TRAINING_COLUMNS = [
    Column("Updates", lambda row: count(row["updates"])),
    Column("Time", lambda row: elapsed(row["seconds"])),
    Column("Cost: updates", lambda row: count(row["cost_updates"])),
    Column("Cost: time", lambda row: elapsed(row["cost_seconds"])),
    Column("train q_n", number("final_qn", 4)),
    Column("train clip rate", number("final_clip", 4)),
    Column("final alpha", number("final_alpha", 4)),
]
TRAINING_LEGEND = (
    "Updates, Time: the variant's own training (fairseq's wall clock, resumes included); Cost: "
    "the same with what it needed first, the training of its teacher (KD: the same seed's "
    "baseline unless --teacher) and the teacher's translation of the training set "
    "(sequence-level KD). train q_n: the mean q_n (Eq. 8) over the training positions where the prediction is not "
    "the target, as the criterion logs it, i.e. after clipping at --skd-qn-max (so it cannot "
    "rise above that value as the paper's Fig. 3(a) does); train clip rate: the fraction of "
    "those q_n clipped; final alpha: the SKD weight (Eq. 12; 0 for the variants trained without "
    "SKD). All three over the last epoch of training (`train` record of train.log; the last "
    f"`train_inner` record if no epoch finished). {MISSING}: not logged (the criterion is not "
    "self_kd_cross_entropy).")


def lm_columns(results):
    dataset = layout.LM_EXPERIMENTS.get(results["paper"], results["paper"])
    columns = [
        Column("Model", text("model"), align="left"),
        Column("Test NLL/sent. (ours)", number("test_nll_per_sentence")),
        Column("Δ (ours)", lambda row: signed(row["delta_vs_baseline"])),
        Column("Test ppl (ours)", number("test_ppl")),
    ]
    if "valid" in results["subsets"]:
        columns.append(Column("Valid NLL/sent. (ours)", number("valid_nll_per_sentence")))
    if results["paper"]:
        columns += [Column(f"Paper {dataset}", number("paper_test_nll_per_sentence")),
                    Column("Δ (paper)", lambda row: signed(row["paper_delta_vs_baseline"]))]
    return columns + TRAINING_COLUMNS


def mt_columns(results):
    columns = [Column("Model", text("model"), align="left")]
    for beam in results["beams"]:
        columns.append(Column(f"Beam {beam} (ours)",
                              _test_dev(f"test_bleu_beam{beam}", f"dev_bleu_beam{beam}")))
        if results["paper"]:
            columns.append(Column(f"Beam {beam} (paper)", _test_dev(f"paper_test_bleu_beam{beam}",
                                                                   f"paper_dev_bleu_beam{beam}")))
    return columns + TRAINING_COLUMNS


DIAGNOSTICS_TITLE = "## Prediction diagnostics (test set)"


def diagnostics_columns():
    return [Column("Model", text("model"), align="left")] + [
        Column(header, formatted(key, template)) for key, header, template in diagnostics.COLUMNS]


def markdown(results, rows, figures):
    name, task = results["experiment"], results["task"]
    if task == "lm":
        lines = [
            f"# {name}: Table 2 (language modelling), test NLL per sentence",
            "",
            "NLL per sentence: natural log, `</s>` included, mean over the test sentences "
            "(`fairseq-skd-score-lm`); lower is better. Δ: difference to the baseline of the same "
            "column. Perplexity: exp(total NLL / total tokens).",
            "",
            *markdown_table(lm_columns(results), rows),
        ]
        counts = [f"{subset} {_sentences(results, subset)}" for subset in results["subsets"]]
        lines += ["", f"Sentences scored: {', '.join(counts)}."]
    else:
        pair = layout.MT_EXPERIMENTS.get(results["paper"], results["paper"])
        dev = "valid" in results["subsets"]
        lines = [
            f"# {name}: Table 3 (translation), BLEU test{' (dev)' if dev else ''}",
            "",
            "Detokenized sacreBLEU (`fairseq-skd-bleu`), "
            + ("test set with the development set in parentheses, as in the paper"
               if dev else "test set")
            + (f"; paper: {pair} rows of Table 3." if results["paper"] else "."),
            "",
            *markdown_table(mt_columns(results), rows),
        ]
        sigs = signatures(results)
        lines.append("")
        if len(sigs) == 1:
            lines.append(f"sacreBLEU signature: `{next(iter(sigs))}`")
        elif sigs:
            lines.append("sacreBLEU signatures differ between files (scores not comparable):")
            lines += [f"- `{sig}`: {', '.join(files)}" for sig, files in sigs.items()]
        else:
            lines.append(f"sacreBLEU signature: {MISSING} (no BLEU file found)")
    lines += ["", TRAINING_LEGEND, "", DIAGNOSTICS_TITLE, "",
              *markdown_table(diagnostics_columns(), rows), "", diagnostics.LEGEND]
    if figures:
        lines += ["", "## Figures", ""]
        for drawn in figures:
            variants = dict.fromkeys(v for panel in drawn.curves.values() for v in panel)
            lines.append(f"- `{drawn.file}`: {drawn.caption}; curves: "
                         + ", ".join(NAMES[v] for v in variants))
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in results["notes"]] or ["- none: every file was found"]
    return "\n".join(lines) + "\n"


def _sentences(results, subset):
    found = {data["sentences"] for entry in results["variants"].values()
             for data in [entry["scores"].get(subset)] if data and "sentences" in data}
    return MISSING if not found else "/".join(str(n) for n in sorted(found))


def rows(results):
    """A row per variant (results.csv's; the tables' cells)."""
    return lm_rows(results) if results["task"] == "lm" else mt_rows(results)


def write(results, out, figures=True):
    """results.md and results.csv of one run folder (and its figures) into ``out``; returns
    (rows, markdown), the figures drawn in ``results["figures"]``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    results["figures"] = write_figures(results, out) if figures else []
    md = markdown(results, table, results["figures"])
    write_results(out, md, table)
    return table, md
