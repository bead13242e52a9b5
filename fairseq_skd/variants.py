"""The variants a study trains, each with what it adds to fairseq-train: the paper's four rows
(Tables 2 and 3) and the options beyond the paper. The one home of these facts: the recipes ask
this file for a variant's flags (``python fairseq_skd/variants.py flags ...``, run as a script so
that it needs neither torch nor fairseq), and the results tables take the names from here.

- Baseline: fairseq's ``cross_entropy``.
- +Noise: plain cross-entropy (alpha stays 0) with Gaussian noise on the decoder's input word
  embeddings (``--target-embed-noise``).
- +SKD: ``self_kd_cross_entropy`` (sigma, and alpha = 0 for K updates, then + eta per update).
- +Noise+SKD: both.
- The ablation rows: +SKD with one option changed, and label smoothing with and without SKD.
- KD: word-level distillation from a teacher (``kd_cross_entropy``, a = 0.5, T = 1): a trained
  checkpoint (the recipes' ``--teacher PATH``), by default the same seed's Baseline (a
  born-again network: the teacher is the student's size); +SKD+KD adds SKD's self-targets to
  the hard-target half.
- R-Drop (Liang et al. 2021): two dropout passes per sentence, their symmetric KL weighted by
  the alpha R-Drop's authors used for the task (``rdrop_cross_entropy``, no label smoothing):
  another regulariser to set beside SKD. Its flags depend on the task (``--task lm|mt``).
- Seq-KD, translation only: sequence-level distillation (Kim and Rush 2016): the teacher
  translates the training sources (beam 5) and the student trains with plain cross-entropy on
  those translations (the MT recipe makes them, docs/distillation.md); +SKD Seq-KD trains on
  them with +SKD's criterion.

``--variants`` of the recipes takes names and the groups ``paper`` (the four rows),
``distillation`` (the baseline and the variants distilled from a teacher), ``compare`` (SKD
beside label smoothing, R-Drop and distillation, with and without SKD) and ``all`` (every
variant but the distilled ones). ``--task lm|mt`` (``expand``, ``flags``): the recipe's task; a
group then holds only the variants of that task, and a variant of the other task is refused.
"""

import argparse
import shlex
import sys

# name: (display name, flags added to +SKD's; None: not an SKD row, see criterion_flags)
VARIANTS = {
    "baseline": ("Baseline", None),
    "noise": ("+Noise", None),
    "skd": ("+SKD", []),
    "noise_skd": ("+Noise+SKD", None),
    "skd_auto_sigma": ("+SKD (sigma auto)", ["--skd-sigma", "auto"]),
    "skd_topk": ("+SKD (top-10 soft targets)", ["--skd-soft-targets", "topk"]),
    "skd_full": ("+SKD (full soft targets)", ["--skd-soft-targets", "full"]),
    "skd_cosine": ("+SKD (cosine, sigma auto)", ["--skd-distance", "cosine", "--skd-sigma", "auto"]),
    "skd_alpha_max_0.3": ("+SKD (alpha at most 0.3)", ["--skd-alpha-max", "0.3"]),
    "skd_qn_max_0.25": ("+SKD (q_n clipped at 0.25)", ["--skd-qn-max", "0.25"]),
    "label_smoothing": ("Label smoothing 0.1", None),
    "skd_label_smoothing": ("+SKD (label smoothing 0.1)", ["--label-smoothing", "0.1"]),
    "kd": ("KD (a 0.5)", None),
    "skd_kd": ("+SKD+KD (a 0.5)", None),
    "rdrop": ("R-Drop (alpha 1 LM, 5 MT)", None),
    "seqkd": ("Seq-KD (beam 5)", None),
    "seqkd_skd": ("+SKD Seq-KD", []),
}
NAMES = {variant: name for variant, (name, _) in VARIANTS.items()}
PAPER = ("baseline", "noise", "skd", "noise_skd")
DISTILLED = ("kd", "skd_kd")  # from a teacher's distribution (kd_cross_entropy)
SEQUENCE_DISTILLED = ("seqkd", "seqkd_skd")  # on the teacher's translations of the training set
TASK_ONLY = {variant: "mt" for variant in SEQUENCE_DISTILLED}  # the others: both tasks
# what a user would pick instead of SKD, beside SKD (./run.sh --compare)
COMPARE = ("baseline", "label_smoothing", "rdrop", "skd", "skd_label_smoothing", *DISTILLED,
           *SEQUENCE_DISTILLED)
