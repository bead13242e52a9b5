"""The recipes (recipes/lm/run.sh, recipes/mt/run.sh) end to end in --smoke mode on the fixtures.

The LM (PTB) and MT (En-Fi) recipes run all their stages, for the baseline and SKD variants,
on tests/fixtures (offline); they run side by side (each single-threaded) to keep the wall time
down. Then: the results table has the rows, the score files cover every sentence, a second run
is a no-op, --stage/--stop-stage select stages, a missing input file and an unknown option
fail with a message that says what is wrong.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fairseq_skd import variants as skd_variants

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
LM = REPO / "recipes" / "lm" / "run.sh"
MT = REPO / "recipes" / "mt" / "run.sh"
VARIANTS = "baseline skd"


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # the recipes find fairseq-train etc. on PATH: this interpreter's environment
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.pop("VIRTUAL_ENV", None)
    return e


def run(script, *args, check=True, timeout=900):
    proc = subprocess.run(["bash", str(script), *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stderr (end)\n{proc.stderr[-6000:]}")
    return proc


def lm_args(tmp, *extra):
    return ["--dataset", "ptb", "--smoke", "--data-dir", FIXTURES / "ptb",
            "--prep-dir", tmp / "data", "--exp-dir", tmp / "exp", "--variants", VARIANTS, *extra]


def mt_args(tmp, *extra):
    return ["--pair", "en-fi", "--smoke", "--data-dir", FIXTURES / "wmt15",
            "--prep-dir", tmp / "data", "--exp-dir", tmp / "exp", "--variants", VARIANTS, *extra]


def count_lines(path):
    return sum(1 for _ in open(path, encoding="utf-8"))


def count_segs(path):
    return sum(1 for line in open(path, encoding="utf-8") if line.startswith("<seg "))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both recipes, all stages, side by side. Returns {name: (tmp dir, stderr, seconds)}."""
    tmp = {name: tmp_path_factory.mktemp(name) for name in ("lm", "mt")}
    # `-- --seed 2`: extra flags go to fairseq-train; the LM trains with 2 data-parallel workers
    cmds = {"lm": [LM, *lm_args(tmp["lm"], "--nproc", 2, "--", "--seed", "2")],
            "mt": [MT, *mt_args(tmp["mt"])]}
    finished = side_by_side(cmds, REPO)
    return {name: (tmp[name], err, seconds) for name, (err, seconds) in finished.items()}


