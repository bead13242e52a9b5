"""fairseq-skd-train: fairseq-train with N data-parallel workers, on GPUs or CPU cores, that
never leaves orphans, resumes past a damaged checkpoint_last.pt and can keep a quiet log.

Everything but its own options is fairseq-train's command line, unchanged. With N > 1:

- **GPUs** (CUDA available and no ``--cpu``): fairseq's own launcher, ``fairseq-train
  --distributed-world-size N``, which spawns one process per GPU (torch sets each worker to
  die with its parent).
- **CPU**: N workers started by ``torchrun --standalone``, each running
  :mod:`fairseq_skd.cli.train_worker` with the ``gloo`` backend and ``--ddp-backend legacy_ddp``
  (fairseq's default ``c10d`` cannot wrap a CPU model), and ``OMP_NUM_THREADS`` = the cores / N
  so the workers do not fight over cores.
- ``--load-checkpoint-on-all-dp-ranks``: otherwise rank 0 broadcasts the loaded checkpoint
  and the other ranks unpickle omegaconf objects that torch's safe loader refuses, so
  resuming fails.

Before any worker starts, :mod:`fairseq_skd.preflight` checks what the run resumes from (a
damaged or missing checkpoint_last.pt is replaced by the intact checkpoint furthest in
training; fairseq copies it non-atomically, so a kill at the wrong moment leaves it cut short),
the data against a resumed checkpoint's dictionaries and in itself, and settings that cannot
work; the data's dictionaries are then copied into --save-dir, where the scorers, teachers and
resumed runs check data against them.

Interrupting (Ctrl-C, SIGTERM, SIGHUP) stops every worker: the signal is passed to torchrun,
which stops its workers; each CPU worker also dies with its launcher (``PR_SET_PDEATHSIG``).

alpha and the logged SKD statistics need nothing more: alpha is a function of the trainer's
update count, which every worker holds identically, and every logged value is a sum that
fairseq all-reduces over the workers before ``reduce_metrics`` normalises it, so N workers log
exactly what one worker with ``--update-freq N`` logs (tests/test_distributed.py).
"""

import argparse
import collections
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from fairseq_skd import preflight
from fairseq_skd.cli.train_worker import PROG, die_with_parent

# fairseq's DDP backends that can wrap a model on CPU workers (its default, c10d, cannot)
CPU_DDP_BACKENDS = ("legacy_ddp", "no_c10d")
TAIL_LINES = 15  # of a failing run's log, shown with its error


class LaunchError(Exception):
    """A user-facing problem with the command line, raised before anything starts."""


def build_parser():
    """fairseq-skd-train's own options (for --help and parsing; they may stand anywhere on the
    line); everything else goes to fairseq-train."""
    parser = argparse.ArgumentParser(
        prog=PROG, add_help=False, allow_abbrev=False,
        usage=f"{PROG} [--nproc N] [--log FILE] FAIRSEQ_TRAIN_ARGS...\n"
              f"       {PROG} --check LABEL FAIRSEQ_TRAIN_ARGS... [--- LABEL ...]",
        description="fairseq-train with N data-parallel workers (GPUs, or CPU cores through "
        "torchrun), resuming past a damaged checkpoint_last.pt. Every argument but the options "
        "below is fairseq-train's, unchanged. Add --help after a fairseq-train command line "
        "(with its --arch and --criterion) to list fairseq-train's flags, with those of the "
        "architecture and the criterion, which fairseq-train --help leaves out.")
    parser.add_argument("--nproc", type=worker_count, default=1, metavar="N",
                        help="data-parallel workers: N GPUs, or N CPU workers sharing the cores "
                        "(default 1: exactly fairseq-train)")
    parser.add_argument("--log", metavar="FILE",
                        help="append fairseq-train's output to FILE and print one line per "
                        "epoch instead; a failure prints the log's last lines")
    parser.add_argument("--check", action="store_true",
                        help="only parse each labelled command line (separated by ---) with "
                        "fairseq-train's parser and name those it would refuse (exit 2)")
    parser.add_argument("-h", "--help", action="store_true", help="this message")
    return parser


def worker_count(text):
    try:
        nproc = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number of workers, got {text!r}") from None
    if nproc < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {nproc}")
    return nproc


def split_options(argv):
    """(our options, fairseq-train's argv) from a command line that may mix them; a bad value
    of ours exits with a usage error that names it."""
    return build_parser().parse_known_args(argv)


