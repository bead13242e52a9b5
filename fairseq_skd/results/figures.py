"""The figures of one experiment folder, from the variants' parsed training logs and test scores,
and the reliability diagram that the offline study also draws for its pooled seeds.

``results`` is what ``fairseq-skd-collect`` collects: ``{"experiment": name, "task": "lm" | "mt",
"variants": {variant: {"logs": parse_log(...) or None, "scores": {"test": score_test.json or
None, ...}}}, "notes": [...]}``. Each figure is drawn with matplotlib's object API (no pyplot,
no global backend) and saved as PNG; each variant's curve keeps one colour, line style and
marker in every figure, so that curves that lie on each other stay visible, and its line's
``gid`` is the variant's name.
"""

from dataclasses import dataclass, field

from ..variants import NAMES, PAPER, VARIANTS, applies_skd
from .logs import series

# colour, line style, hollow marker: a curve drawn over another leaves it visible
STYLES = {
    "baseline": {"color": "C0", "linestyle": "-", "marker": "o"},
    "noise": {"color": "C1", "linestyle": "--", "marker": "s"},
    "skd": {"color": "C2", "linestyle": "-.", "marker": "^"},
    "noise_skd": {"color": "C3", "linestyle": ":", "marker": "v"},
}
# the variants beyond the paper's four: the other colours, line styles and markers in turn
STYLES.update({variant: {"color": f"C{4 + i % 6}", "linestyle": ("-", "--", "-.", ":")[i % 4],
                         "marker": ("D", "P", "X", "<", ">", "h", "*", "p")[i % 8]}
               for i, variant in enumerate(v for v in VARIANTS if v not in PAPER)})
QN_CLIP = 0.5  # --skd-qn-max's default, the paper's clip (Eq. 8)


@dataclass
class Drawn:
    """A figure that was written: its file name, its caption and, per panel (the axes'
    title), the variants that have a curve in it, read back from the figure's lines."""
    file: str
    caption: str
    curves: dict = field(default_factory=dict)


def _figure(ncols=1):
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg canvas for PNG

    fig = Figure(figsize=(5.5 * ncols, 4), layout="tight")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _curves(results, kind, key, variants=None):
    """{variant: (updates, values)} of ``key`` in the ``kind`` records of each of ``variants``
    (default: every variant collected) that logged it."""
    curves = {}
    for variant in variants or results["variants"]:
        logs = results["variants"][variant]["logs"]
        if logs:
            xs, ys = series(logs, kind, key)
            if xs:
                curves[variant] = (xs, ys)
    return curves


def _plot(ax, curves, markevery=None):
    for variant, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=NAMES[variant], gid=variant, linewidth=1.2, markersize=5,
                markerfacecolor="none", markevery=markevery, **STYLES[variant])


def _finish(ax, title, ylabel, xlabel="updates"):
    from matplotlib.ticker import MaxNLocator

    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if xlabel == "updates":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # updates are whole numbers
    if ax.lines:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def plotted_variants(fig):
    """{panel title: [variants with a curve]} of a figure drawn here."""
    return {ax.get_title(): [line.get_gid() for line in ax.get_lines() if line.get_gid() in STYLES]
            for ax in fig.axes}


