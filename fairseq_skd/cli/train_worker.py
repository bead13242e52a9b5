"""One CPU worker of ``fairseq-skd-train --nproc N``: fairseq-train with the rank torchrun gave it.

torchrun runs this file as a script (``python .../train_worker.py ARGS``), not as the module
``fairseq_skd.cli.train_worker``. That is why it imports nothing of this plugin, and only the
standard library at the top: fairseq imports the plugin itself, as ``--user-dir``, from the
path the command line gives; had the worker imported the package first from another path (an
installed copy beside a checkout), fairseq would refuse the second import ("not globally
unique"). tests/test_distributed.py checks what this file imports.
"""

import ctypes
import os
import signal
import sys

PROG = "fairseq-skd-train"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig=signal.SIGKILL):
    """Ask Linux to send ``sig`` to this process when its parent exits (no-op elsewhere).
    torchrun starts each worker in a session of its own, so a SIGKILL of the launching process
    group does not reach the workers; this makes them stop with their parent instead of training
    on and writing checkpoints."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv):
    """fairseq-train ``argv`` as worker RANK of WORLD_SIZE (torchrun's environment), over
    ``env://``: fairseq's own inference from torchrun's variables divides by the GPU count and
    fails on CPU."""
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


if __name__ == "__main__":
    main(sys.argv[1:])