def option_value(argv, flag):
    """The value given to ``flag`` in argv (``--flag V`` or ``--flag=V``), last one wins."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def console_script(name):
    """``name`` from this interpreter's environment if it is there, else from PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or name


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan(nproc, argv, cuda_devices):
    """The command to run and its extra environment: ``(argv, env, kind)`` with kind one of
    ``single``, ``gpu`` or ``cpu``. Raises LaunchError for settings that cannot work."""
    world = option_value(argv, "--distributed-world-size")
    if world is not None and nproc > 1 and world != str(nproc):
        raise LaunchError(f"--distributed-world-size {world} contradicts --nproc {nproc}: "
                          "give only --nproc")
    if nproc == 1:
        return [console_script("fairseq-train"), *argv], {}, "single"
    extra = [] if "--load-checkpoint-on-all-dp-ranks" in argv else ["--load-checkpoint-on-all-dp-ranks"]
    use_cpu = "--cpu" in argv or cuda_devices == 0
    if not use_cpu:
        if cuda_devices < nproc:
            raise LaunchError(f"--nproc {nproc} asks for {nproc} GPU workers but torch sees "
                              f"{cuda_devices} GPU(s): use --nproc {cuda_devices} or add --cpu")
        if world is None:
            extra += ["--distributed-world-size", str(nproc)]
        return [console_script("fairseq-train"), *argv, *extra], {}, "gpu"
    backend = option_value(argv, "--ddp-backend")
    if backend is not None and backend not in CPU_DDP_BACKENDS:
        raise LaunchError(f"--ddp-backend {backend} cannot wrap a model on CPU workers "
                          f"(DistributedDataParallel needs a GPU there): use one of "
                          f"{', '.join(CPU_DDP_BACKENDS)}, or leave it out")
    if backend is None:
        extra += ["--ddp-backend", "legacy_ddp"]
    if option_value(argv, "--distributed-backend") is None:
        extra += ["--distributed-backend", "gloo"]
    if "--cpu" not in argv:
        extra.append("--cpu")
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
    command = [console_script("torchrun"), "--standalone", "--nproc-per-node", str(nproc),
               worker, *argv, *extra]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, available_cores() // nproc))
    return command, {"OMP_NUM_THREADS": threads}, "cpu"


def fairseq_args(argv):
    """fairseq-train's arguments for ``argv``, parsed as it parses them (a usage error exits
    with its message and status 2)."""
    import logging

    from fairseq import options

    logging.getLogger("fairseq").setLevel(logging.WARNING)
    parser = options.get_training_parser()
    parser.prog = "fairseq-train"
    return options.parse_args_and_arch(parser, argv)


def keep_dictionaries(args):
    """Copy the data's dictionaries (DATA/dict*.txt) into --save-dir, so that a scorer, a
    teacher's student or a resumed run can later check that data given to a checkpoint is
    indexed with the dictionary it was trained on."""
    data = str(args.data).split(os.pathsep)[0]
    os.makedirs(args.save_dir, exist_ok=True)
    for name in sorted(os.listdir(data)):
        if name.startswith("dict.") and name.endswith(".txt"):
            shutil.copyfile(os.path.join(data, name), os.path.join(args.save_dir, name))


def fairseq_train_problems(command_lines):
    """For each ``(label, fairseq-train argv)``, what fairseq-train's own parser says is wrong
    with it (its usage error), or nothing: ``[(label, message), ...]``. Parsing needs no data,
    so a recipe or the study can check every run's command line before any work starts."""
    import contextlib
    import io
    import logging

    from fairseq import options

    logging.getLogger("fairseq").setLevel(logging.WARNING)  # not its INFO lines per parse

    problems = []
    for label, argv in command_lines:
        message = io.StringIO()
        try:
            with contextlib.redirect_stderr(message):
                options.parse_args_and_arch(options.get_training_parser(), list(argv))
        except SystemExit as e:
            if e.code:
                error = [line.split("error: ", 1)[1] for line in message.getvalue().splitlines()
                         if "error: " in line]
                problems.append((label, error[-1] if error else message.getvalue().strip()))
    return problems


def check_main(argv):
    """``--check LABEL ARGV... [--- LABEL ARGV...]``: exit 2 naming each command line that
    fairseq-train would refuse, 0 if it would take them all."""
    command_lines, current = [], None
    for arg in argv:
        if arg == "---" or current is None:
            current = None if arg == "---" else [arg, []]
            if current is not None:
                command_lines.append(current)
        else:
            current[1].append(arg)
    problems = fairseq_train_problems(command_lines)
    for label, message in problems:
        print(f"{PROG}: the {label} run's fairseq-train command line is refused: {message}",
              file=sys.stderr)
    return 2 if problems else 0


