"""The numbers Hahn & Choi (2019) report, keyed by our experiment and variant names
(:mod:`.layout`)."""

# Table 2: NLL per sentence on the test sets (natural log, mean over sentences).
TABLE2 = {
    "ptb": {"baseline": 101.40, "noise": 101.28, "skd": 99.38, "noise_skd": 97.41},
    "wiki2": {"baseline": 119.49, "noise": 118.70, "skd": 116.85, "noise_skd": 116.60},
}

# Table 3: BLEU, {beam: (test, dev)}.
TABLE3 = {
    "wmt15_en_fi": {
        "baseline": {1: (7.29, 8.28), 12: (9.01, 9.85)},
        "noise": {1: (7.68, 8.50), 12: (9.35, 9.53)},
        "skd": {1: (8.36, 9.43), 12: (9.87, 10.30)},
        "noise_skd": {1: (8.81, 8.95), 12: (10.13, 10.47)},
    },
    "wmt15_fi_en": {
        "baseline": {1: (10.42, 11.39), 12: (11.89, 12.78)},
        "noise": {1: (10.74, 11.80), 12: (12.39, 13.35)},
        "skd": {1: (10.70, 12.52), 12: (12.43, 13.82)},
        "noise_skd": {1: (11.87, 12.92), 12: (13.16, 14.13)},
    },
    "wmt15_en_de": {
        "baseline": {1: (19.72, 19.28), 12: (22.25, 20.91)},
        "noise": {1: (20.69, 19.68), 12: (22.40, 20.92)},
        "skd": {1: (20.29, 20.41), 12: (22.59, 21.75)},
        "noise_skd": {1: (21.16, 20.34), 12: (23.07, 21.64)},
    },
}


def table(task):
    """Table 2 for ``lm``, Table 3 for ``mt``: {experiment: {variant: ...}}."""
    return TABLE2 if task == "lm" else TABLE3


def nll_per_sentence(experiment, variant):
    """Table 2's test NLL per sentence, or None where the paper has none."""
    return TABLE2.get(experiment, {}).get(variant)


def bleu(experiment, variant, beam, subset="test"):
    """Table 3's BLEU on ``subset`` (test or valid, the paper's dev), or None."""
    pair = TABLE3.get(experiment, {}).get(variant, {}).get(beam)
    return None if pair is None else pair[0 if subset == "test" else 1]
