"""Data-parallel training on CPU through fairseq-skd-train --nproc (torchrun, gloo, fairseq's DDP).

- 2 workers train exactly what 1 worker with --update-freq 2 trains: the same logged loss,
  nll_loss, skd_alpha and skd_qn at every update (SKD reaching alpha = 1 during the run) and
  bitwise-equal final weights;
- a 2-worker run killed (SIGKILL of its process group) mid-run leaves no worker behind, and
  resumed, it logs what the uninterrupted run logged and ends with the same weights;
- Ctrl-C (SIGINT) and SIGTERM stop every worker too.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fairseq_skd  # noqa: F401  (safe-loader globals for the checkpoints)
from fairseq_skd.cli import train as launcher

from helpers import BIN, USER_DIR, by_update, last_weights, make_lm_data, preprocess_lm

EPOCHS = 12
# ~7 updates per epoch with 2 workers x 300 tokens: alpha is 0 for 3 updates, then reaches 1
# after 20 more, well inside the ~84 updates of the run.
TRAIN = ["--task", "language_modeling", "--sample-break-mode", "eos", "--tokens-per-sample", 64,
         "--arch", "skd_lstm_lm_tiny", "--dropout", 0, "--optimizer", "adam", "--lr", 0.003,
         "--max-tokens", 300, "--required-batch-size-multiple", 1,
         "--criterion", "self_kd_cross_entropy", "--skd-sigma", 0.1,
         "--skd-warmup-updates", 3, "--skd-alpha-step", 0.05,
         "--max-epoch", EPOCHS, "--save-interval-updates", 15, "--update-epoch-batch-itr", "True",
         "--seed", 1, "--log-format", "json", "--log-interval", 1, "--no-progress-bar",
         "--num-workers", 0, "--cpu"]
LOGGED = ("loss", "nll_loss", "skd_alpha", "skd_qn")


@pytest.fixture(scope="module")
def lm_bin(tmp_path_factory):
    return preprocess_lm(make_lm_data(tmp_path_factory.mktemp("lm")))


def launch(nproc, data_bin, save_dir, *extra):
    """fairseq-skd-train in a session of its own (as a recipe's process group), output in
    save_dir/train.log."""
    save_dir.mkdir(parents=True, exist_ok=True)
    log = open(save_dir / "train.log", "a")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([str(BIN / "fairseq-skd-train"), "--nproc", str(nproc), str(data_bin),
                             "--user-dir", USER_DIR, "--save-dir", str(save_dir),
                             *map(str, TRAIN), *map(str, extra)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def train(nproc, data_bin, save_dir, *extra):
    proc = launch(nproc, data_bin, save_dir, *extra)
    assert proc.wait(timeout=600) == 0, (save_dir / "train.log").read_text()[-4000:]
    return records(save_dir)


def records(save_dir):
    return by_update((save_dir / "train.log").read_text())


def processes_mentioning(text):
    """PIDs of live processes whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_for_update(save_dir, update, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if any(u >= update for u in records(save_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no update {update} logged in {timeout}s")


def interrupt(proc, save_dir, sig):
    """Send ``sig`` to the run's process group; assert that within seconds no process of the
    run is left and that nothing in save_dir changes afterwards."""
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while processes_mentioning(str(save_dir)) and time.time() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(save_dir)) == [], "workers outlived the launcher"
    before = {p.name: p.stat().st_mtime_ns for p in save_dir.glob("*.pt")}
    time.sleep(2)
    assert {p.name: p.stat().st_mtime_ns for p in save_dir.glob("*.pt")} == before
    return proc.returncode


@pytest.fixture(scope="module")
def two_workers(lm_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("two_workers")
    return save_dir, train(2, lm_bin, save_dir)


def test_two_workers_log_and_learn_exactly_what_one_worker_with_update_freq_2_does(
        two_workers, lm_bin, tmp_path):
    save_dir, two = two_workers
    one = train(1, lm_bin, tmp_path / "one", "--update-freq", 2)
    assert sorted(one) == sorted(two) and len(two) > 70
    for update in two:
        assert {k: one[update][k] for k in LOGGED} == {k: two[update][k] for k in LOGGED}, update
    alphas = [float(r["skd_alpha"]) for r in two.values()]
    assert alphas[0] == 0 and 0 < alphas[len(alphas) // 8] < 1 and alphas[-1] == 1
    w1, w2 = last_weights(tmp_path / "one"), last_weights(save_dir)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_killed_two_worker_run_leaves_no_worker_and_resumes_to_the_same_weights(
        two_workers, lm_bin, tmp_path):
    reference_dir, reference = two_workers
    save_dir = tmp_path / "killed"
    proc = launch(2, lm_bin, save_dir)
    wait_for_update(save_dir, 40)  # past mid-epoch checkpoints, well before the end
    assert interrupt(proc, save_dir, signal.SIGKILL) == -signal.SIGKILL
    killed_at = max(records(save_dir))
    assert killed_at < max(reference), "the run ended before it was killed"

    resumed = train(2, lm_bin, save_dir)
    log = (save_dir / "train.log").read_text()
    assert "Loaded checkpoint" in log and max(resumed) == max(reference)
    for update, record in reference.items():
        assert {k: resumed[update][k] for k in LOGGED} == {k: record[k] for k in LOGGED}, update
    w_ref, w = last_weights(reference_dir), last_weights(save_dir)
    assert all(torch.equal(w_ref[k], w[k]) for k in w_ref)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_every_worker(sig, lm_bin, tmp_path):
    save_dir = tmp_path / "run"
    proc = launch(2, lm_bin, save_dir)
    wait_for_update(save_dir, 5)
    assert len(processes_mentioning(str(save_dir))) >= 4  # launcher, torchrun, 2 workers
    assert interrupt(proc, save_dir, sig) == 128 + sig


def test_a_damaged_checkpoint_last_is_replaced_by_the_newest_intact_one(lm_bin, tmp_path):
    """A kill during fairseq's copy to checkpoint_last.pt leaves it cut short: the next run
    resumes from the newest intact checkpoint and ends where an uninterrupted run ends."""
    reference = tmp_path / "uninterrupted"
    train(1, lm_bin, reference)
    save_dir = tmp_path / "damaged"
    train(1, lm_bin, save_dir, "--max-epoch", 4)  # later flags win: 4 of the EPOCHS epochs
    last = save_dir / "checkpoint_last.pt"
    content = last.read_bytes()
    last.write_bytes(content[: len(content) // 2])
    # the newest file is not the most trained one: a checkpoint of an earlier update, touched
    earlier = min(save_dir.glob("checkpoint_*_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
    earlier.touch()
    furthest = torch.load(save_dir / "checkpoint4.pt", map_location="cpu")["optimizer_history"][-1]["num_updates"]

    train(1, lm_bin, save_dir)
    log = (save_dir / "train.log").read_text()
    assert f"{last} is damaged" in log
    picked = log.split(f"{last} is damaged", 1)[1].split("\n", 1)[0]
    assert f"the intact checkpoint furthest in training (update {furthest})" in picked, picked
    assert str(earlier) not in picked
    assert (save_dir / "checkpoint_last.pt.damaged").read_bytes() == content[: len(content) // 2]
    w_ref, w = last_weights(reference), last_weights(save_dir)
    assert all(torch.equal(w_ref[k], w[k]) for k in w_ref)


def test_the_cpu_worker_imports_nothing_of_the_plugin_nor_fairseq_at_its_start():
    """torchrun runs cli/train_worker.py as a script; fairseq then imports the plugin from
    --user-dir's path. Had the worker imported fairseq_skd first (from wherever Python finds
    it), fairseq would refuse the second import when the paths differ. Loading the file
    imports only the standard library; fairseq comes inside main(), the plugin never."""
    worker = Path(USER_DIR) / "cli" / "train_worker.py"
    probe = ("import runpy, sys; before = set(sys.modules); "
             f"runpy.run_path({str(worker)!r}, run_name='torchrun_worker'); "
             "print(sorted(m for m in set(sys.modules) - before if not m.startswith('_')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    packages = {m.split(".")[0] for m in eval(out.stdout)}
    assert "ctypes" in packages  # what the worker needs to die with its launcher
    assert packages <= set(sys.stdlib_module_names), packages - set(sys.stdlib_module_names)
    source = worker.read_text()
    assert "fairseq_skd" not in source.split('if __name__ == "__main__":')[0].split('"""', 2)[2]


def test_a_python_error_followed_by_an_abort_exits_with_the_python_errors_status(capfd):
    """fairseq runs that abort after a Python error (C++ threads at exit: "terminate called
    without an active exception", 134) leave fairseq-skd-train with 1 and the error only."""
    from fairseq_skd.cli.train import run_supervised

    child = ("import os, sys; sys.stderr.write('Traceback (most recent call last):\\n"
             "ValueError: the cause\\nterminate called without an active exception\\n'); "
             "sys.stderr.flush(); os.abort()")
    assert run_supervised([sys.executable, "-c", child], {}) == 1
    err = capfd.readouterr().err
    assert "ValueError: the cause" in err and "terminate called" not in err
    lines = []
    assert run_supervised([sys.executable, "-c", child], {}, lines.append) == 1
    assert lines == ["Traceback (most recent call last):\n", "ValueError: the cause\n"]
    # an abort with no Python error before it keeps its status
    assert run_supervised([sys.executable, "-c", "import os; os.abort()"], {}) == 134


def test_the_gpu_plan_is_fairseqs_own_launcher_with_one_worker_per_gpu():
    """fairseq-skd-train --nproc N where torch sees GPUs: fairseq-train with
    --distributed-world-size N (fairseq spawns a process per GPU) and
    --load-checkpoint-on-all-dp-ranks, no environment of its own; each added only if missing."""
    fairseq_train = str(BIN / "fairseq-train")
    argv = ["data-bin", "--arch", "skd_lstm_lm_tiny", "--save-dir", "run"]
    assert launcher.plan(2, argv, cuda_devices=4) == (
        [fairseq_train, *argv, "--load-checkpoint-on-all-dp-ranks", "--distributed-world-size",
         "2"], {}, "gpu")
    given = [*argv, "--distributed-world-size", "4", "--load-checkpoint-on-all-dp-ranks"]
    assert launcher.plan(4, given, cuda_devices=4) == ([fairseq_train, *given], {}, "gpu")
    assert launcher.plan(1, argv, cuda_devices=4) == ([fairseq_train, *argv], {}, "single")
    # --cpu, or no GPU: the CPU workers of torchrun, whatever the GPUs
    for cpu_argv, gpus in (([*argv, "--cpu"], 4), (argv, 0)):
        command, env, kind = launcher.plan(2, cpu_argv, gpus)
        assert kind == "cpu" and command[1:4] == ["--standalone", "--nproc-per-node", "2"]
        assert "--distributed-world-size" not in command and "OMP_NUM_THREADS" in env


def test_the_gpu_plan_refuses_more_workers_than_gpus():
    with pytest.raises(launcher.LaunchError, match=r"^--nproc 4 asks for 4 GPU workers but torch "
                       r"sees 2 GPU\(s\): use --nproc 2 or add --cpu$"):
        launcher.plan(4, ["data-bin"], cuda_devices=2)
