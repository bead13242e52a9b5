"""An experiment over several seeds: each seed's run folder reported as :mod:`.report` does, and
one table over the seeds, mean ± std, with a plain line per variant saying whether it beat the
baseline by more than the spread over seeds.

``EXP_DIR/seed<N>/`` (:mod:`.layout`) gets its own results.md, results.csv and figures;
``EXP_DIR/results.md`` the tables over the seeds (scores, then the prediction diagnostics),
``EXP_DIR/results.csv`` every seed's rows and ``EXP_DIR/reliability.png`` the test set's
reliability diagram with the seeds pooled. A ``smoke`` run's tables say that they are a
plumbing check and give no verdict.
"""

import statistics
from pathlib import Path

from ..variants import NAMES
from . import diagnostics, figures, layout, paper, report
from .tables import Column, markdown_table, text, write_results

SMOKE_NOTE = ("a --smoke run: tiny corpora and models, a plumbing check that every step runs; "
              "its numbers say nothing about SKD, and no variant is compared with the baseline.")

# The scores table: (row key, header, format, which way is better for the verdict)
LM_METRICS = [("test_nll_per_sentence", "test NLL/sentence", "{:.3f}", "lower"),
              ("test_ppl", "test ppl", "{:.3f}", None)]
TRAINING_COLUMNS = [("cost_updates", "cost: updates", "{:.0f}"),
                    ("cost_seconds", "cost: time (s)", "{:.0f}"),
                    ("best_valid_loss", "best valid loss (base 2)", "{:.4f}"),
                    ("final_alpha", "final alpha", "{:.3f}"), ("median_qn", "median q_n", "{:.3f}"),
                    ("clip_rate", "clip rate", "{:.3f}")]
PAPER_COLUMNS = {"lm": "paper: {} NLL/sentence", "mt": "paper: {} test BLEU beam {}"}


def mt_metrics(beams):
    return [(f"test_bleu_beam{b}", f"test BLEU beam {b}", "{:.2f}", "higher") for b in beams]


def mean_and_spread(values, fmt):
    """"mean ± std" of ``values`` in ``fmt`` (the value alone for one; ``-`` if one is missing)."""
    if not values or None in values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    spread = fmt.replace("{:+", "{:")  # a signed mean, an unsigned spread
    return f"{fmt.format(statistics.mean(values))} ± {spread.format(statistics.stdev(values))}"


def verdict(variant, values, baseline, metric, fmt, better):
    """One plain line: did the variant beat the baseline, and is the difference larger than
    the spread over seeds (the larger of the two standard deviations)?"""
    value, base = statistics.mean(values), statistics.mean(baseline)
    if fmt.format(value) == fmt.format(base):
        return f"- {variant} tied with the baseline on {metric} ({fmt.format(value)})."
    won = value < base if better == "lower" else value > base
    line = (f"- {variant} {'beat' if won else 'did NOT beat'} the baseline on {metric} "
            f"({fmt.format(value)} vs {fmt.format(base)})")
    if len(values) > 1 and len(baseline) > 1:
        spread = max(statistics.stdev(values), statistics.stdev(baseline))
        if abs(value - base) <= spread:
            line += f", but by less than the spread over seeds ({fmt.format(spread)}): no clear difference"
    else:
        line += "; one seed, so no spread to tell a difference from noise"
    return line + "."


def seeds_said(seeds):
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {' '.join(map(str, seeds))}"


def by_variant(rows):
    """{variant: [its rows, one per seed]}, in the order the rows come."""
    grouped = {}
    for row in rows:
        grouped.setdefault(row["variant"], []).append(row)
    return grouped


def paper_cell(task, paper_name, variant, beams):
    if task == "lm":
        values = [paper.nll_per_sentence(paper_name, variant)]
    else:
        values = [paper.bleu(paper_name, variant, beam) for beam in beams]
    return "-" if None in values else " / ".join(f"{v:.2f}" for v in values)


def scores_table(task, rows, seeds, beams, paper_name, smoke):
    """The scores over seeds: title, table and, unless ``smoke``, a verdict per variant."""
    metrics = LM_METRICS if task == "lm" else mt_metrics(beams)
    if smoke:
        title = "plumbing check (--smoke), not a result"
    elif len(seeds) == 1:
        title = f"seed {seeds[0]} (one seed: no spread)"
    else:
        title = f"{len(seeds)} seeds ({' '.join(map(str, seeds))}), mean ± std over seeds"
    lines = [f"## {layout.TASK_TITLES[task]}: {title}", ""]
    if smoke:
        lines += [f"This is {SMOKE_NOTE}", ""]
    columns = [(key, header, fmt) for key, header, fmt, _ in metrics] + TRAINING_COLUMNS
    cells = []
    for variant, runs in by_variant(rows).items():
        cell = {key: mean_and_spread([r.get(key) for r in runs], fmt) for key, _, fmt in columns}
        cells.append({**cell, "model": NAMES[variant],
                      "paper": paper_cell(task, paper_name, variant, beams)})
    paper_header = []
    if paper_name:
        where = (layout.LM_EXPERIMENTS if task == "lm" else layout.MT_EXPERIMENTS)[paper_name]
        label = PAPER_COLUMNS[task].format(where, " / ".join(map(str, beams)))
        paper_header = [Column(label, text("paper"))]
    lines += markdown_table([Column("model", text("model"), align="left")]
                            + [Column(header, text(key)) for key, header, _ in columns]
                            + paper_header, cells)
    key, metric, fmt, better = metrics[0]
    groups = by_variant(rows)
    baseline = [r.get(key) for r in groups.get("baseline", [])]
    if not smoke and baseline and None not in baseline:
        lines.append("")
        lines += [verdict(NAMES[v], values, baseline, metric, fmt, better)
                  for v, runs in groups.items() if v != "baseline"
                  for values in [[r.get(key) for r in runs]] if None not in values]
    return lines