def side_by_side(cmds, cwd):
    """Run the recipe commands ``{name: [script, args...]}`` at once (each single-threaded);
    each must succeed. Returns {name: (stderr, seconds since the start)}."""
    start = time.time()
    procs = {name: subprocess.Popen(["bash", *map(str, cmd)], cwd=cwd, env=env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in cmds.items()}
    out = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, f"{name} recipe exited {proc.returncode}\n{err[-4000:]}"
        out[name] = (err, time.time() - start)
    return out


def test_lm_all_stages(runs):
    tmp, err, _ = runs["lm"]
    for stage in range(6):
        assert f"stage {stage}: " in err
    exp = tmp / "exp"
    results = (exp / "results.md").read_text()
    assert "| Baseline |" in results and "| +SKD |" in results
    assert (exp / "results.csv").is_file()
    commands = (exp / "commands.sh").read_text()
    assert "fairseq-skd-train --nproc 2 --log" in commands
    exp = exp / "seed1"  # the default --seeds 1
    for variant in VARIANTS.split():
        for name in ("train.log", "checkpoint_best.pt", "checkpoint_last.pt"):
            assert (exp / variant / name).is_file(), f"{variant}/{name}"
        for subset, n in (("test", count_lines(FIXTURES / "ptb" / "ptb.test.txt")),
                          ("valid", count_lines(FIXTURES / "ptb" / "ptb.valid.txt"))):
            score = json.loads((exp / variant / f"score_{subset}.json").read_text())
            assert score["sentences"] == n, (variant, subset, score)
            assert score["nll_per_sentence"] > 0 and score["ppl"] > 1
        log = (exp / variant / "train.log").read_text()
        # --update-epoch-batch-itr always; extra flags after `--` reach fairseq-train last
        assert "--update-epoch-batch-itr True" in log
        assert "--seed 2" in log.splitlines()[0].split("--no-progress-bar")[-1]
        assert "torchrun" in log.splitlines()[0] and "training on 2 devices" in log
    assert "self_kd_cross_entropy" in (exp / "skd" / "train.log").read_text()
    assert '"skd_alpha"' in (exp / "skd" / "train.log").read_text()


def test_mt_all_stages(runs):
    tmp, err, _ = runs["mt"]
    for stage in range(7):
        assert f"stage {stage}: " in err
    exp = tmp / "exp" / "seed1"
    results = (exp / "results.md").read_text()
    assert "| Baseline |" in results and "| +SKD |" in results
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in results
    assert "| test BLEU beam 1 | test BLEU beam 12 |" in (tmp / "exp" / "results.md").read_text()
    n = {"valid": count_segs(FIXTURES / "wmt15" / "dev" / "newsdev2015-enfi-src.en.sgm"),
         "test": count_segs(FIXTURES / "wmt15" / "test" / "newstest2015-enfi-src.en.sgm")}
    for variant in VARIANTS.split():
        for subset in ("valid", "test"):
            for beam in (1, 12):
                bleu = json.loads((exp / variant / f"bleu_{subset}_beam{beam}.json").read_text())
                assert bleu["sentences"] == n[subset], (variant, subset, beam, bleu)
                assert "signature" in bleu
        # Fig. 4: validation BLEU logged during training
        assert '"valid_bleu"' in (exp / variant / "train.log").read_text()
        # stage 5's teacher-forced scoring: every test sentence, the diagnostics the collector tables
        score = json.loads((exp / variant / "score_test.json").read_text())
        assert score["sentences"] == n["test"] and len(score["reliability"]) == 15
    assert "## Prediction diagnostics (test set)" in results and "reliability.png" in results
    # the joint BPE and the dictionaries exist; the raw references are the SGML segments
    data = tmp / "data"
    assert (data / "bpe" / "codes").is_file() and (data / "bin" / "dict.fi.txt").is_file()
    assert count_lines(data / "raw" / "test.fi") == n["test"]


@pytest.mark.parametrize("name", ["lm", "mt"])
def test_rerun_is_a_noop(runs, name):
    tmp, _, _ = runs[name]
    ckpt = tmp / "exp" / "seed1" / "skd" / "checkpoint_best.pt"
    before = ckpt.stat().st_mtime_ns
    start = time.time()
    proc = run(LM, *lm_args(tmp)) if name == "lm" else run(MT, *mt_args(tmp))
    assert time.time() - start < 30
    assert ckpt.stat().st_mtime_ns == before
    assert proc.stderr.count("trained already") == 2
    assert "training, fairseq's log" not in proc.stderr
    assert "results.md is newer than every score file and log, kept" in proc.stderr


def test_lm_stage_selection(tmp_path):
    # stages 0-1 only: the raw and text files, nothing binarized, nothing trained
    proc = run(LM, *lm_args(tmp_path, "--stage", "0", "--stop-stage", "1"))
    assert "stage 0: " in proc.stderr and "stage 1: " in proc.stderr
    assert "stage 2: " not in proc.stderr
    assert (tmp_path / "data" / "text" / "test.txt").is_file()
    assert not (tmp_path / "data" / "bin").exists()
    assert not (tmp_path / "exp").exists()
    # a later stage without its input says which stage to run
    proc = run(LM, *lm_args(tmp_path, "--stage", "3", "--stop-stage", "3"), check=False)
    assert proc.returncode != 0
    assert "run stage 2 first" in proc.stderr


def test_wiki2_sentences(tmp_path):
    """WikiText-2: empty lines dropped, paragraphs split after sentence-final tokens."""
    args = ["--dataset", "wiki2", "--smoke", "--data-dir", FIXTURES / "wikitext-2",
            "--prep-dir", tmp_path / "data", "--exp-dir", tmp_path / "exp", "--stop-stage", "1"]
    run(LM, *args)
    raw = (FIXTURES / "wikitext-2" / "wiki.train.tokens").read_text(encoding="utf-8")
    text = (tmp_path / "data" / "text" / "train.txt").read_text(encoding="utf-8").splitlines()
    assert raw.split() == " ".join(text).split()  # every token kept, in order
    assert all(line.strip() for line in text)
    assert len(text) > sum(1 for line in raw.splitlines() if line.strip())
    for line in text:
        assert line.split()[-1] in {".", "?", "!"} or line.startswith("=")


@pytest.mark.parametrize("recipe,missing,args", [
    (LM, "ptb/ptb.valid.txt", lambda d, t: lm_args(t)[:4] + [d] + lm_args(t)[5:]),
    (MT, "wmt15/test/newstest2015-enfi-ref.fi.sgm", lambda d, t: mt_args(t)[:4] + [d] + mt_args(t)[5:]),
])
def test_missing_data_file(tmp_path, recipe, missing, args):
    top = missing.split("/")[0]
    data = tmp_path / "in" / top
    shutil.copytree(FIXTURES / top, data)
    (tmp_path / "in" / missing).unlink()
    proc = run(recipe, *args(data, tmp_path), "--stop-stage", "0", check=False)
    assert proc.returncode != 0
    assert Path(missing).name in proc.stderr
    assert "ERROR" in proc.stderr


@pytest.mark.parametrize("recipe", [LM, MT])
def test_usage_errors(recipe):
    proc = run(recipe, "--bogus", check=False)
    assert proc.returncode != 0
    assert "Usage:" in proc.stderr and "unknown option '--bogus'" in proc.stderr
    proc = run(recipe, "--help")
    assert "Usage:" in proc.stdout and "--stop-stage" in proc.stdout
    proc = run(recipe, check=False)  # the dataset / pair is required
    assert proc.returncode != 0 and "required" in proc.stderr
    key = "--dataset" if recipe == LM else "--pair"
    proc = run(recipe, key, "x", "--variants", "baseline", check=False)
    assert proc.returncode != 0 and "unknown" in proc.stderr
    good = ["--dataset", "ptb"] if recipe == LM else ["--pair", "en-fi"]
    proc = run(recipe, *good, "--variants", "baseline typo", "--stop-stage", "0", check=False)
    assert proc.returncode != 0 and "unknown variant 'typo'" in proc.stderr


def test_fi_en_data(tmp_path):
    """fi-en: Finnish sources, English targets; newsdev2015 (en-fi files) read the other way."""
    args = ["--pair", "fi-en", "--smoke", "--data-dir", FIXTURES / "wmt15",
            "--prep-dir", tmp_path / "data", "--exp-dir", tmp_path / "exp", "--stop-stage", "0"]
    run(MT, *args)
    raw = tmp_path / "data" / "raw"

    def segs(name):
        path = next((FIXTURES / "wmt15").rglob(name))
        return [line.split(">", 1)[1].rsplit("</seg>", 1)[0]
                for line in open(path, encoding="utf-8") if line.startswith("<seg ")]

    assert (raw / "test.fi").read_text(encoding="utf-8").splitlines() == segs("newstest2015-fien-src.fi.sgm")
    assert (raw / "test.en").read_text(encoding="utf-8").splitlines() == segs("newstest2015-fien-ref.en.sgm")
    assert (raw / "valid.fi").read_text(encoding="utf-8").splitlines() == segs("newsdev2015-enfi-ref.fi.sgm")
    assert (raw / "valid.en").read_text(encoding="utf-8").splitlines() == segs("newsdev2015-enfi-src.en.sgm")
    # training: Europarl v8 + Wiki Headlines ("fi ||| en")
    n_titles = count_lines(FIXTURES / "wmt15" / "wiki" / "fi-en" / "titles.fi-en")
    n_ep = count_lines(FIXTURES / "wmt15" / "training" / "europarl-v8.fi-en.fi")
    assert count_lines(raw / "train.fi") == count_lines(raw / "train.en") == n_ep + n_titles


def bash(script, tmp_path):
    """Run ``script`` with recipes/utils/common.sh sourced."""
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . recipes/utils/common.sh; {script}"],
                          cwd=REPO, env=env(), capture_output=True, text=True)