def qn_alpha(results):
    """Fig. 3: (a) the logged mean q_n (b) alpha, over updates, for the SKD variants; None if
    no SKD variant logged them."""
    skd = [v for v in results["variants"] if applies_skd(v)]
    qn = _curves(results, "train_inner", "skd_qn", skd)
    alpha = _curves(results, "train_inner", "skd_alpha", skd)
    if not qn and not alpha:
        return None
    fig, (ax_q, ax_a) = _figure(2)
    every = max(1, max((len(xs) for xs, _ in qn.values()), default=0) // 20)
    _plot(ax_q, qn, markevery=every)
    ax_q.axhline(QN_CLIP, color="grey", linestyle=":", linewidth=1,
                 label=f"clip: q_n <= {QN_CLIP} (--skd-qn-max)")
    _finish(ax_q, f"(a) q_n during training ({results['experiment']})",
            "mean q_n where prediction != target (as logged)")
    _plot(ax_a, alpha, markevery=every)
    _finish(ax_a, "(b) alpha schedule", "alpha")
    return fig


def validation_curves(results, key, ylabel, title):
    """``key`` of the valid records over updates, one curve per variant that logged it; None
    if none did."""
    curves = _curves(results, "valid", key)
    if not curves:
        return None
    fig, (ax,) = _figure(1)
    _plot(ax, curves)
    _finish(ax, title, ylabel)
    return fig


def reliability_points(table):
    """(mean confidence, accuracy, tokens) of the bins of a reliability table (score_test.json's
    ``reliability``) that hold tokens."""
    kept = [b for b in table if b["count"] > 0]
    return ([b["confidence"] for b in kept], [b["accuracy"] for b in kept],
            [b["count"] for b in kept])


RELIABILITY_CAPTION = (
    "reliability diagram of the test set (before temperature scaling): (a) accuracy against "
    "confidence, a point per bin of the argmax probability (15 equal-width bins) at the bin's "
    "mean confidence, bins with no tokens skipped; below the dotted diagonal is over-confident; "
    "(b) the share of test tokens in each bin")


def reliability_diagram(tables, title):
    """(a) accuracy against confidence per bin, a curve per variant, and the diagonal; (b) the
    share of tokens per bin. ``tables``: {variant: reliability table or None}; None if no
    variant has one."""
    tables = {v: t for v, t in tables.items() if t and any(b["count"] > 0 for b in t)}
    if not tables:
        return None
    fig, (ax, ax_share) = _figure(2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    shares = {}
    for variant, table in tables.items():
        confidence, accuracy, _ = reliability_points(table)
        total = sum(b["count"] for b in table)
        shares[variant] = ([(b["lower"] + b["upper"]) / 2 for b in table],
                           [b["count"] / total for b in table])
        ax.plot(confidence, accuracy, label=NAMES[variant], gid=variant, linewidth=1.2,
                markersize=5, markerfacecolor="none", **STYLES[variant])
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    _finish(ax, f"(a) reliability ({title})", "accuracy of the argmax", "confidence (argmax probability)")
    _plot(ax_share, shares)
    ax_share.set(xlim=(0, 1))
    _finish(ax_share, "(b) tokens per confidence bin", "share of tokens",
            "confidence (argmax probability)")
    return fig


def reliability_tables(results):
    """{variant: the reliability table of its score_test.json} of the variants that have one."""
    found = {}
    for variant, entry in results["variants"].items():
        data = entry["scores"].get("test")
        if data and data.get("reliability"):
            found[variant] = data["reliability"]
    return found


def write_figures(results, out):
    """Draw the experiment's figures into ``out``; returns the :class:`Drawn` ones, and adds a
    note to ``results["notes"]`` for each one that could not be drawn."""
    name, figures = results["experiment"], []
    figures.append(("fig3_qn_alpha.png", qn_alpha(results),
                    "q_n and alpha over updates for the SKD variants (paper Fig. 3); the dotted "
                    "line is the clip at 0.5",
                    "no skd_qn/skd_alpha in the SKD variants' logs"))
    if results["task"] == "mt":
        figures.append(("fig4_valid_bleu.png",
                        validation_curves(results, "valid_bleu", "validation BLEU",
                                          f"Validation BLEU during training ({name})"),
                        "validation BLEU over updates, all variants (paper Fig. 4)",
                        "no valid_bleu in the logs (train with --eval-bleu)"))
    figures.append(("valid_loss.png",
                    validation_curves(results, "valid_loss", "validation NLL per token (bits)",
                                      f"Validation loss during training ({name})"),
                    "validation NLL per token (base 2) over updates, all variants: `valid_loss`, "
                    "which is the plain NLL for every variant (fairseq's cross_entropy logs the "
                    "NLL as its loss; self_kd_cross_entropy reports the NLL as loss in validation)",
                    "no valid_loss in the logs"))
    figures.append(("reliability.png",
                    reliability_diagram(reliability_tables(results), f"{name}, test set"),
                    RELIABILITY_CAPTION,
                    "no reliability table in the score_test.json files (fairseq-skd-score-lm/-mt "
                    "writes one)"))
    drawn = []
    for file, fig, caption, why_not in figures:
        if fig is None:
            results["notes"].append(f"{file} not drawn: {why_not}")
            continue
        fig.savefig(out / file, dpi=120)
        drawn.append(Drawn(file, caption, plotted_variants(fig)))
    return drawn
