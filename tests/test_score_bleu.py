"""fairseq-skd-bleu: H- lines in corpus order, BPE removed, Moses-detokenized, sacreBLEU against
raw references; dropped sentences are an error."""

import json

import pytest
import sacrebleu

from fairseq_skd.cli import score_bleu

from helpers import run

REFERENCES = [
    "The cat's toy is under the table.",
    "We feel very good about supply chain capability.",
    "\"Really?\" she asked, and laughed.",
    "They'll have an impact in the future only.",
]
# What fairseq-generate prints for them: Moses-tokenized (with its &apos; / &quot; escapes) and
# BPE-split; sentence ids out of order, other line kinds and log lines in between.
PERFECT = [
    "2026-11-24 15:03:41 | INFO | fairseq_cli.generate | loading model(s) from ckpt.pt",
    "S-2\t&quot; Re@@ ally ? &quot; she asked , and laughed .",
    "T-2\t&quot; Re@@ ally ? &quot; she asked , and laughed .",
    "H-2\t-0.31\t&quot; Re@@ ally ? &quot; she asked , and laughed .",
    "D-2\t-0.31\t\" Really ? \" she asked , and laughed .",
    "P-2\t-0.1 -0.2 -0.3",
    "H-0\t-0.20\tThe c@@ at &apos;s to@@ y is under the table .",
    "H-3\t-0.42\tThey &apos;ll have an impact in the future only .",
    "H-1\t-0.12\tWe feel very good about supp@@ ly chain cap@@ ability .",
    "2026-11-24 15:03:45 | INFO | fairseq_cli.generate | Translated 4 sentences (40 tokens)",
]


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def references(tmp_path):
    return write(tmp_path / "ref.en", REFERENCES)


def test_identical_translation_scores_100(tmp_path, references):
    gen = write(tmp_path / "gen.txt", PERFECT)
    summary, hypotheses = score_bleu.score(gen, references, "subword_nmt", "en")
    assert hypotheses == REFERENCES
    assert summary["bleu"] == pytest.approx(100.0)
    assert summary["sentences"] == 4
    assert "tok:13a" in summary["signature"] and f"version:{sacrebleu.__version__}" in summary["signature"]


def test_score_equals_sacrebleu_on_the_expected_detokenized_text(tmp_path, references):
    gen = write(tmp_path / "gen.txt", [
        "H-1\t-0.5\tWe have a good sense of the strength of the production chain .",
        "H-0\t-0.5\tThe cat &apos;s to@@ y lies under a table .",
        "H-3\t-0.5\tThey will only affect in the fu@@ ture .",
        "H-2\t-0.5\t&quot; Really ? &quot; she said .",
    ])
    expected_text = [
        "The cat's toy lies under a table.",
        "We have a good sense of the strength of the production chain.",
        "\"Really?\" she said.",
        "They will only affect in the future.",
    ]
    expected = sacrebleu.corpus_bleu(expected_text, [REFERENCES])
    assert 5 < expected.score < 95

    out = tmp_path / "bleu.json"
    proc = run("fairseq-skd-bleu", "--generate-output", gen, "--reference", references,
               "--bpe", "subword_nmt", "--detokenize-lang", "en", "--json", out,
               "--hypotheses-out", tmp_path / "hyp.detok")
    summary = json.loads(out.read_text())
    assert summary["bleu"] == pytest.approx(expected.score, abs=1e-9)
    assert summary["sentences"] == 4
    assert (tmp_path / "hyp.detok").read_text().split("\n")[:-1] == expected_text
    stdout = proc.stdout.splitlines()
    assert stdout[0].startswith(f"BLEU = {expected.score:.2f}")
    assert stdout[1] == f"signature: {summary['signature']}"
    assert summary["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_no_bpe_no_detokenization(tmp_path):
    refs = write(tmp_path / "ref.txt", ["a b@@ c .", "x y"])
    gen = write(tmp_path / "gen.txt", ["H-1\t-1\tx y", "H-0\t-1\ta b@@ c ."])
    summary, hypotheses = score_bleu.score(gen, refs, "none", "none")
    assert hypotheses == ["a b@@ c .", "x y"] and summary["bleu"] == pytest.approx(100.0)


def test_dropped_sentences_fail_loudly(tmp_path, references, capsys):
    gen = write(tmp_path / "gen.txt", [line for line in PERFECT if not line.startswith("H-3")])
    with pytest.raises(SystemExit) as e:
        score_bleu.main(["--generate-output", str(gen), "--reference", str(references)])
    message = str(e.value.code)
    assert "has 3 hypotheses but" in message and "has 4 references" in message
    assert "[3]" in message and "--required-batch-size-multiple 1" in message
    assert capsys.readouterr().out == ""

    # as many hypotheses as references, but not ids 0..N-1: still an error
    shifted = write(tmp_path / "shifted.txt", [line.replace("H-3", "H-4") for line in PERFECT])
    with pytest.raises(score_bleu.BleuError, match="ids out of range e.g. \\[4\\]"):
        score_bleu.score(shifted, references)

    nbest = write(tmp_path / "nbest.txt", PERFECT + ["H-0\t-0.9\tThe cat ."])
    with pytest.raises(score_bleu.BleuError, match="more than one H- line"):
        score_bleu.score(nbest, references)

    with pytest.raises(score_bleu.BleuError, match="no H-<id> lines"):
        score_bleu.score(write(tmp_path / "empty.txt", ["nothing here"]), references)

    with pytest.raises(SystemExit) as e:
        score_bleu.main(["--generate-output", str(tmp_path / "missing.txt"), "--reference", str(references)])
    assert f"file not found: {tmp_path / 'missing.txt'}" in str(e.value.code)


def test_lines_split_on_newline_only(tmp_path):
    # U+2028 occurs inside WMT sentences; str.splitlines() would make two lines of it
    path = tmp_path / "ref.txt"
    path.write_text("one\u2028still one\ntwo\r\nthree\n", encoding="utf-8")
    assert score_bleu.read_lines(path) == ["one\u2028still one", "two", "three"]
