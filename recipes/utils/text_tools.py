"""Small text steps of the recipes (standard library only; run with the recipes' python).

    text_tools.py sgm IN.sgm > OUT.txt
        WMT's SGML test sets to one segment per line, exactly as sacrebleu does for them
        (``FakeSGMLDataset``: lines starting with "<seg ", the text between the tags, spaces
        collapsed), so the references equal ``sacrebleu -t wmtXX -l xx-yy --echo ref``.
    text_tools.py titles IN SRC_OUT TGT_OUT
        WMT'15 Wiki Headlines ("finnish ||| english" per line) into two aligned files.
    text_tools.py clean SRC TGT SRC_OUT TGT_OUT --max-len N --ratio R
        Drop training pairs with an empty side, a side longer than N tokens, or a token-length
        ratio above R (Moses' clean-corpus-n.perl rules; tokens are space-separated words).
    text_tools.py wikitext-sentences IN OUT [--unit sentence|line]
        WikiText-2 to one sentence per line; see docs/recipes.md ("What is a sentence in
        WikiText-2"). Empty lines are dropped; every other token is kept as it is.
    text_tools.py bpe-threshold VOCAB... [--max 50] [--keep 0.95]
        The --vocabulary-threshold for subword-nmt's apply-bpe that suits the corpus: the largest
        threshold up to --max (subword-nmt's advice for large corpora, 50) that keeps --keep of
        each vocabulary's units. On a small corpus the advised 50 would drop most subwords and
        split words into characters; on a large one every unit is seen 50 times.
    text_tools.py units-per-word WORDS SUBWORDS
        How many subword units a word became, over the two files (the same lines).
    text_tools.py language CODE
        Whether sacremoses can be given the language CODE, and which of its rules it applies
        (fairseq_skd/evaluation/languages.py); fails for a code that is likely a typo.
    text_tools.py json OUT KEY VALUE [KEY VALUE ...]
        A JSON object of strings (an empty VALUE is null) written to OUT, unless OUT holds it
        already (a file rewritten unchanged would look newer than the tables made from it).

Every step reads and writes a line at a time: none holds a corpus in memory.
"""

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

SEG = re.compile(r"<seg.*?>(.*)</seg>.*?")
# WikiText is tokenized: a sentence ends with a separate ".", "?" or "!" token. (Decimal points
# and abbreviations are inside tokens or written "@.@", so they do not end sentences.)
SENTENCE_END = {".", "?", "!"}


def clean(s):
    return re.sub(r"\s+", " ", s.strip())


def sgm_to_text(path, out):
    n = 0
    with open(path, encoding="utf-8") as fin:
        for line in fin:
            if line.startswith("<seg "):
                print(clean(SEG.sub("\\1", line)), file=out)
                n += 1
    if n == 0:
        raise SystemExit(f"text_tools.py sgm: no <seg> lines in {path}")


def split_titles(path, src_out, tgt_out):
    with open(path, encoding="utf-8") as fin, open(src_out, "w", encoding="utf-8") as fs, \
            open(tgt_out, "w", encoding="utf-8") as ft:
        for i, line in enumerate(fin, 1):
            parts = line.rstrip("\n").split("|||")
            if len(parts) != 2:
                raise SystemExit(f"text_tools.py titles: {path}:{i}: expected 'a ||| b', got {line!r}")
            print(clean(parts[0]), file=fs)
            print(clean(parts[1]), file=ft)


def clean_parallel(src, tgt, src_out, tgt_out, max_len, ratio):
    kept = total = 0
    with open(src, encoding="utf-8") as fs, open(tgt, encoding="utf-8") as ft, \
            open(src_out, "w", encoding="utf-8") as os_, open(tgt_out, "w", encoding="utf-8") as ot:
        for s, t in zip(fs, ft, strict=True):
            total += 1
            ls, lt = len(s.split()), len(t.split())
            if ls == 0 or lt == 0 or ls > max_len or lt > max_len:
                continue
            if max(ls, lt) / min(ls, lt) > ratio:
                continue
            os_.write(s)
            ot.write(t)
            kept += 1
    print(f"clean: kept {kept} of {total} pairs (max {max_len} tokens, ratio <= {ratio})",
          file=sys.stderr)


