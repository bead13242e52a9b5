"""fairseq-train with N data-parallel workers, on GPUs or CPU cores, that never leaves orphans.

    fairseq-skd-train --nproc 2 DATA_BIN --user-dir fairseq_skd --arch ... --criterion ...
    fairseq-skd-train DATA_BIN ...            # --nproc 1 (default): exactly fairseq-train
    fairseq-skd-train --check baseline DATA_BIN ... --- skd DATA_BIN ...   # parse only

Everything after ``--nproc N`` is fairseq-train's command line, unchanged. With N > 1:

- **GPUs** (CUDA available and no ``--cpu``): fairseq's own launcher, ``fairseq-train
  --distributed-world-size N``, which spawns one process per GPU (torch sets each worker to
  die with its parent).
- **CPU**: N workers started by ``torchrun --standalone``, each running fairseq-train with
  ``--distributed-init-method env://`` and its rank (fairseq's own inference from torchrun's
  environment divides by the GPU count and fails on CPU), the ``gloo`` backend and
  ``--ddp-backend legacy_ddp`` (fairseq's default ``c10d`` cannot wrap a CPU model), and
  ``OMP_NUM_THREADS`` = the cores / N so the workers do not fight over cores.
- ``--load-checkpoint-on-all-dp-ranks``: otherwise rank 0 broadcasts the loaded checkpoint
  and the other ranks unpickle omegaconf objects that torch's safe loader refuses, so
  resuming fails.

Before training: a damaged checkpoint_last.pt (fairseq copies it non-atomically, so a kill at
the wrong moment leaves it empty or cut short) is set aside as checkpoint_last.pt.damaged and
replaced by the newest intact checkpoint, so the run resumes instead of failing; the data's
dictionaries are copied into --save-dir, where the scorers check data against them.

``--check`` parses each labelled command line with fairseq-train's own parser and reports, by
label, those it would refuse (an unknown flag, a value out of range): a recipe or the study runs
it before any work, instead of failing at the training of the one variant that rejects a flag.

Interrupting (Ctrl-C, SIGTERM, SIGHUP) stops every worker: the signal is passed to torchrun,
which stops its workers. torchrun starts each worker in a session of its own, so a SIGKILL of
the launching process group does not reach them; each CPU worker therefore asks the kernel to
kill it when its parent dies (``PR_SET_PDEATHSIG``), and torchrun is asked the same about this
launcher. No worker outlives the run to keep writing checkpoints.

alpha and the logged SKD statistics need nothing more: alpha is a function of the trainer's
update count, which every worker holds identically, and every logged value is a sum that
fairseq all-reduces over the workers before ``reduce_metrics`` normalises it, so N workers log
exactly what one worker with ``--update-freq N`` logs (tests/test_distributed.py).
"""

import ctypes
import os
import shutil
import signal
import subprocess
import sys

PROG = "fairseq-skd-train"
# fairseq's DDP backends that can wrap a model on CPU workers (its default, c10d, cannot)
CPU_DDP_BACKENDS = ("legacy_ddp", "no_c10d")
_PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    """A user-facing problem with the command line, raised before anything starts."""


