"""The figures of one experiment folder, from the variants' parsed training logs.

``results`` is what ``fairseq-skd-collect`` collects: ``{"experiment": name, "task": "lm" | "mt",
"variants": {variant: {"logs": parse_log(...) or None, ...}}, "notes": [...]}``. Each figure
is drawn with matplotlib's object API (no pyplot, no global backend) and saved as PNG.
"""

from .layout import SKD_VARIANTS, VARIANT_NAMES, VARIANTS
from .logs import series


def _figure(ncols=1):
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg canvas for PNG

    fig = Figure(figsize=(5.5 * ncols, 4), layout="tight")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _curves(results, kind, key, variants):
    curves = {}
    for variant in variants:
        logs = results["variants"][variant]["logs"]
        if logs:
            xs, ys = series(logs, kind, key)
            if xs:
                curves[variant] = (xs, ys)
    return curves


def qn_alpha(results, path):
    qn = _curves(results, "train_inner", "skd_qn", SKD_VARIANTS)
    alpha = _curves(results, "train_inner", "skd_alpha", SKD_VARIANTS)
    if not qn and not alpha:
        return False
    fig, (ax_q, ax_a) = _figure(2)
    for variant, (xs, ys) in qn.items():
        ax_q.plot(xs, ys, label=VARIANT_NAMES[variant], linewidth=1)
    ax_q.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax_q.set(title=f"(a) q_n during training ({results['experiment']})", xlabel="updates",
             ylabel="mean q_n where prediction != target (as logged)")
    for variant, (xs, ys) in alpha.items():
        ax_a.plot(xs, ys, label=VARIANT_NAMES[variant], linewidth=1)
    ax_a.set(title="(b) alpha schedule", xlabel="updates", ylabel="alpha")
    for ax in (ax_q, ax_a):
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return True


def validation_curves(results, path, key, ylabel, title):
    curves = _curves(results, "valid", key, VARIANTS)
    if not curves:
        return False
    fig, (ax,) = _figure(1)
    for variant, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=VARIANT_NAMES[variant], linewidth=1)
    ax.set(title=title, xlabel="updates", ylabel=ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return True


def write_figures(results, out):
    """Draw the experiment's figures into ``out``; returns ``[(file name, caption)]`` of those
    drawn, and adds a note to ``results["notes"]`` for each one that could not be."""
    name, written = results["experiment"], []
    if qn_alpha(results, out / "fig3_qn_alpha.png"):
        written.append(("fig3_qn_alpha.png", "q_n and alpha over updates for the SKD variants (paper Fig. 3)"))
    else:
        results["notes"].append("fig3_qn_alpha.png not drawn: no skd_qn/skd_alpha in the SKD variants' logs")
    if results["task"] == "mt":
        if validation_curves(results, out / "fig4_valid_bleu.png", "valid_bleu", "validation BLEU",
                             f"Validation BLEU during training ({name})"):
            written.append(("fig4_valid_bleu.png", "validation BLEU over updates, all variants (paper Fig. 4)"))
        else:
            results["notes"].append("fig4_valid_bleu.png not drawn: no valid_bleu in the logs "
                                    "(train with --eval-bleu)")
    if validation_curves(results, out / "valid_loss.png", "valid_nll_loss",
                         "validation NLL per token (bits)", f"Validation loss during training ({name})"):
        written.append(("valid_loss.png", "validation NLL per token (base 2, cross-entropy part) over updates"))
    else:
        results["notes"].append("valid_loss.png not drawn: no valid records in the logs")
    return written
