"""Average the parameters of several checkpoints of one run into one checkpoint.

    fairseq-skd-average --inputs exp/wmt15_en_fi/skd --num-epoch-checkpoints 2 \\
        --output exp/wmt15_en_fi/skd/checkpoint_avg2.pt
    fairseq-skd-average --inputs ckpt/checkpoint9.pt ckpt/checkpoint10.pt --output avg.pt

What fairseq's ``scripts/average_checkpoints.py`` does (the mean of every parameter; the other
entries of the checkpoint, such as its configuration, from the first input, the newest with
``--num-epoch-checkpoints``), for an installed
fairseq, which does not ship that script, and under torch's safe loader, where that script fails
on fairseq's checkpoints unless the plugin is imported first. Inputs are checked before anything
is written: each must be an intact checkpoint, and all must have the same parameters with the
same shapes, each named once, and none of them the output. The output is written to a temporary
file and renamed, so it is never half written.
"""

import argparse
import collections
import os
import re
import sys

PROG = "fairseq-skd-average"


class AverageError(Exception):
    pass


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True, metavar="PATH",
                        help="checkpoint files, or one folder with --num-epoch-checkpoints / "
                        "--num-update-checkpoints")
    parser.add_argument("--output", required=True, metavar="FILE", help="the averaged checkpoint")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--num-epoch-checkpoints", type=int, metavar="N",
                       help="the N newest checkpointEPOCH.pt of the folder")
    which.add_argument("--num-update-checkpoints", type=int, metavar="N",
                       help="the N newest checkpoint_EPOCH_UPDATES.pt of the folder")
    return parser


def newest_checkpoints(folder, n, per_update):
    """The ``n`` checkpoints of ``folder`` with the highest epoch (or update) numbers."""
    pattern = re.compile(r"checkpoint_\d+_(\d+)\.pt$" if per_update else r"checkpoint(\d+)\.pt$")
    numbered = sorted(((int(m.group(1)), name) for name in os.listdir(folder)
                       if (m := pattern.match(name))), reverse=True)
    if len(numbered) < n:
        kind = "checkpoint_EPOCH_UPDATES.pt" if per_update else "checkpointEPOCH.pt"
        raise AverageError(f"{folder} has {len(numbered)} {kind} files, fewer than the {n} "
                           "asked for (fairseq-train keeps them unless --no-epoch-checkpoints, "
                           "and only the last --keep-last-epochs)")
    return [os.path.join(folder, name) for _, name in numbered[:n]]


def input_paths(args):
    per_update = args.num_update_checkpoints is not None
    count = args.num_update_checkpoints if per_update else args.num_epoch_checkpoints
    if count is not None:
        if count < 1:
            raise AverageError(f"the number of checkpoints to average must be >= 1, got {count}")
        if len(args.inputs) != 1 or not os.path.isdir(args.inputs[0]):
            raise AverageError("with --num-epoch-checkpoints or --num-update-checkpoints, "
                               "--inputs is one folder")
        return newest_checkpoints(args.inputs[0], count, per_update)
    for path in args.inputs:
        if os.path.isdir(path):
            raise AverageError(f"--inputs {path} is a folder: name checkpoint files, or add "
                               "--num-epoch-checkpoints N")
    return list(args.inputs)


def check_distinct(paths, output):
    """Each input once (a repeated one would count twice in the mean), and the output none of
    them (it would be replaced by the average)."""
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise AverageError(f"--inputs names {seen[real]} twice ({path}): it would weigh twice "
                               "in the average; name each checkpoint once")
        seen[real] = path
    if os.path.realpath(output) in seen:
        raise AverageError(f"--output {output} is one of the inputs: writing the average there "
                           "would replace that checkpoint; write to a new file")


def average_checkpoints(paths):
    """The first input's state with its "model" replaced by the mean over all inputs."""
    import torch

    import fairseq_skd  # noqa: F401  fairseq's checkpoint globals for torch's safe loader
    from fairseq_skd.checkpoint_loading import checkpoint_problem

    for path in paths:
        if not os.path.isfile(path):
            raise AverageError(f"checkpoint not found: {path}")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise AverageError(f"{path} is not a usable checkpoint: {problem}")
    sums, first = collections.OrderedDict(), None
    for path in paths:
        state = torch.load(path, map_location="cpu")
        first = first or state
        params = state["model"]
        if sums and list(params) != list(sums):
            raise AverageError(f"{path} has other parameters than {paths[0]}: not the same model")
        for name, value in params.items():
            value = value.float() if value.dtype == torch.float16 else value
            if name not in sums:
                sums[name] = value.clone()
            elif sums[name].shape != value.shape:
                raise AverageError(f"{path}: parameter {name} has shape {tuple(value.shape)}, "
                                   f"{paths[0]} has {tuple(sums[name].shape)}")
            else:
                sums[name] += value
    first["model"] = collections.OrderedDict(
        (name, total / len(paths) if total.is_floating_point() else total // len(paths))
        for name, total in sums.items())
    return first


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder):
            raise AverageError(f"--output {args.output}: the folder {folder} does not exist")
        paths = input_paths(args)
        check_distinct(paths, args.output)
        state = average_checkpoints(paths)
    except AverageError as e:
        sys.exit(f"{PROG}: error: {e}")
    import torch

    torch.save(state, args.output + ".part")
    os.replace(args.output + ".part", args.output)
    print(f"averaged {len(paths)} checkpoints ({', '.join(paths)}) into {args.output}")


if __name__ == "__main__":
    main()