GROUPS = {"paper": PAPER, "distillation": ("baseline", *DISTILLED, *SEQUENCE_DISTILLED),
          "compare": COMPARE,
          "all": tuple(v for v in VARIANTS if v not in (*DISTILLED, *SEQUENCE_DISTILLED))}
TASKS = {"lm": "language-model", "mt": "translation"}  # the recipes' tasks
LABEL_SMOOTHING = "0.1"
KD_ALPHA, KD_TEMPERATURE = "0.5", "1.0"
# R-Drop's alpha as its authors ran it (github.com/dropreg/R-Drop, fairseq_src/examples):
# translation (IWSLT'14 de-en, translation_rdrop/script/run_train.sh) --reg-alpha 5, language
# modelling (WikiText-103, language_model_rdrop/script/train_lm_wiki103_rdrop.sh) --reg-alpha 1.0.
# Their translation run adds label smoothing 0.1, left out here: the baseline has none.
RDROP_ALPHA = {"lm": "1.0", "mt": "5"}


class VariantError(ValueError):
    """An unknown variant or group name."""


def expand(spec, task=None):
    """The variants named in ``spec`` (names and groups, space-separated or a list), in the
    order given, each once. With ``task`` ('lm' or 'mt'), groups hold only that task's
    variants and a variant of the other task is refused."""
    words = spec.split() if isinstance(spec, str) else list(spec)
    if not words:
        raise VariantError(f"no variant given (known: {', '.join(VARIANTS)}; groups: "
                           f"{', '.join(GROUPS)})")
    found = []
    for word in words:
        if word not in VARIANTS and word not in GROUPS:
            raise VariantError(f"unknown variant '{word}' (known: {', '.join(VARIANTS)}; "
                               f"groups: {', '.join(GROUPS)})")
        if word in VARIANTS:
            for_task(word, task)
        found += [v for v in GROUPS.get(word, [word]) if of_task(v, task)]
    return list(dict.fromkeys(found))


def of_task(variant, task):
    """Whether the recipe of ``task`` ('lm', 'mt'; None: any) trains ``variant``."""
    return task is None or TASK_ONLY.get(variant, task) == task


def for_task(variant, task):
    """``variant`` if the recipe of ``task`` trains it, else VariantError."""
    if not of_task(variant, task):
        raise VariantError(f"variant '{variant}' ({NAMES[variant]}) is for the "
                           f"{TASKS[TASK_ONLY[variant]]} recipe only, not the {TASKS[task]} one: "
                           f"leave it out here (./run.sh --task {TASK_ONLY[variant]} runs the "
                           f"{TASKS[TASK_ONLY[variant]]} recipe alone)")
    return variant


def known(variant):
    """``variant`` if it is a variant's name (not a group's), else VariantError."""
    if variant not in VARIANTS:
        raise VariantError(f"unknown variant '{variant}' (known: {', '.join(VARIANTS)})")
    return variant


def uses_skd_criterion(variant):
    """Whether the variant trains with self_kd_cross_entropy or kd_cross_entropy (all but the
    baseline and R-Drop), which log SKD's alpha."""
    return variant not in ("baseline", "rdrop")


def applies_skd(variant):
    """Whether alpha grows above 0 in the variant (the ones ``--skd-args`` go to)."""
    return VARIANTS[variant][1] is not None or variant in ("noise_skd", "skd_kd")


def needs_teacher(variant):
    return variant in DISTILLED or variant in SEQUENCE_DISTILLED


def trains_on_translations(variant):
    """Whether the variant's training targets are its teacher's translations (Seq-KD)."""
    return variant in SEQUENCE_DISTILLED


