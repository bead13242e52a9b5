"""fairseq-skd-cache-teacher: a teacher's top-K on a binarized subset, computed once, for
``kd_cross_entropy --kd-teacher-cache DIR`` to read instead of running the teacher at every
update.

    fairseq-skd-cache-teacher data-bin/iwslt14.de-en --teacher checkpoints/big/checkpoint_best.pt \\
        --topk 8 --out data-bin/iwslt14.de-en/teacher-top8
    fairseq-train data-bin/iwslt14.de-en ... --criterion kd_cross_entropy \\
        --kd-teacher-cache data-bin/iwslt14.de-en/teacher-top8 --kd-topk 8

The task (translation, or language modelling one sentence per sample) is the teacher's, on
DATA_BIN. What is stored and how it is checked: ``fairseq_skd.criterions.teacher``.
"""

import argparse
import logging
import os
import sys
import time

from fairseq_skd.cli import HelpFormatter


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fairseq-skd-cache-teacher", formatter_class=HelpFormatter,
        description="Run a teacher (or an ensemble) once over a binarized subset and store its K "
        "most likely words and their probabilities at every target position, for "
        "kd_cross_entropy --kd-teacher-cache.")
    parser.add_argument("data", metavar="DATA_BIN", help="the student's fairseq-preprocess folder")
    parser.add_argument("--teacher", required=True, metavar="PATH[:PATH...]",
                        help="the teacher's checkpoint, or several for an ensemble")
    parser.add_argument("--out", required=True, metavar="DIR", help="the cache's folder")
    parser.add_argument("--subset", default="train", help="the subset the student trains on")
    parser.add_argument("--topk", type=int, default=8, help="words kept per position")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="the distillation's temperature (--kd-temperature)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    return parser


def teacher_task(path, data):
    """The teacher's task on ``data``: its configuration, the data folder replaced, a language
    model cut one sentence per sample."""
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import open_dict

    import fairseq_skd  # noqa: F401  (the plugin's models; torch's safe loader)

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    cfg = convert_namespace_to_omegaconf(state["args"]) if state.get("args") else state["cfg"]
    with open_dict(cfg.task):
        cfg.task.data = data
        if cfg.task._name == "language_modeling":
            cfg.task.sample_break_mode = "eos"
    return tasks.setup_task(cfg.task)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    import torch

    from fairseq_skd.checkpoint_loading import checkpoint_problem
    from fairseq_skd.criterions.teacher import OnlineTeacher, TeacherError, write_cache

    prog = "fairseq-skd-cache-teacher"
    if args.topk < 1:
        sys.exit(f"{prog}: error: --topk must be at least 1, got {args.topk}")
    if not args.temperature > 0:
        sys.exit(f"{prog}: error: --temperature must be > 0, got {args.temperature}")
    if not os.path.isdir(args.data):
        sys.exit(f"{prog}: error: DATA_BIN {args.data} is not a folder")
    for path in args.teacher.split(":"):
        problem = "no such file" if not os.path.isfile(path) else checkpoint_problem(path)
        if problem:
            sys.exit(f"{prog}: error: --teacher {path}: {problem}")
    start = time.time()
    try:
        task = teacher_task(args.teacher.split(":")[0], args.data)
        teacher = OnlineTeacher.load(args.teacher, task)
        write_cache(teacher, task, args.subset, args.out, args.topk, args.temperature,
                    args.max_tokens, torch.cuda.is_available() and not args.cpu,
                    log=lambda message: print(f"{message} ({time.time() - start:.1f}s)"))
    except (TeacherError, FileNotFoundError) as e:
        sys.exit(f"{prog}: error: {e}")


if __name__ == "__main__":
    main()
