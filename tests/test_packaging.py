"""The package as pip builds it (pyproject.toml): its metadata, files and console scripts, and
the tools' one-line message when one of their packages is missing.

The wheel is built from a copy of the sources (nothing is written into the repository) with
this environment's setuptools, without build isolation and without the network.
"""

import configparser
import csv
import email
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import BIN, REPO

OWN_DEPENDENCIES = {"sacrebleu", "sacremoses", "subword-nmt", "matplotlib", "tensorboard",
                    "tensorboardx"}  # names as pip normalises them
NEVER_DECLARED = {"torch", "fairseq", "fairseq-fixed", "torchaudio"}  # setup_env.sh pins them
CONSOLE_SCRIPTS = {
    "fairseq-skd-score-lm": "fairseq_skd.cli.score:main_lm",
    "fairseq-skd-score-mt": "fairseq_skd.cli.score:main_mt",
    "fairseq-skd-bleu": "fairseq_skd.cli.score_bleu:main",
    "fairseq-skd-collect": "fairseq_skd.cli.collect_results:main",
    "fairseq-skd-train": "fairseq_skd.cli.train:main",
    "fairseq-skd-average": "fairseq_skd.cli.average_checkpoints:main",
    "fairseq-skd-cache-teacher": "fairseq_skd.cli.cache_teacher:main",
}
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "fairseq_skd", "setup.py", "setup.cfg",
           "MANIFEST.in")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy(path, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"),
                          str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    (path,) = (tmp / "dist").glob("fairseq_skd-*.whl")
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def dist_info(wheel, name):
    (path,) = [p for p in wheel if re.fullmatch(rf"fairseq_skd-[^/]+\.dist-info/{name}", p)]
    return wheel[path].decode()


def requirement_name(requirement):
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def test_wheel_metadata_declares_the_plugins_own_dependencies_and_not_torch_or_fairseq(wheel):
    metadata = email.message_from_string(dist_info(wheel, "METADATA"))
    assert metadata["Name"] == "fairseq-skd"
    requires = metadata.get_all("Requires-Dist")
    runtime = {requirement_name(r) for r in requires if "extra ==" not in r}
    assert runtime == OWN_DEPENDENCIES
    assert not {requirement_name(r) for r in requires} & NEVER_DECLARED
    assert "test" in metadata.get_all("Provides-Extra")
    assert 'pytest; extra == "test"' in requires
    assert "MIT" in (metadata["License-Expression"], metadata["License"])
    assert metadata["Requires-Python"] == ">=3.10"
    # the README is the long description
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == (REPO / "README.md").read_text().strip()


def test_wheel_has_the_license_every_module_and_the_console_scripts(wheel):
    licenses = [p for p in wheel if re.fullmatch(r"fairseq_skd-[^/]+\.dist-info/(licenses/)?LICENSE", p)]
    assert len(licenses) == 1
    assert wheel[licenses[0]].decode() == (REPO / "LICENSE").read_text()
    assert "MIT License" in wheel[licenses[0]].decode()
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "fairseq_skd").rglob("*.py")}
    assert modules and modules <= set(wheel)
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == CONSOLE_SCRIPTS


def run_without(packages, argv, tmp_path):
    """A console script of this environment run as a user runs it, with ``packages`` made
    unimportable (None in sys.modules, set by a sitecustomize) rather than uninstalled."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{p!r}] = None\n" for p in packages))
    return subprocess.run([str(BIN / argv[0])] + argv[1:], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(site)))


def assert_says_it_needs(out, prog, *packages):
    """Exit status 1 and, as the last line of stderr, one line naming the packages to install.
    (Lines before it are fairseq's own import-time logging, such as its tensorboardX notice.)"""
    what = "package" if len(packages) == 1 else "packages"
    line = (f"{prog}: needs the Python {what} {', '.join(repr(p) for p in packages)}: "
            f"pip install {' '.join(packages)} "
            "(or, in the fairseq-skd repository, ./setup_env.sh or pip install .)")
    assert (out.returncode, out.stdout) == (1, ""), out.stderr
    assert out.stderr.endswith("\n" + line + "\n") or out.stderr == line + "\n", out.stderr
    assert "Traceback" not in out.stderr


# sacrebleu is checked too, but cannot be blocked here: `import fairseq` itself imports it.


def test_bleu_says_in_one_line_which_package_to_install(tmp_path):
    out = run_without(["sacremoses"], ["fairseq-skd-bleu", "--generate-output", "gen.txt",
                                       "--reference", "ref.txt"], tmp_path)
    assert_says_it_needs(out, "fairseq-skd-bleu", "sacremoses")


def lm_run_folder(exp):
    """A run folder as the LM recipe leaves it, two variants each with fairseq-train's JSON log
    (one update, one validation) and fairseq-skd-score-lm's test summary."""
    for variant, nll in (("baseline", 120.5), ("skd", 118.25)):
        d = exp / variant
        d.mkdir(parents=True)
        (d / "score_test.json").write_text(
            f'{{"subset": "test", "sentences": 40, "tokens": 300, "nll_per_sentence": {nll}, '
            f'"ppl": 150.25, "checkpoint": "x.pt"}}\n')
        (d / "train.log").write_text(
            '2026-11-24 15:03:42 | INFO | train_inner | {"epoch": 1, "update": 1.0, "loss": '
            '"5.1", "nll_loss": "5.1", "ppl": "34.3", "num_updates": "1"}\n'
            '2026-11-24 15:03:43 | INFO | valid | {"epoch": 1, "valid_loss": "4.9", '
            '"valid_nll_loss": "4.9", "valid_ppl": "29.9", "valid_num_updates": "1"}\n')
    return exp


def test_collect_needs_matplotlib_only_for_figures(tmp_path):
    exp = lm_run_folder(tmp_path / "exp")
    out = run_without(["matplotlib"], ["fairseq-skd-collect", str(exp)], tmp_path)
    assert_says_it_needs(out, "fairseq-skd-collect", "matplotlib")
    assert not (exp / "results.md").exists()
    out = run_without(["matplotlib"], ["fairseq-skd-collect", str(exp), "--no-figures"], tmp_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert (exp / "results.md").read_text() in out.stdout
    with open(exp / "results.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert {v: rows[v]["test_nll_per_sentence"] for v in rows} == {"baseline": "120.5",
                                                                   "skd": "118.25"}
    assert not list(exp.rglob("*.png"))


def test_a_recipe_checks_its_packages_before_its_first_stage(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    out = subprocess.run(["bash", str(REPO / "recipes" / "lm" / "run.sh"), "--dataset", "synthetic",
                          "--smoke", "--exp-dir", str(tmp_path / "exp"), "--prep-dir",
                          str(tmp_path / "data")], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(site),
                                  PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        "lm/run.sh: needs the Python package 'matplotlib': pip install matplotlib (or, in the "
        "fairseq-skd repository, ./setup_env.sh or pip install .)")
    assert not (tmp_path / "exp").exists() and not (tmp_path / "data").exists()