def criterion_flags(variant, sigma, warmup_updates, alpha_step, noise_std, skd_args=(),
                    teacher=None, task=None):
    """What ``variant`` adds to fairseq-train. ``skd_args``: extra flags for the variants that
    apply SKD (alpha > 0) only; ``teacher``: the checkpoint the KD variants distil from (the
    Seq-KD variants' teacher is in their data, not in their flags); ``task``: see expand; R-Drop's
    alpha depends on it."""
    for_task(known(variant), task)
    if variant == "rdrop":
        if task not in TASKS:
            raise VariantError(f"variant rdrop takes R-Drop's alpha for the task: give "
                               f"--task {' or '.join(TASKS)}" + (f", not {task!r}" if task else ""))
        return ["--criterion", "rdrop_cross_entropy", "--rdrop-alpha", RDROP_ALPHA[task]]
    schedule = ["--skd-sigma", str(sigma), "--skd-warmup-updates", str(warmup_updates),
                "--skd-alpha-step", str(alpha_step)]
    skd = ["--criterion", "self_kd_cross_entropy", *schedule]
    if variant in DISTILLED:
        if not teacher:
            raise VariantError(f"variant {variant} distils from a teacher: give its checkpoint")
        kd = ["--criterion", "kd_cross_entropy", "--kd-teacher", str(teacher),
              "--kd-alpha", KD_ALPHA, "--kd-temperature", KD_TEMPERATURE]
        return kd if variant == "kd" else [*kd, *schedule, "--skd-alpha-max", "1", *skd_args]
    plain = ["--criterion", "self_kd_cross_entropy", "--skd-alpha-max", "0"]  # alpha stays 0
    if variant in ("baseline", "seqkd"):
        return ["--criterion", "cross_entropy"]
    if variant == "noise":
        return [*plain, "--target-embed-noise", str(noise_std)]
    if variant == "label_smoothing":
        return [*plain, "--label-smoothing", LABEL_SMOOTHING]
    if variant == "noise_skd":
        return [*skd, "--target-embed-noise", str(noise_std), *skd_args]
    return [*skd, *VARIANTS[variant][1], *skd_args]  # later flags win in fairseq's parser


def skd_criterion_flags():
    """The flags self_kd_cross_entropy takes (its config's fields; imports fairseq)."""
    from fairseq_skd.criterions.config_fields import describe_flags
    from fairseq_skd.criterions.self_kd_cross_entropy import SelfKDCrossEntropyConfig

    return [info.flag for info in describe_flags(SelfKDCrossEntropyConfig)]


def check_skd_args(skd_args):
    """``--skd-args`` may hold the SKD criterion's own flags only: a flag of another kind there
    would change only the SKD variants, and the comparison with the baseline with it."""
    own = skd_criterion_flags()
    for word in skd_args:
        if word.startswith("--") and word.split("=", 1)[0] not in own:
            raise VariantError(f"--skd-args takes the SKD criterion's own flags only ({', '.join(own)}); "
                               f"{word.split('=', 1)[0]} is not one: flags for every variant go "
                               "after --")


def definition_flags(variant):
    """The flags ``variant``'s definition sets (whatever their values; the same for each task)."""
    flags = criterion_flags(variant, 0.1, 1, 1, 0.1, teacher="TEACHER",
                            task=TASK_ONLY.get(variant, "lm"))
    return [word for word in flags if word.startswith("--")]


def main(argv=None):
    """The recipes' questions: ``expand SPEC [--task T] [--only teacher|translations]`` (a name
    a line; ``--only``: those that need a teacher, those trained on its translations), ``name
    VARIANT`` (its display name), ``flags VARIANT --sigma S --warmup K --alpha-step E
    --noise-std N [--skd-args ARGS] [--teacher PATH] [--task T]`` (a flag a line),
    ``check-skd-args ARGS`` (imports fairseq). Unknown names and refused flags exit with status 2
    and say what is wrong."""
    parser = argparse.ArgumentParser(prog="fairseq_skd/variants.py")
    commands = parser.add_subparsers(dest="command", required=True)
    expanding = commands.add_parser("expand")
    expanding.add_argument("spec")
    expanding.add_argument("--task", choices=TASKS, default=None)
    expanding.add_argument("--only", choices=("teacher", "translations"), default=None)
    commands.add_parser("name").add_argument("variant")
    commands.add_parser("check-skd-args").add_argument("skd_args")
    flags = commands.add_parser("flags")
    flags.add_argument("variant")
    for option in ("--sigma", "--warmup", "--alpha-step", "--noise-std"):
        flags.add_argument(option, required=True)
    flags.add_argument("--skd-args", default="")
    flags.add_argument("--teacher", default=None)
    flags.add_argument("--task", choices=TASKS, default=None)
    args = parser.parse_args(argv)
    only = {None: lambda v: True, "teacher": needs_teacher, "translations": trains_on_translations}
    try:
        if args.command == "expand":
            lines = [v for v in expand(args.spec, args.task) if only[args.only](v)]
        elif args.command == "name":
            lines = [NAMES[known(args.variant)]]
        elif args.command == "check-skd-args":
            check_skd_args(shlex.split(args.skd_args))
            lines = []
        else:
            lines = criterion_flags(known(args.variant), args.sigma, args.warmup,
                                    args.alpha_step, args.noise_std, shlex.split(args.skd_args),
                                    args.teacher, args.task)
    except VariantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
