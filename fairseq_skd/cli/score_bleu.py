"""Detokenized sacreBLEU of a fairseq-generate output against the raw references (paper Table 3).

    fairseq-generate data-bin/wmt15_en_fi --path ckpt.pt --beam 12 --batch-size 64 \\
        --required-batch-size-multiple 1 --gen-subset test > gen.test.beam12.txt
    fairseq-skd-bleu --generate-output gen.test.beam12.txt --reference test.raw.fi \\
        --bpe subword_nmt --detokenize-lang fi --json bleu_test_beam12.json
    # BLEU = 9.87 40.1/14.3/6.2/2.9 (BP = 0.97 ...)
    # signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.3

The hypotheses are the ``H-<id>`` lines, put back in corpus order by id. Their number must
equal the number of reference lines and the ids must be exactly 0..N-1: fairseq-generate
silently drops the last batch when its size is not a multiple of
``--required-batch-size-multiple`` (default 8; fairseq issue #5036), and a BLEU over part of a
test set must not be reported. BPE is removed (``"@@ "`` joins, as fairseq's
``--post-process subword_nmt``), the text is detokenized with sacremoses, and sacreBLEU scores
it against the untokenized reference text with its own tokenizer.
"""

import argparse
import json
import os
import re
import sys

from fairseq_skd.cli import HelpFormatter
from fairseq_skd.cli.requirements import output_folder_problem, require_packages
from fairseq_skd.evaluation.languages import detokenizer_language_problem

H_LINE = re.compile(r"^H-(\d+)\t")


class BleuError(Exception):
    """A user-facing failure: unreadable input, hypotheses and references that do not pair."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fairseq-skd-bleu",
        description="Detokenized sacreBLEU of fairseq-generate hypotheses (H- lines) against raw "
        "reference text, with a check that no sentence was dropped.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--generate-output", required=True, metavar="GEN.txt",
                        help="fairseq-generate stdout (other lines than H-<id> are ignored)")
    parser.add_argument("--reference", required=True, nargs="+", metavar="REF.txt",
                        help="raw (untokenized, no BPE) reference file(s), one sentence a line")
    parser.add_argument("--bpe", choices=["subword_nmt", "none"], default="subword_nmt",
                        help="BPE to remove from the hypotheses ('@@ ' continuation markers)")
    parser.add_argument("--detokenize-lang", default="en", metavar="LANG",
                        help="the target language's ISO 639-1 code (en, fi, de, ...) for the Moses "
                        "detokenizer, or none to skip detokenization")
    parser.add_argument("--tokenize", default="13a", help="sacreBLEU's tokenizer")
    parser.add_argument("--json", metavar="OUT.json", help="write {bleu, signature, sentences, ...}")
    parser.add_argument("--hypotheses-out", metavar="HYP.txt",
                        help="write the detokenized hypotheses that were scored, in corpus order")
    return parser


def read_lines(path):
    """Lines of a UTF-8 text file; splits on '\\n' only (str.splitlines would also split on
    U+2028 and friends, which occur in WMT text and would shift every following line)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise BleuError(f"file not found: {path}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_generate_output(path):
    """Hypotheses of ``H-<id>\\t<score>\\t<text>`` lines, sorted by id."""
    hypotheses = {}
    for line in read_lines(path):
        match = H_LINE.match(line)
        if not match:
            continue
        index = int(match.group(1))
        fields = line.split("\t", 2)
        text = fields[2] if len(fields) > 2 else ""
        if index in hypotheses:
            raise BleuError(f"{path}: sentence {index} has more than one H- line "
                            "(generated with --nbest > 1?); expected one hypothesis per sentence")
        hypotheses[index] = text
    if not hypotheses:
        raise BleuError(f"{path}: no H-<id> lines; is this fairseq-generate output?")
    return [hypotheses[i] for i in sorted(hypotheses)], sorted(hypotheses)


def remove_bpe(text, bpe):
    if bpe == "subword_nmt":
        return (text + " ").replace("@@ ", "").rstrip()
    return text


def detokenize(lines, lang):
    if lang in (None, "", "none"):
        return list(lines)
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return [detok.detokenize(line.split()) for line in lines]


def check_pairing(ids, references, generate_output, reference_paths):
    n_hyp, n_ref = len(ids), len(references[0])
    for path, refs in zip(reference_paths, references):
        if len(refs) != n_ref:
            raise BleuError(f"reference files differ in length: {reference_paths[0]} has {n_ref} "
                            f"lines, {path} has {len(refs)}")
    if n_hyp != n_ref or ids != list(range(n_ref)):
        missing = sorted(set(range(n_ref)) - set(ids))
        extra = sorted(set(ids) - set(range(n_ref)))
        raise BleuError(
            f"{generate_output} has {n_hyp} hypotheses but {reference_paths[0]} has {n_ref} "
            f"references (missing ids e.g. {missing[:10]}, ids out of range e.g. {extra[:10]}); "
            "fairseq-generate drops the last sentences unless run with "
            "--required-batch-size-multiple 1, and --max-len-b/--skip-invalid-size-inputs-valid-test "
            "can drop others: regenerate the whole set"
        )


def score(generate_output, reference_paths, bpe="subword_nmt", detokenize_lang="en", tokenize="13a"):
    """Return (summary dict, detokenized hypotheses)."""
    from sacrebleu.metrics import BLEU

    if isinstance(reference_paths, (str, os.PathLike)):
        reference_paths = [reference_paths]
    hypotheses, ids = parse_generate_output(generate_output)
    references = [read_lines(path) for path in reference_paths]
    check_pairing(ids, references, generate_output, reference_paths)
    hypotheses = detokenize([remove_bpe(h, bpe) for h in hypotheses], detokenize_lang)
    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(hypotheses, references)
    summary = {
        "bleu": result.score,
        "signature": str(metric.get_signature()),
        "sentences": len(hypotheses),
        "score": str(result),
        "generate_output": str(generate_output),
        "reference": [str(p) for p in reference_paths],
        "bpe": bpe,
        "detokenize_lang": detokenize_lang,
    }
    return summary, hypotheses


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = [detokenizer_language_problem(args.detokenize_lang)]
    problems += [output_folder_problem(flag, path) for flag, path in
                 (("--json", args.json), ("--hypotheses-out", args.hypotheses_out))]
    for problem in filter(None, problems):
        parser.error(problem)
    require_packages("fairseq-skd-bleu", ["sacremoses", "sacrebleu"])
    try:
        summary, hypotheses = score(args.generate_output, args.reference, args.bpe,
                                    args.detokenize_lang, args.tokenize)
    except BleuError as e:
        sys.exit(f"fairseq-skd-bleu: error: {e}")
    if args.hypotheses_out:
        with open(args.hypotheses_out, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hypotheses)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2, ensure_ascii=False)
            f.write("\n")
    print(f"{summary['score']} ({summary['sentences']} sentences)")
    print(f"signature: {summary['signature']}", flush=True)


if __name__ == "__main__":
    main()