def test_checksums(tmp_path):
    """A published checksum that does not match stops the recipe (a warning with --smoke)."""
    bad = tmp_path / "ptb.test.txt"
    bad.write_text("not the PTB test set\n")
    proc = bash(f"smoke=0; verify_file {bad} {tmp_path}/MANIFEST", tmp_path)
    assert proc.returncode != 0
    assert "8b80168b89c18661a38ef683c0dc3721" in proc.stderr and "Delete it" in proc.stderr
    proc = bash(f"smoke=1; verify_file {bad} {tmp_path}/MANIFEST", tmp_path)
    assert proc.returncode == 0 and "expected in --smoke mode" in proc.stderr
    # every file is recorded (sha256, size, path) in the manifest
    assert str(bad) in (tmp_path / "MANIFEST").read_text()

    # download (curl/wget, here from a file:// URL) through a .part file, then verify
    src = tmp_path / "served" / "sample.tgz"
    src.parent.mkdir()
    src.write_bytes(b"archive bytes\n")
    sha1 = hashlib.sha1(src.read_bytes()).hexdigest()
    table = tmp_path / "checksums.tsv"
    table.write_text(f"sample.tgz\tsha1\t{sha1}\t{src.stat().st_size}\tfile://{src}\ttest\n"
                     f"other.tgz\tnone\t-\t-\tfile://{src}\ttest\n")
    dl = tmp_path / "downloads"
    proc = bash(f"CHECKSUMS={table}; smoke=0; fetch sample.tgz {dl}; verify_file {dl}/sample.tgz "
                f"{tmp_path}/M2; fetch other.tgz {dl}; verify_file {dl}/other.tgz {tmp_path}/M2", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sha1 OK" in proc.stderr and "no published checksum known" in proc.stderr
    assert (dl / "sample.tgz").read_bytes() == src.read_bytes() and not list(dl.glob("*.part"))
    (dl / "sample.tgz").write_bytes(b"corrupted\n")
    proc = bash(f"CHECKSUMS={table}; smoke=0; verify_file {dl}/sample.tgz {tmp_path}/M2", tmp_path)
    assert proc.returncode != 0 and sha1 in proc.stderr


def test_lm_resume_appends(runs):
    """An unfinished training resumes from checkpoint_last.pt and appends to train.log."""
    tmp, _, _ = runs["lm"]
    run_dir = tmp / "exp" / "seed1" / "skd"
    (run_dir / ".train.done").unlink()
    log_before = (run_dir / "train.log").read_text()
    updates = json.loads(log_before[log_before.rindex('{"epoch": 2'):].splitlines()[0])
    proc = run(LM, *lm_args(tmp, "--variants", "skd", "--stage", "3", "--stop-stage", "3",
                            "--nproc", 2, "--", "--max-epoch", "3"))
    assert f"resuming from {run_dir}/checkpoint_last.pt" in proc.stderr
    log = (run_dir / "train.log").read_text()
    assert log.startswith(log_before)  # appended, not rewritten
    added = log[len(log_before):]
    assert "Loaded checkpoint" in added
    assert f"(epoch 3 @ {updates['train_num_updates']} updates)" in added
    assert '"epoch": 3' in added and (run_dir / ".train.done").is_file()


def test_the_recipes_take_every_variant_from_fairseq_skd_variants(tmp_path):
    """The recipes ask fairseq_skd/variants.py for each variant's flags (no copy in bash):
    every variant, --skd-args reaching the ones that apply SKD only, R-Drop's alpha that of the
    recipe's task; groups expand."""
    script = ("skd_sigma=0.3; skd_warmup=7; skd_eta=0.05; noise_std=0.2; task=mt; "
              "skd_args='--skd-qn-max 0.4 --skd-lambda 0.9'; echo \"default: $variants\"; "
              "variants='paper skd_topk skd'; check_variants; echo \"expanded: $variants\"; "
              "for v in $(python3 $VARIANTS_PY expand 'all distillation' --task mt); do "
              "variant_criterion_flags $v TEACHER; echo \"$v: ${variant_flags[*]}\"; done; "
              "task=lm; variant_criterion_flags rdrop; "
              "echo \"rdrop, lm: ${variant_flags[*]}\"")
    proc = bash(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    default, expanded, *lines = proc.stdout.splitlines()
    assert default == "default: paper"
    assert expanded == "expanded: baseline noise skd noise_skd skd_topk"
    flags = dict(line.split(": ", 1) for line in lines)
    rdrop_lm = flags.pop("rdrop, lm")
    assert sorted(flags) == sorted(skd_variants.VARIANTS)  # every variant
    for variant, line in flags.items():
        assert line.split() == skd_variants.criterion_flags(
            variant, 0.3, 7, 0.05, 0.2, skd_args=["--skd-qn-max", "0.4", "--skd-lambda", "0.9"],
            teacher="TEACHER", task="mt")
        assert ("--skd-qn-max" in line) == skd_variants.applies_skd(variant), variant
    assert flags["baseline"] == "--criterion cross_entropy"
    assert "--skd-alpha-max 0" in flags["noise"] and "--skd-alpha-max 0" in flags["label_smoothing"]
    # R-Drop: fairseq's criterion made comparable, the alpha its authors ran each task with
    assert flags["rdrop"] == "--criterion rdrop_cross_entropy --rdrop-alpha 5"
    assert rdrop_lm == "--criterion rdrop_cross_entropy --rdrop-alpha 1.0"
    # without the task, R-Drop's flags are refused naming the flag to give
    proc = subprocess.run([sys.executable, "fairseq_skd/variants.py", "flags", "rdrop", "--sigma",
                           "0.1", "--warmup", "1", "--alpha-step", "1", "--noise-std", "0.1"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert ("error: variant rdrop takes R-Drop's alpha for the task: give --task lm or mt"
            in proc.stderr)
    proc = bash("variants='skd nonsense'; check_variants", tmp_path)
    assert proc.returncode != 0 and "--variants: unknown variant 'nonsense'" in proc.stderr


def corpus_from_fixtures(root):
    """The fixtures laid out as --corpus folders: PTB's three files as train/valid/test.txt, and
    250 Europarl de-en pairs as train/valid/test.{en,de} (200 / 25 / 25)."""
    lm, mt = root / "my_lm_corpus", root / "my_mt_corpus"
    lm.mkdir(parents=True)
    mt.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(FIXTURES / "ptb" / f"ptb.{split}.txt", lm / f"{split}.txt")
    for lang in ("en", "de"):
        lines = (FIXTURES / "wmt15" / "training" / f"europarl-v7.de-en.{lang}").read_text(
            encoding="utf-8").splitlines(keepends=True)
        for split, part in (("train", lines[:200]), ("valid", lines[200:225]), ("test", lines[225:250])):
            (mt / f"{split}.{lang}").write_text("".join(part), encoding="utf-8")
    return lm, mt


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory):
    """Both recipes on corpora of one's own with fairseq's transformer, side by side:
    {name: (tmp dir, stderr)}."""
    root = tmp_path_factory.mktemp("corpus")
    lm, mt = corpus_from_fixtures(root)
    common = ["--smoke", "--model", "transformer", "--variants", "baseline skd",
              "--skd-args", "--skd-lambda 0.9"]
    cmds = {"lm": [LM, "--corpus", lm, "--vocab-size", 50, *common],
            "mt": [MT, "--pair", "en-de", "--corpus", mt, "--bpe-size", 400, "--beams", "1 2", *common]}
    return {name: (root, err) for name, (err, _) in side_by_side(cmds, root).items()}


@pytest.mark.parametrize("name,experiment", [("lm", "my_lm_corpus"), ("mt", "my_mt_corpus")])
def test_a_corpus_of_ones_own_with_a_transformer(corpus_runs, name, experiment):
    root, err = corpus_runs[name]
    exp = root / "exp" / experiment  # named after the corpus folder, under the current folder
    results = (exp / "results.md").read_text()
    assert "| Baseline |" in results and "| +SKD |" in results
    header = next(line for line in results.splitlines() if line.startswith("| model"))
    assert "paper" not in header.lower() and "no paper numbers" not in results  # ours only
    assert (root / "data" / experiment / "MANIFEST.sha256").is_file()  # sha256 recorded
    exp = exp / "seed1"
    results = (exp / "results.md").read_text()
    for variant in ("baseline", "skd"):
        command = (exp / variant / "train.log").read_text().splitlines()[0]
        arch = "transformer_lm" if name == "lm" else "transformer_iwslt_de_en"
        assert f"--arch {arch}" in command
        # --skd-args reaches the SKD variant only
        assert ("--skd-lambda 0.9" in command) == (variant == "skd")
    # the transformer's tied embedding is ~1.4 apart: sigma auto keeps q_n off the clip
    skd_log = (exp / "skd" / "train.log").read_text()
    assert "--skd-sigma auto" in skd_log.splitlines()[0]
    clips = [float(r["skd_clip"]) for r in parse_log_records(skd_log) if "skd_clip" in r]
    assert clips and max(clips) < 0.95, clips
    assert "SKD: q_n was clipped" not in skd_log  # the saturation warning did not fire
    if name == "lm":
        # --vocab-size 50 of the fixture's 100 words: the rarer became <unk>
        words = (root / "data" / experiment / "bin" / "dict.txt").read_text().splitlines()
        # (fairseq pads the dictionary to a multiple of 8 with madeupwordNNNN entries)
        assert len([w for w in words if not w.startswith("madeupword")]) == 50
    else:
        assert "Beam 2 (ours)" in results
        assert "sacremoses has rules" in err


def parse_log_records(text):
    from fairseq_skd.results.logs import raw_records

    return raw_records(text, "train_inner")


def recipe_train_flags(conf, *settings, variant="skd"):
    """--arch, the training flags and VARIANT's criterion flags of recipes/conf/CONF.sh with
    ``settings`` (bash assignments, e.g. dataset=ptb), as the recipe builds them."""
    script = (f"set -euo pipefail; log() {{ :; }}; {'; '.join(settings)}; . recipes/conf/{conf}.sh; "
              "printf '%s\\n' --arch \"$arch\" \"${train_flags[@]}\"; "
              f"python3 fairseq_skd/variants.py flags {variant} --sigma \"$skd_sigma\" "
              "--warmup \"$skd_warmup\" --alpha-step \"$skd_eta\" --noise-std \"$noise_std\"")
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def fairseq_config(argv):
    """fairseq-train's configuration (omegaconf) for ``argv``, as it parses it."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(),
                                       ["DATA", "--user-dir", str(REPO / "fairseq_skd"), *argv])
    return convert_namespace_to_omegaconf(args)


def settings(cfg):
    """{(group, key): value} of a configuration; a legacy architecture's model is a Namespace."""
    found = {}
    for group in ("common", "task", "model", "criterion", "optimizer", "lr_scheduler",
                  "optimization", "dataset", "checkpoint"):
        values = cfg[group]
        items = vars(values).items() if not hasattr(values, "items") else values.items()
        found.update({(group, key): value for key, value in items})
    return found


# Set by the recipe for every dataset (train_command) or by the hydra run itself, and copies of
# other fields that fairseq's argparse path fills in (hydra interpolates them).
NOT_TRAINING_SETTINGS = {("task", "data"), ("common", "user_dir"), ("checkpoint", "save_dir"),
                         ("common", "log_format"), ("common", "log_interval"),
                         ("dataset", "required_batch_size_multiple"),
                         ("dataset", "update_epoch_batch_itr"), ("dataset", "batch_size_valid"),
                         ("task", "batch_size"), ("task", "batch_size_valid"),
                         ("optimizer", "lr"), ("lr_scheduler", "lr"), ("model", "data"),
                         ("optimization", "max_update")}


COMPONENTS = {"task": "--task", "model": "--arch", "criterion": "--criterion",
              "optimizer": "--optimizer", "lr_scheduler": "--lr-scheduler"}


def yaml_as_flags(yaml):
    """The fairseq-train flags that a fairseq-hydra-train YAML's fields stand for."""
    argv = []
    for group, fields in yaml.items():
        for key, value in fields.items():
            if value == "???" or (group, key) in NOT_TRAINING_SETTINGS:
                continue
            flag = COMPONENTS[group] if key == "_name" else "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif isinstance(value, list):
                argv += [flag, f"({', '.join(map(str, value))})" if len(value) > 1 else str(value[0])]
            elif value is not False:
                argv += [flag, str(value)]
    return argv


def test_the_hydra_config_trains_the_lm_recipes_ptb_model():
    """recipes/hydra/skd_lstm_lm.yaml is the LM recipe's PTB +SKD run: its fields, read as
    fairseq-train flags, give fairseq the configuration the recipe's command line gives it, every
    training setting alike (not the data, output and logging the two runners set themselves)."""
    from omegaconf import OmegaConf

    recipe = settings(fairseq_config(recipe_train_flags("lm", "dataset=ptb", "model=lstm", "smoke=0")))
    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "recipes" / "hydra" / "skd_lstm_lm.yaml"))
    hydra = settings(fairseq_config(yaml_as_flags(yaml)))
    differ = {k: (recipe.get(k), hydra.get(k)) for k in set(recipe) | set(hydra)
              if k not in NOT_TRAINING_SETTINGS and recipe.get(k) != hydra.get(k)}
    assert differ == {}, f"(recipe, YAML) differ in {differ}"
    assert recipe["model", "dropout"] == 0.5 and recipe["criterion", "skd_sigma"] == "0.1"


def test_bpe_on_a_small_corpus_gives_about_the_dictionary_asked_for(tmp_path):
    """subword-nmt's advised --vocabulary-threshold 50 drops every subword seen fewer than 50
    times: on 200 pairs it left about 60 units in all of 200 asked for, words split into 3-5
    characters. The recipe's threshold keeps 95% of the learnt units."""
    _, corpus = corpus_from_fixtures(tmp_path)
    proc = run(MT, "--pair", "en-de", "--corpus", corpus, "--bpe-size", 200, "--stop-stage", 3,
               "--prep-dir", tmp_path / "data")
    words = {l: set(line.split()[0] for line in (tmp_path / "data" / "bin" / f"dict.{l}.txt")
                    .read_text().splitlines()) for l in ("en", "de")}
    assert 140 <= len(words["en"] | words["de"]) <= 230, {l: len(w) for l, w in words.items()}
    per_word = [float(line.split(": ")[1].split()[0]) for line in proc.stderr.splitlines()
                if "subword units per word" in line]
    assert len(per_word) == 2 and max(per_word) < 3, per_word  # 3.4-4.8 with the threshold 50
    assert "WARNING" not in proc.stderr


def test_the_shell_scripts_are_shellcheck_clean():
    """docs/recipes.md says so: every shell script of the repository, sourced files followed."""
    scripts = sorted(str(p.relative_to(REPO)) for pattern in ("*.sh", "recipes/**/*.sh", "bench/*.sh")
                     for p in REPO.glob(pattern))
    assert "recipes/lm/run.sh" in scripts and "run.sh" in scripts
    shellcheck = Path(sys.executable).parent / "shellcheck"
    proc = subprocess.run([str(shellcheck), "-x", *scripts], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