def wikitext_sentences(path, out_path, unit):
    lines = sentences = 0
    with open(path, encoding="utf-8") as fin, open(out_path, "w", encoding="utf-8") as fout:
        for line in fin:
            tokens = line.split()
            if not tokens:
                continue
            lines += 1
            if unit == "line":
                print(" ".join(tokens), file=fout)
                sentences += 1
                continue
            current = []
            for tok in tokens:
                current.append(tok)
                if tok in SENTENCE_END:
                    print(" ".join(current), file=fout)
                    sentences += 1
                    current = []
            if current:
                print(" ".join(current), file=fout)
                sentences += 1
    print(f"wikitext-sentences: {path}: {lines} non-empty lines -> {sentences} {unit}s",
          file=sys.stderr)


def languages_module():
    """fairseq_skd/evaluation/languages.py, loaded by path: importing the fairseq_skd package
    would import fairseq and torch, seconds for a check of two letters."""
    path = Path(__file__).resolve().parents[2] / "fairseq_skd" / "evaluation" / "languages.py"
    spec = importlib.util.spec_from_file_location("skd_languages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def describe_language(code):
    languages = languages_module()
    problem = languages.language_code_problem(code)
    if problem is not None:
        raise SystemExit(f"{problem}")
    if languages.moses_rules(code) == "specific":
        print(f"{code}: sacremoses has rules and non-breaking prefixes for this language")
    else:
        print(f"{code}: sacremoses has no rules for this language: it applies its generic ones "
              "(punctuation split off and joined back, no non-breaking prefixes)")


def vocabulary_counts(path):
    with open(path, encoding="utf-8") as f:
        return [int(line.rsplit(" ", 1)[1]) for line in f if line.strip()]


def bpe_threshold(paths, largest, keep):
    counts = [sorted(vocabulary_counts(p), reverse=True) for p in paths]
    for threshold in range(largest, 1, -1):
        if all(sum(c >= threshold for c in unit_counts) >= keep * len(unit_counts)
               for unit_counts in counts):
            return threshold
    return 1


def count_tokens(path):
    with open(path, encoding="utf-8") as f:
        return sum(len(line.split()) for line in f)


def write_json(path, data):
    """``data`` into ``path`` (through a .part file), unless ``path`` holds it already."""
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    part.replace(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("sgm")
    a.add_argument("path")
    a = sub.add_parser("titles")
    a.add_argument("path")
    a.add_argument("src_out")
    a.add_argument("tgt_out")
    a = sub.add_parser("clean")
    a.add_argument("src")
    a.add_argument("tgt")
    a.add_argument("src_out")
    a.add_argument("tgt_out")
    a.add_argument("--max-len", type=int, required=True)
    a.add_argument("--ratio", type=float, required=True)
    a = sub.add_parser("wikitext-sentences")
    a.add_argument("path")
    a.add_argument("out")
    a.add_argument("--unit", choices=["sentence", "line"], default="sentence")
    a = sub.add_parser("language")
    a.add_argument("code")
    a = sub.add_parser("bpe-threshold")
    a.add_argument("vocab", nargs="+")
    a.add_argument("--max", type=int, default=50)
    a.add_argument("--keep", type=float, default=0.95)
    a = sub.add_parser("units-per-word")
    a.add_argument("words")
    a.add_argument("subwords")
    a = sub.add_parser("json")
    a.add_argument("out")
    a.add_argument("pairs", nargs="+", metavar="KEY VALUE")
    args = p.parse_args()
    if args.cmd == "sgm":
        sgm_to_text(args.path, sys.stdout)
    elif args.cmd == "titles":
        split_titles(args.path, args.src_out, args.tgt_out)
    elif args.cmd == "clean":
        clean_parallel(args.src, args.tgt, args.src_out, args.tgt_out, args.max_len, args.ratio)
    elif args.cmd == "language":
        describe_language(args.code)
    elif args.cmd == "bpe-threshold":
        print(bpe_threshold(args.vocab, args.max, args.keep))
    elif args.cmd == "units-per-word":
        print(f"{count_tokens(args.subwords) / max(1, count_tokens(args.words)):.2f}")
    elif args.cmd == "json":
        if len(args.pairs) % 2:
            sys.exit("error: json takes KEY VALUE pairs")
        write_json(args.out, {key: value or None for key, value in zip(args.pairs[::2], args.pairs[1::2])})
    else:
        wikitext_sentences(args.path, args.out, args.unit)


if __name__ == "__main__":
    main()
