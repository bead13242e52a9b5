"""Tiny datasets and fairseq command-line runs for the tests (after fairseq's tests/utils.py).

Commands run as subprocesses of this environment's console scripts (``fairseq-train`` ...),
exactly as a user runs them, with ``--user-dir`` pointing at the plugin.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "fairseq_skd")
BIN = Path(sys.executable).parent


def write_lines(path, lines):
    Path(path).write_text("".join(line + "\n" for line in lines))


def make_reverse_translation_data(data_dir, n_train=600, n_valid=40, n_test=40, vocab=24,
                                  min_len=3, max_len=8, seed=1):
    """Source: random words; target: the same words reversed and renamed (w3 -> W3)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]

    def pair():
        src = [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]
        return " ".join(src), " ".join(w.upper() for w in reversed(src))

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        pairs = [pair() for _ in range(n)]
        write_lines(data_dir / f"{split}.in", [s for s, _ in pairs])
        write_lines(data_dir / f"{split}.out", [t for _, t in pairs])
    return data_dir


def make_lm_data(data_dir, n_train=500, n_valid=40, n_test=40, seed=1):
    """Sentences from a tiny grammar: subject, verb, object, with near-synonym words."""
    rng = random.Random(seed)
    subjects = ["the cat", "the dog", "a cat", "a dog", "my friend", "the teacher"]
    verbs = ["sees", "likes", "watches", "finds"]
    objects = ["the ball", "a ball", "the house", "a toy", "the garden", "a bird"]

    def sentence():
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        if rng.random() < 0.4:
            s += f" and {rng.choice(verbs)} {rng.choice(objects)}"
        return s

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        write_lines(data_dir / f"{split}.txt", [sentence() for _ in range(n)])
    return data_dir


def console_script(command):
    """How to start a fairseq console script (``fairseq-train`` ...): the script beside this
    Python, or, where fairseq was installed without its scripts there (``pip install --target``,
    as bench/gpu_check.sh does), its module: ``python -m fairseq_cli.train``."""
    script = BIN / command
    if script.exists() or not command.startswith("fairseq-"):
        return [str(script)]
    return [sys.executable, "-m", "fairseq_cli." + command[len("fairseq-"):].replace("-", "_")]


def run(command, *args, cwd=None, check=True):
    """Run a fairseq console script (``fairseq-train`` ...) and return the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    cmd = [*console_script(command), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def preprocess_translation(data_dir, joined_dictionary=False):
    data_dir = Path(data_dir)
    extra = ["--joined-dictionary"] if joined_dictionary else []
    run("fairseq-preprocess", "--source-lang", "in", "--target-lang", "out",
        "--trainpref", data_dir / "train", "--validpref", data_dir / "valid",
        "--testpref", data_dir / "test", "--destdir", data_dir / "bin", "--workers", 1, *extra)
    return data_dir / "bin"


def preprocess_lm(data_dir):
    data_dir = Path(data_dir)
    run("fairseq-preprocess", "--only-source", "--trainpref", data_dir / "train.txt",
        "--validpref", data_dir / "valid.txt", "--testpref", data_dir / "test.txt",
        "--destdir", data_dir / "bin", "--workers", 1)
    return data_dir / "bin"


def train(data_bin, save_dir, *args, cpu=True, check=True):
    """fairseq-train with the plugin, on CPU unless ``cpu`` is False (then on the GPU fairseq
    picks); returns the CompletedProcess (logs in stderr)."""
    return run("fairseq-train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir,
               *(["--cpu"] if cpu else []), "--num-workers", 0, "--seed", 1, "--log-format", "json",
               "--log-interval", 1, "--no-progress-bar", *args, check=check)


def parse_json_logs(text, kind="train_inner"):
    """The JSON records fairseq logs for ``kind`` ('train_inner', 'train', 'valid')."""
    import json

    records = []
    for line in text.splitlines():
        start = line.find("{")
        if start < 0 or f"| {kind} |" not in line and f"[{kind}]" not in line:
            continue
        try:
            records.append(json.loads(line[start:]))
        except ValueError:
            continue
    return records
