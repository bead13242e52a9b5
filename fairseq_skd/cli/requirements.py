"""Checks a command-line tool makes when it starts: its optional Python packages are installed,
and the folders it will write into exist (rather than fail after the work is done).

torch and fairseq are what every tool needs and what the environment is built around; the
packages checked here are the plugin's own dependencies (pyproject.toml), which an environment
made by hand may lack. Each tool calls :func:`require_packages` as the first thing in ``main()``,
and the recipes run this file before their first stage, so a missing package is reported in one
line before any work starts (a recipe would otherwise train every variant and only then fail to
draw its figures).
"""

import importlib.util
import os
import sys


def missing_packages(names):
    """The names among ``names`` (top-level import names) that cannot be imported."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_packages(prog, names):
    """Exit with status 1 and one line on stderr if any of ``names`` is not installed, e.g.

        fairseq-skd-bleu: needs the Python package 'sacremoses': pip install sacremoses (or, in
        the fairseq-skd repository, ./setup_env.sh or pip install .)

    ``names`` are import names that are also the names pip installs them by (sacremoses,
    sacrebleu, matplotlib). The packages are only found, not imported: each tool imports them
    where it uses them.
    """
    missing = missing_packages(names)
    if missing:
        what = "package" if len(missing) == 1 else "packages"
        sys.exit(f"{prog}: needs the Python {what} {', '.join(repr(m) for m in missing)}: "
                 f"pip install {' '.join(missing)} "
                 "(or, in the fairseq-skd repository, ./setup_env.sh or pip install .)")


def output_folder_problem(flag, path):
    """What is wrong with writing ``flag``'s file ``path`` (its folder does not exist), or None."""
    if not path:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        return None
    return f"{flag} {path}: the folder {folder} does not exist; create it or write elsewhere"


if __name__ == "__main__":
    # The recipes' check before their first stage: ``python3 requirements.py PROG PACKAGE...``
    # (run as a script: it needs neither torch nor fairseq).
    require_packages(sys.argv[1], sys.argv[2:])