def diagnostics_table(task, rows, seeds, smoke):
    """The prediction diagnostics over seeds: a row per variant, mean ± std."""
    spread = "" if smoke or len(seeds) == 1 else ", mean ± std over seeds"
    lines = [f"## {layout.TASK_NAMES[task]}: prediction diagnostics on the test set{spread}", ""]
    cells = []
    for variant, runs in by_variant(rows).items():
        cell = {"model": NAMES[variant]}
        for key, _, template in diagnostics.COLUMNS:
            if key in ("best_epoch", "epochs") and len(runs) > 1:
                template = "{:.1f}"  # a mean of whole epochs
            cell[key] = mean_and_spread([r.get(key) for r in runs], template)
        cells.append(cell)
    return lines + markdown_table([Column("model", text("model"), align="left")]
                                  + [Column(header, text(key))
                                     for key, header, _ in diagnostics.COLUMNS], cells)


def reliability_figure(task, reliability, seeds, out):
    """``out``/reliability.png: a curve per variant, its seeds pooled; the Drawn figure or None.
    ``reliability``: {variant: [each seed's reliability table]}."""
    pooled = {v: diagnostics.pool_reliability(tables) for v, tables in reliability.items()}
    fig = figures.reliability_diagram(pooled, f"{layout.TASK_NAMES[task]}, {seeds_said(seeds)}")
    if fig is None:
        return None
    fig.savefig(Path(out) / "reliability.png", dpi=120)
    pooling = ("" if len(seeds) == 1 else "; the seeds pooled: bin counts summed, each bin's "
               "confidence and accuracy weighted by its counts")
    return figures.Drawn("reliability.png",
                         f"{figures.RELIABILITY_CAPTION}; {seeds_said(seeds)}{pooling}",
                         figures.plotted_variants(fig))


def legend(task, rows):
    """What the scores table's columns mean."""
    sigmas = sorted({r["qn_sigma"] for r in rows if r.get("qn_sigma") is not None})
    sigma = " and ".join(f"{s:.3g}" for s in sigmas) or "sigma"
    score = ("LM: test NLL per sentence in nats (sum over each sentence's tokens incl. </s>, "
             "mean over sentences, as in the paper's Table 2)" if task == "lm"
             else "MT: detokenized sacreBLEU on the test set")
    return (f"{score}. cost: the updates and seconds (fairseq's wall clock) of the variant's "
            "training, with those of its teacher's training (the KD variants: the same seed's "
            "baseline unless --teacher) and of the teacher's translation of the training set "
            "(sequence-level KD). best valid loss: the lowest validation NLL per token (base 2). final "
            "alpha: the SKD weight over the last epoch of training (0 for the variants trained "
            f"without SKD). median q_n / clip rate: q_n = min(exp(-{sigma} d(W_t, W_n)), 0.5) "
            "measured on the test set after training, over the positions where the trained "
            "model's prediction n differs from the target t, at the same sigma for every row "
            "(the per-seed tables' train q_n is another quantity: the training log's mean over "
            "the last epoch); a clip rate near 1 means sigma did not suit the embedding scale. "
            "Same data and budget for every variant, and the same seeds; tables and figures per "
            "seed in seed<N>/. The paper's numbers, where shown, are beside ours for the row "
            "they correspond to, not as a target: different data, sizes and budgets.")


def write(exp_dir, out=None, name=None, task=None, paper_name=None, smoke=False, draw=True):
    """Report ``exp_dir``: each seed's run folder into that folder, the tables over the seeds
    into ``out`` (default ``exp_dir``). A folder without seed folders is one run
    (:func:`report.write`). Returns the markdown of ``out``/results.md."""
    exp_dir = Path(exp_dir)
    out = Path(out) if out else exp_dir
    name = name or exp_dir.resolve().name
    runs = layout.seed_dirs(exp_dir) if exp_dir.is_dir() else {}
    if not runs:
        results = report.collect(exp_dir, name, task, paper_name)
        return report.write(results, out, draw)[1]
    rows, reliability, notes, beams = [], {}, [], ()
    for seed, run_dir in runs.items():
        results = report.collect(run_dir, f"{name}, seed {seed}", task, paper_name)
        table, _ = report.write(results, run_dir, draw)
        task, beams = results["task"], results["beams"] or beams
        rows += [{"seed": seed, **row} for row in table]
        for variant, entry in results["variants"].items():
            test = entry["scores"].get("test") or {}
            reliability.setdefault(variant, []).append(test.get("reliability"))
        notes += [f"seed {seed}: {note}" for note in results["notes"]]
    seeds = list(runs)
    out.mkdir(parents=True, exist_ok=True)
    lines = [*scores_table(task, rows, seeds, beams, paper_name, smoke), "",
             *diagnostics_table(task, rows, seeds, smoke), ""]
    drawn = reliability_figure(task, reliability, seeds, out) if draw else None
    if drawn:
        curves = dict.fromkeys(v for panel in drawn.curves.values() for v in panel)
        lines += [f"`{drawn.file}`: {drawn.caption}; curves: "
                  + ", ".join(NAMES[v] for v in curves), ""]
    lines += [legend(task, rows), "", diagnostics.LEGEND, "", "## Notes", ""]
    lines += [f"- {note}" for note in notes] or ["- none: every file was found"]
    md = "\n".join(lines) + "\n"
    write_results(out, md, rows)
    return md