def die_with_parent(sig=signal.SIGKILL):
    """Ask Linux to send ``sig`` to this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def split_nproc(argv):
    """(N, the rest of argv) from ``[--nproc N] fairseq-train args...``."""
    argv = list(argv)
    nproc = 1
    if argv and (argv[0] == "--nproc" or argv[0].startswith("--nproc=")):
        value = argv.pop(0).partition("=")[2] or (argv.pop(0) if argv else "")
        try:
            nproc = int(value)
        except ValueError:
            raise LaunchError(f"--nproc takes a whole number of workers, got {value!r}") from None
        if nproc < 1:
            raise LaunchError(f"--nproc must be at least 1, got {nproc}")
    return nproc, argv


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
    # The worker runs this file as a script, not as fairseq_skd.cli.train: importing the
    # package first would clash with fairseq's own import of --user-dir when the two paths
    # differ (an installed package and a checkout).
    command = [console_script("torchrun"), "--standalone", "--nproc-per-node", str(nproc),
               os.path.abspath(__file__), "--as-cpu-worker", *argv, *extra]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, available_cores() // nproc))
    return command, {"OMP_NUM_THREADS": threads}, "cpu"


def recover_last_checkpoint(argv, log):
    """Before resuming: if checkpoint_last.pt is damaged, keep it as checkpoint_last.pt.damaged
    and put the newest intact checkpoint in its place, so that fairseq resumes from there
    instead of failing (or from scratch if there is none). Returns the path resumed from, or
    None when nothing had to be done."""
    if option_value(argv, "--restore-file") not in (None, "checkpoint_last.pt"):
        return None  # the user chose what to resume from
    if option_value(argv, "--checkpoint-suffix"):
        return None
    save_dir = option_value(argv, "--save-dir") or "checkpoints"
    last = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.exists(last):
        return None
    # Imported here, not at the top: this file also runs as a CPU worker's script, which must not
    # import the plugin package before fairseq imports it as --user-dir.
    from fairseq_skd.checkpoint_loading import checkpoint_problem, resumable_checkpoints

    problem = checkpoint_problem(last)
    if problem is None:
        return None
    os.replace(last, last + ".damaged")
    for candidate in resumable_checkpoints(save_dir):
        if checkpoint_problem(candidate) is None:
            shutil.copyfile(candidate, last + ".part")
            os.replace(last + ".part", last)
            log(f"{last} is damaged ({problem}; kept as {last}.damaged): resuming from "
                f"{candidate}, the newest intact checkpoint")
            return candidate
    log(f"{last} is damaged ({problem}; kept as {last}.damaged) and {save_dir} holds no intact "
        "checkpoint: training starts from scratch")
    return None


def keep_dictionaries(argv):
    """Copy the data's dictionaries (DATA/dict*.txt) into --save-dir, so that a scorer can later
    check that data given to a checkpoint is indexed with the dictionary it was trained on."""
    if not argv or argv[0].startswith("-"):
        return
    data = argv[0].split(os.pathsep)[0]  # fairseq-train DATA[:DATA2...] ...
    save_dir = option_value(argv, "--save-dir") or "checkpoints"
    if not os.path.isdir(data):
        return  # fairseq-train says what is wrong with it
    os.makedirs(save_dir, exist_ok=True)
    for name in sorted(os.listdir(data)):
        if name.startswith("dict.") and name.endswith(".txt"):
            shutil.copyfile(os.path.join(data, name), os.path.join(save_dir, name))


def run_supervised(command, env):
    """Run ``command`` as a child that dies with this process; pass on Ctrl-C, SIGTERM and
    SIGHUP, wait for it to stop its workers, and return its exit status."""
    child = subprocess.Popen(command, env={**os.environ, **env},
                             preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    received = []

    def forward(signum, _frame):
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    status = child.wait()
    if received:
        return 128 + received[0]
    return status if status >= 0 else 128 - status


def worker_main(argv):
    """One CPU worker under torchrun: fairseq-train with the rank torchrun gave it."""
    die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:  # torchrun died before the line above took effect
        sys.exit(f"{PROG}: worker started after its launcher died; exiting")
    from fairseq_cli.train import cli_main

    sys.argv = ["fairseq-train", *argv,
                "--distributed-init-method", "env://",
                "--distributed-world-size", os.environ["WORLD_SIZE"],
                "--distributed-rank", os.environ["RANK"],
                "--distributed-no-spawn"]
    cli_main()


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--as-cpu-worker"]:
        return worker_main(argv[1:])
    if argv[:1] == ["--check"]:
        sys.exit(check_main(argv[1:]))
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    try:
        nproc, rest = split_nproc(argv)
        cuda_devices = 0
        if nproc > 1 and "--cpu" not in rest:
            import torch

            cuda_devices = torch.cuda.device_count()
        command, env, kind = plan(nproc, rest, cuda_devices)
    except LaunchError as e:
        sys.exit(f"{PROG}: error: {e}")
    recover_last_checkpoint(rest, lambda message: print(f"{PROG}: {message}", file=sys.stderr,
                                                        flush=True))
    keep_dictionaries(rest)
    if kind != "cpu":
        # fairseq-train itself (and, for GPUs, the workers torch spawns, which die with it)
        os.execvpe(command[0], command, {**os.environ, **env})
    sys.exit(run_supervised(command, env))


if __name__ == "__main__":
    main()