def fairseq_help(argv):
    """fairseq-train's help for this command line, with the flags of its --arch, --task and
    --criterion (fairseq-train --help prints its help before it adds those)."""
    import logging

    from fairseq import options

    logging.getLogger("fairseq").setLevel(logging.WARNING)  # not its INFO line about --user-dir
    argv = [arg for arg in argv if arg not in ("-h", "--help")]
    if not argv or argv[0].startswith("-"):
        argv = ["DATA", *argv]  # the data folder is not needed to list the flags
    parser = options.get_training_parser()
    options.parse_args_and_arch(parser, argv, parse_known=True)  # adds those flags to parser
    parser.prog = "fairseq-train"
    parser.print_help()


ABORT_AFTER_ERROR = "terminate called without an active exception"


def run_supervised(command, env, on_line=None):
    """Run ``command`` as a child that dies with this process; pass on Ctrl-C, SIGTERM and
    SIGHUP, wait for it to stop its workers, and return its exit status. With ``on_line``, its
    output (stdout and stderr) is given to it a line at a time; otherwise its stderr passes
    through here. Some fairseq runs abort after a Python error ("terminate called without an
    active exception", exit 134: threads left running at exit); such a run exits with the
    Python error's status, 1, and without that line."""
    output = (dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT) if on_line
              else dict(stderr=subprocess.PIPE))
    child = subprocess.Popen(command, env={**os.environ, **env}, text=True, errors="replace",
                             preexec_fn=lambda: die_with_parent(signal.SIGTERM), **output)
    received = []

    def forward(signum, _frame):
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    handlers = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    python_error = False
    write = on_line or (lambda line: (sys.stderr.write(line), sys.stderr.flush()))
    try:
        for line in child.stdout if on_line else child.stderr:
            python_error = python_error or line.startswith("Traceback (most recent call last)")
            if not (python_error and line.strip() == ABORT_AFTER_ERROR):
                write(line)
        status = child.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if received:
        return 128 + received[0]
    if python_error and status in (134, -signal.SIGABRT):
        return 1
    return status if status >= 0 else 128 - status


def run_logged(command, env, log_file, epochs):
    """Run ``command`` with its output appended to ``log_file`` (after a line with the date and
    the command) and a line per finished epoch on stdout (``epochs``: the last one, for the
    time left). A failure prints the log's last lines. Returns the exit status."""
    from fairseq_skd.results.logs import EpochProgress

    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    progress, last = EpochProgress(epochs), collections.deque(maxlen=TAIL_LINES)
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
        log.flush()

        def on_line(line):
            log.write(line)
            if line.strip():
                last.append(line.rstrip("\n"))
            epoch_line = progress.feed(line)
            if epoch_line:
                print(f"    {epoch_line}", flush=True)

        status = run_supervised(command, {**env, "PYTHONUNBUFFERED": "1"}, on_line)
    if status != 0:
        print(f"{PROG}: error: fairseq-train exited with status {status}. The last lines of "
              f"its output (all of it in {log_file}):\n"
              + "".join(f"    {line}\n" for line in last or ["(no output)"]),
              file=sys.stderr, end="", flush=True)
    return status


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--check"]:
        sys.exit(check_main(argv[1:]))
    try:
        ours, rest = split_options(argv)
        if ours.help:
            if rest:
                fairseq_help(rest)
            else:
                build_parser().print_help()
            return 0
        cuda_devices = 0
        if ours.nproc > 1 and "--cpu" not in rest:
            import torch

            cuda_devices = torch.cuda.device_count()
        command, env, kind = plan(ours.nproc, rest, cuda_devices)
        args = fairseq_args(rest)
        preflight.check(args, ours.nproc, kind == "cpu", available_cores(),
                        lambda message: print(f"{PROG}: {message}", file=sys.stderr, flush=True))
    except (LaunchError, preflight.PreflightError) as e:
        sys.exit(f"{PROG}: error: {e}")
    keep_dictionaries(args)
    if ours.log:
        epochs = option_value(rest, "--max-epoch")
        sys.exit(run_logged(command, env, ours.log, int(epochs) if epochs else None))
    sys.exit(run_supervised(command, env))


if __name__ == "__main__":
    main()
