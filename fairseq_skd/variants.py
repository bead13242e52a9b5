"""The variants a study trains: the paper's four rows (Tables 2 and 3) and the options beyond the
paper, each with what it adds to fairseq-train. The one home of these facts: the offline study
reads them from here, and the recipes' bash copy (``recipes/utils/common.sh``,
``variant_criterion_flags``) is tested to agree (tests/test_recipes.py).

- Baseline: fairseq's ``cross_entropy``.
- +Noise: plain cross-entropy (alpha stays 0) with Gaussian noise on the decoder's input word
  embeddings (``--target-embed-noise``).
- +SKD: ``self_kd_cross_entropy`` (sigma, and alpha = 0 for K updates, then + eta per update).
- +Noise+SKD: both.
"""

VARIANTS = ("baseline", "noise", "skd", "noise_skd")
SKD_VARIANTS = ("skd", "noise_skd")
NAMES = {"baseline": "Baseline", "noise": "+Noise", "skd": "+SKD", "noise_skd": "+Noise+SKD"}

# The offline study's --ablation rows: name, and the flags each adds to +SKD's (or to the
# baseline's criterion with alpha held at 0).
ABLATIONS = {
    "skd_auto_sigma": ("+SKD (sigma auto)", ["--skd-sigma", "auto"]),
    "skd_topk": ("+SKD (top-10 soft targets)", ["--skd-soft-targets", "topk"]),
    "skd_full": ("+SKD (full soft targets)", ["--skd-soft-targets", "full"]),
    "skd_cosine": ("+SKD (cosine, sigma auto)", ["--skd-distance", "cosine", "--skd-sigma", "auto"]),
    "skd_alpha_max_0.3": ("+SKD (alpha at most 0.3)", ["--skd-alpha-max", "0.3"]),
    "skd_qn_max_0.25": ("+SKD (q_n clipped at 0.25)", ["--skd-qn-max", "0.25"]),
    "label_smoothing": ("Label smoothing 0.1", None),
    "skd_label_smoothing": ("+SKD (label smoothing 0.1)", ["--label-smoothing", "0.1"]),
}
ALL_NAMES = {**NAMES, **{variant: name for variant, (name, _) in ABLATIONS.items()}}
LABEL_SMOOTHING = "0.1"


def uses_skd_criterion(variant):
    """Whether the variant trains with self_kd_cross_entropy (all but the baseline)."""
    return variant != "baseline"


def criterion_flags(variant, sigma, warmup_updates, alpha_step, noise_std, skd_args=()):
    """What ``variant`` adds to fairseq-train. ``skd_args``: extra flags for the variants that
    apply SKD (alpha > 0) only."""
    skd = ["--criterion", "self_kd_cross_entropy", "--skd-sigma", str(sigma),
           "--skd-warmup-updates", str(warmup_updates), "--skd-alpha-step", str(alpha_step)]
    if variant == "baseline":
        return ["--criterion", "cross_entropy"]
    if variant == "noise":
        return ["--criterion", "self_kd_cross_entropy", "--skd-alpha-max", "0",
                "--target-embed-noise", str(noise_std)]
    if variant == "skd":
        return [*skd, *skd_args]
    if variant == "noise_skd":
        return [*skd, "--target-embed-noise", str(noise_std), *skd_args]
    if variant == "label_smoothing":
        return ["--criterion", "self_kd_cross_entropy", "--skd-alpha-max", "0",
                "--label-smoothing", LABEL_SMOOTHING]
    if variant in ABLATIONS:  # later flags win in fairseq's parser
        return [*skd, *ABLATIONS[variant][1], *skd_args]
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(ALL_NAMES)}")
