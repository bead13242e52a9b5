"""What ``fairseq-skd-train`` checks before any worker starts and before anything is written, for
the mistakes that plain fairseq-train lets through silently or reports from deep inside:

- what the run resumes from: an explicit ``--restore-file`` (or ``--finetune-from-model``)
  that does not exist or is damaged (fairseq-train starts from scratch, exit 0, or fails with
  an unpickler's message); with the default ``checkpoint_last.pt``, the checkpoint with the most
  updates recorded inside it is the newest, whatever the files' times: a damaged or missing
  ``checkpoint_last.pt`` is replaced by it, and a ``checkpoint_last.pt`` behind another
  checkpoint of the folder is refused (resuming from it would overwrite further training);
- the data given to a resumed or fine-tuned checkpoint is indexed with the dictionaries it was
  trained with, word by word (another dictionary of the same size trains on the wrong word ids
  without a word; another size gives fairseq's "please ensure that the architectures match");
- every binarized split of the data folder is readable and consistent: its index and data sizes
  agree, its largest word id is inside its dictionary, the dictionary is not empty;
- settings that cannot do what they say: more CPU workers than cores, and an adaptive softmax
  with the SKD or KD criterion (fairseq drops ``--adaptive-softmax-cutoff`` with any criterion
  but ``adaptive_loss`` and trains a full softmax).

Each problem is a :class:`PreflightError` naming the file or flag and what to do.
"""

import os
import re
import shutil

import numpy as np

from .checkpoint_loading import (checkpoint_problem, checkpoint_updates, dictionary_difference,
                                 dictionary_words, training_dictionary)

SKD_CRITERIA = ("self_kd_cross_entropy", "kd_cross_entropy")
DEFAULT_RESTORE = "checkpoint_last.pt"
_SPLIT = re.compile(r"^(?P<split>[^.]+)(\.(?P<pair>[^.]+-[^.]+)\.(?P<lang>[^.]+))?\.idx$")


class PreflightError(Exception):
    """A problem found before training, named with what to do."""


# --- what the run resumes from ---------------------------------------------------------------


def saved_checkpoints(save_dir, suffix=""):
    """{path: updates recorded inside} of the intact checkpoints of ``save_dir`` but the last."""
    pattern = re.compile(rf"checkpoint(\d+|_\d+_\d+|_best){re.escape(suffix)}\.pt$")
    found = {}
    for name in sorted(os.listdir(save_dir)) if os.path.isdir(save_dir) else []:
        path = os.path.join(save_dir, name)
        if pattern.match(name) and checkpoint_problem(path) is None:
            found[path] = checkpoint_updates(path)
    return found


def resume_point(args):
    """(the checkpoint this run starts from or None, what to do to the folder first or None):
    a damaged or missing checkpoint_last.pt is to be replaced by the intact checkpoint furthest
    in training; nothing is changed here."""
    suffix = getattr(args, "checkpoint_suffix", "") or ""
    if args.restore_file != DEFAULT_RESTORE:
        problem = ("no such file" if not os.path.isfile(args.restore_file)
                   else checkpoint_problem(args.restore_file))
        if problem:
            raise PreflightError(f"--restore-file {args.restore_file}: {problem} (fairseq-train "
                                 "would train from scratch or fail to load it); name an intact "
                                 "checkpoint")
        return args.restore_file, None
    last = os.path.join(args.save_dir, f"checkpoint_last{suffix}.pt")
    others = saved_checkpoints(args.save_dir, suffix)
    if os.path.exists(last) and checkpoint_problem(last) is None:
        updates = checkpoint_updates(last)
        ahead = {p: u for p, u in others.items() if u > updates}
        if ahead:
            path, further = max(ahead.items(), key=lambda item: item[1])
            raise PreflightError(
                f"{last} is at update {updates} but {path} is at update {further}: resuming "
                "from checkpoint_last.pt would overwrite checkpoints further in training. Move "
                f"those out of {args.save_dir}, or resume from one with --restore-file")
        return last, None
    if others:
        path, updates = max(others.items(), key=lambda item: item[1])
        return path, lambda log: replace_last(last, path, updates, log)
    if os.path.exists(last):
        return None, lambda log: replace_last(last, None, None, log)
    finetune = getattr(args, "finetune_from_model", None)
    if finetune:
        problem = "no such file" if not os.path.isfile(finetune) else checkpoint_problem(finetune)
        if problem:
            raise PreflightError(f"--finetune-from-model {finetune}: {problem}")
        return finetune, None
    return None, None


def replace_last(last, path, updates, log):
    """Set a damaged checkpoint_last.pt aside as .damaged; put ``path`` in its place."""
    said = f"{last} is missing"
    if os.path.exists(last):
        problem = checkpoint_problem(last)
        os.replace(last, last + ".damaged")
        said = f"{last} is damaged ({problem}; kept as {last}.damaged)"
    if path is None:
        log(f"{said} and its folder holds no intact checkpoint: training starts from scratch")
        return
    shutil.copyfile(path, last + ".part")
    os.replace(last + ".part", last)
    log(f"{said}: resuming from {path}, the intact checkpoint furthest in training "
        f"(update {updates})")


# --- the data ---------------------------------------------------------------------------------


def data_folders(args):
    return [folder for folder in str(args.data).split(os.pathsep) if folder]


