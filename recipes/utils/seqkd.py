"""The Python steps of recipes/utils/seqkd_data.sh (sequence-level KD's training data).

    seqkd.py prepare TEACHER DATA_BIN SRC TGT OUT --shard-size S
        Checks that TEACHER is an intact translation checkpoint trained with DATA_BIN's
        dictionaries word for word, then cuts DATA_BIN's training split into shards of S
        sentences in training order: OUT/shards/I/ (I = 1..N) holds sentences (I-1)*S .. I*S-1
        as a split `train` of their own, with DATA_BIN's dictionaries, for fairseq-generate
        (made only for the shards without their OUT/shards/I.gen, each through a .part
        folder). Prints "SENTENCES SHARDS".
    seqkd.py check-shard GEN COUNT
        fairseq-generate's output GEN holds one hypothesis for each of the sentences
        0..COUNT-1 (it has dropped sentences before: fairseq issue #5036).
    seqkd.py merge OUT --sentences N --shard-size S --src SRC --tgt TGT --max-len-a A
            --max-len-b B [--teacher ... --beam ... --nproc ... --seconds ...]
        The shards' sources and best hypotheses in training order (each shard checked as by
        check-shard again): OUT/text/train.SRC and
        train.TGT, a shard at a time; OUT/translation.json with the counts of empty hypotheses
        and of those at the length limit fairseq-generate allowed their source, int(A * (source
        units + </s>) + B) (a longer source in the batch allows more, so at most that many were
        cut short); prints a line that says so.

Only `prepare` imports fairseq (and torch); the others read text a shard at a time.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path


class SeqKDError(ValueError):
    """What is wrong, for the recipe to print."""


def shard_dir(out, shard):
    return Path(out) / "shards" / str(shard)


def shard_count(sentences, shard_size):
    return (sentences + shard_size - 1) // shard_size


def at_length_limit(source_units, hypothesis_units, max_len_a, max_len_b):
    """Whether a hypothesis is as long as fairseq-generate allows for a batch of its source
    alone: fairseq/sequence_generator.py's max_len = int(a * src_len + b), src_len counting
    </s> (and, in a batch, the longest source's padding: a hypothesis cut there is counted)."""
    return hypothesis_units >= int(max_len_a * (source_units + 1) + max_len_b)


def prepare(teacher, data_bin, src, tgt, out, shard_size):
    """Checks the teacher, writes the missing shards' data; returns (sentences, shards)."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset, MMapIndexedDatasetBuilder

    from fairseq_skd.criterions.teacher import TeacherError, check_teacher

    dictionaries = [f"dict.{src}.txt", f"dict.{tgt}.txt"]
    try:
        check_teacher(teacher, "translation", data_bin, dictionaries, flag="--teacher")
    except TeacherError as e:
        raise SeqKDError(str(e)) from e
    prefix = f"train.{src}-{tgt}."
    sides = {lang: MMapIndexedDataset(str(Path(data_bin) / (prefix + lang))) for lang in (src, tgt)}
    n = len(sides[src])
    shards = shard_count(n, shard_size)
    for shard in range(1, shards + 1):
        folder = shard_dir(out, shard)
        if folder.is_dir() or folder.with_name(f"{shard}.gen").is_file():
            continue
        part = folder.with_name(f"{shard}.part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        for name in dictionaries:
            shutil.copyfile(Path(data_bin) / name, part / name)
        for lang, dataset in sides.items():
            builder = MMapIndexedDatasetBuilder(str(part / (prefix + lang + ".bin")),
                                                dtype=dataset._index.dtype)
            for i in range((shard - 1) * shard_size, min(shard * shard_size, n)):
                builder.add_item(dataset[i])
            builder.finalize(str(part / (prefix + lang + ".idx")))
        part.rename(folder)
    return n, shards


def hypotheses(gen):
    """{sentence id: (source, best hypothesis)} of fairseq-generate's output file ``gen``."""
    sources, found = {}, {}
    with open(gen, encoding="utf-8") as f:
        for line in f:
            if line.startswith("S-"):
                sid, text = line.rstrip("\n").split("\t", 1)
                sources[int(sid[2:])] = text
            elif line.startswith("H-"):
                sid, _score, text = line.rstrip("\n").split("\t", 2)
                if int(sid[2:]) in found:
                    raise SeqKDError(f"{gen}: sentence {sid[2:]} has two hypotheses (--nbest 1 gives one)")
                found[int(sid[2:])] = (sources[int(sid[2:])], text)
    return found


def check_shard(gen, count):
    found = hypotheses(gen)
    missing = [i for i in range(count) if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise SeqKDError(f"{gen}: {len(missing)} of its {count} sentences have no translation "
                         f"(ids {shown}): fairseq-generate dropped them (it drops a last batch "
                         "without --required-batch-size-multiple 1, fairseq issue #5036)")
    if len(found) != count:
        raise SeqKDError(f"{gen}: translations of {len(found)} sentences, its shard has {count}: "
                         "it was made from other data")
    return found


def merge(out, sentences, shard_size, src, tgt, max_len_a, max_len_b):
    """Writes OUT/text/train.{src,tgt}; returns (empty, truncated)."""
    text = Path(out) / "text"
    text.mkdir(parents=True, exist_ok=True)
    empty = truncated = 0
    with open(text / f"train.{src}", "w", encoding="utf-8") as sources, \
            open(text / f"train.{tgt}", "w", encoding="utf-8") as targets:
        for shard in range(1, shard_count(sentences, shard_size) + 1):
            count = min(shard * shard_size, sentences) - (shard - 1) * shard_size
            found = check_shard(Path(out) / "shards" / f"{shard}.gen", count)
            for i in range(count):
                source, hypothesis = found[i]
                sources.write(source + "\n")
                targets.write(hypothesis + "\n")
                units = len(hypothesis.split())
                empty += units == 0
                truncated += at_length_limit(len(source.split()), units, max_len_a, max_len_b)
    return empty, truncated


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    for name in ("teacher", "data_bin", "src", "tgt", "out"):
        a.add_argument(name)
    a.add_argument("--shard-size", type=int, required=True)
    a = sub.add_parser("check-shard")
    a.add_argument("gen")
    a.add_argument("count", type=int)
    a = sub.add_parser("merge")
    a.add_argument("out")
    for option, kind in (("--sentences", int), ("--shard-size", int), ("--src", str),
                         ("--tgt", str), ("--max-len-a", float), ("--max-len-b", int)):
        a.add_argument(option, type=kind, required=True)
    a.add_argument("--teacher", default=None)
    for option, kind in (("--beam", int), ("--nproc", int), ("--seconds", float)):
        a.add_argument(option, type=kind, default=None)
    args = p.parse_args()
    try:
        if args.cmd == "prepare":
            print(*prepare(args.teacher, args.data_bin, args.src, args.tgt, args.out, args.shard_size))
        elif args.cmd == "check-shard":
            check_shard(args.gen, args.count)
        else:
            n = args.sentences
            empty, truncated = merge(args.out, n, args.shard_size, args.src, args.tgt,
                                     args.max_len_a, args.max_len_b)
            report = {"seconds": args.seconds, "sentences": n, "empty": empty,
                      "truncated": truncated, "beam": args.beam, "teacher": args.teacher,
                      "shards": shard_count(n, args.shard_size), "nproc": args.nproc,
                      "empty_share": empty / max(1, n), "truncated_share": truncated / max(1, n),
                      "max_len_a": args.max_len_a, "max_len_b": args.max_len_b}
            part = Path(args.out) / "translation.json.part"
            part.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            part.replace(Path(args.out) / "translation.json")
            print(f"{n} sentences; empty {empty} ({100 * empty / max(1, n):.1f}%), at the length "
                  f"limit {truncated} ({100 * truncated / max(1, n):.1f}%)")
    except SeqKDError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