def check_dictionaries_of(checkpoint, args):
    """The data's dictionaries must be the checkpoint's, word for word (where a copy of the
    checkpoint's is found: beside it, or in the data folder it records)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", mmap=True)
    recorded = None
    config = state.get("cfg") or {}
    if config and config.get("task"):
        recorded = config["task"].get("data")
    elif state.get("args") is not None:
        recorded = getattr(state["args"], "data", None)
    folder = data_folders(args)[0]
    for name in sorted(n for n in os.listdir(folder) if n.startswith("dict.") and n.endswith(".txt")):
        trained = training_dictionary(checkpoint, name, recorded)
        if trained is None or os.path.realpath(trained) == os.path.realpath(os.path.join(folder, name)):
            continue
        difference = dictionary_difference(dictionary_words(trained),
                                           dictionary_words(os.path.join(folder, name)))
        if difference is not None:
            raise PreflightError(
                f"{os.path.join(folder, name)} is not the dictionary {checkpoint} was trained "
                f"with ({trained}): they have {difference}. The checkpoint would go on "
                "training on other words: binarize the text with its dictionary "
                f"(fairseq-preprocess --srcdict/--tgtdict {trained}), or train a new model")


def read_index(path):
    """(dtype, sizes) of a fairseq MMapIndexedDataset index, or a PreflightError. Read here
    rather than by fairseq, whose reader of a damaged index also prints an ignored exception."""
    import struct

    from fairseq.data.indexed_dataset import _code_to_dtype

    magic = b"MMIDIDX\x00\x00"  # then the version (<Q), the data type (<B), the count (<Q)
    with open(path, "rb") as f:
        header = f.read(len(magic) + 17)
        problem = None
        if len(header) < len(magic) + 17 or header[:len(magic)] != magic:
            problem = "it does not start as a fairseq index (mmap format)"
        else:
            code = header[len(magic) + 8]
            count = struct.unpack("<Q", header[len(magic) + 9:])[0]
            sizes = np.frombuffer(f.read(4 * count), dtype=np.int32)
            if code not in _code_to_dtype:
                problem = f"it names an unknown data type ({code})"
            elif len(sizes) != count:
                problem = f"it is cut short ({len(sizes)} of its {count} sizes)"
    if problem:
        raise PreflightError(f"{path} is not a readable fairseq index: {problem}; binarize the "
                             "text again with fairseq-preprocess")
    return _code_to_dtype[code], sizes.astype(np.int64)


def check_binarized(folder):
    """Every ``*.idx``/``.bin`` pair of ``folder`` readable and consistent with its
    dictionary."""
    dictionaries = {}
    for name in sorted(n for n in os.listdir(folder) if n.startswith("dict.") and n.endswith(".txt")):
        words = dictionary_words(os.path.join(folder, name))
        if not words:
            raise PreflightError(f"{os.path.join(folder, name)} is an empty dictionary: "
                                 "binarize the text again with fairseq-preprocess")
        dictionaries[name] = 4 + len(words)  # fairseq's <s> <pad> </s> <unk> come first
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".idx")):
        match = _SPLIT.match(name)
        index_path, data_path = os.path.join(folder, name), os.path.join(folder, name[:-4] + ".bin")
        again = "binarize the text again with fairseq-preprocess"
        if not os.path.isfile(data_path):
            raise PreflightError(f"{index_path} has no {os.path.basename(data_path)} beside it: {again}")
        dtype, sizes = read_index(index_path)
        expected = int(sizes.sum()) * np.dtype(dtype).itemsize
        actual = os.path.getsize(data_path)
        if actual != expected:
            raise PreflightError(f"{data_path} has {actual} bytes but its index "
                                 f"{os.path.basename(index_path)} describes {expected}: the pair "
                                 f"is damaged or from two binarizations; {again}")
        dictionary = f"dict.{match['lang']}.txt" if match and match["lang"] else "dict.txt"
        if dictionary in dictionaries and actual:
            largest = int(np.memmap(data_path, dtype=dtype, mode="r").max())
            if largest >= dictionaries[dictionary]:
                raise PreflightError(f"{data_path} holds word id {largest} but "
                                     f"{os.path.join(folder, dictionary)} has "
                                     f"{dictionaries[dictionary]} entries: they are not from the "
                                     f"same binarization; {again}")


# --- settings ------------------------------------------------------------------------------------


def check_settings(args, nproc, cpu_workers, cores):
    if cpu_workers and nproc > cores:
        raise PreflightError(
            f"--nproc {nproc} CPU workers on {cores} core(s): each worker would get a fraction of a "
            f"core, and training runs several times slower than with --nproc {cores} (torch's "
            "threads spin while they wait for a core); use at most --nproc " + str(cores))
    if getattr(args, "criterion", None) in SKD_CRITERIA and getattr(args, "adaptive_softmax_cutoff", None):
        raise PreflightError(
            f"--adaptive-softmax-cutoff with --criterion {args.criterion}: fairseq drops the "
            "adaptive softmax with any criterion but adaptive_loss and trains a full softmax, and "
            "SKD and KD need that full softmax's output embedding W; leave the flag out")


def check(args, nproc, cpu_workers, cores, log):
    """Every check, in the order a user would fix them; then, all passed, checkpoint_last.pt
    put in place if it has to be. Returns what the run starts from."""
    check_settings(args, nproc, cpu_workers, cores)
    for folder in data_folders(args):
        if not os.path.isdir(folder):
            raise PreflightError(f"the data folder {folder} does not exist")
        check_binarized(folder)
    start, prepare = resume_point(args)
    if start is not None:
        check_dictionaries_of(start, args)
    if prepare is not None:
        prepare(log)
    return start
