"""Reading fairseq checkpoints safely: torch's safe loader, and intact files.

Let torch's safe checkpoint loader (the default since torch 2.6) read fairseq checkpoints.

fairseq calls ``torch.load`` without ``weights_only``, so on torch >= 2.6 the safe unpickler
refuses every checkpoint of an argparse-configured (legacy) architecture with
``Unsupported global: GLOBAL argparse.Namespace``; ``fairseq-generate``, ``fairseq-eval-lm``
and ``--restore-file`` all fail. fairseq imports ``--user-dir`` before loading anything, so
allow-listing here fixes them without switching the safety off. What fairseq checkpoints need
beyond torch's defaults (checked with ``torch.serialization.get_unsafe_globals_in_checkpoint``
on translation and LM checkpoints, ``checkpoint_last.pt`` included):

- ``argparse.Namespace``: the model configuration of legacy architectures;
- numpy arrays of booleans, integers or floats (``ndarray``, ``dtype`` and its per-type classes,
  and the ``_reconstruct`` helper that rebuilds arrays):
  the validation meters of ``--eval-bleu`` keep their n-gram counts as int64 arrays in the
  checkpoint's metrics state. These rebuild plain arrays from raw bytes; an object array's
  elements still go through the restricted unpickler.

Any other global is still refused.
"""

import argparse
import os
import re
import zipfile

import numpy
import torch


def fairseq_checkpoint_globals():
    """What fairseq checkpoints need beyond torch's defaults, as (object, name) pairs."""
    allowed = [argparse.Namespace, numpy.ndarray, numpy.dtype]
    # numpy >= 1.25 rebuilds a dtype as an instance of its class (numpy.dtypes.Int64DType...)
    allowed += sorted({type(numpy.dtype(code)) for code in "? b h i l q B H I L Q e f d".split()},
                      key=lambda cls: cls.__name__)
    pairs = [(obj, f"{obj.__module__}.{obj.__qualname__}") for obj in allowed]
    # An array pickled by numpy 1.x names numpy.core.multiarray, by 2.x numpy._core.multiarray:
    # the same function under either name.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            reconstruct = __import__(module, fromlist=["_reconstruct"])._reconstruct
        except (ImportError, AttributeError):
            continue
        pairs.append((reconstruct, f"{module}._reconstruct"))
    return pairs


def allow_fairseq_checkpoint_globals() -> None:
    """Allow-list :func:`fairseq_checkpoint_globals` for torch's safe loader, for the process.

    Registered as (object, name) pairs, which are entries of their own: a library that
    allow-lists the bare objects for one load and removes them afterwards (transformers'
    ``Trainer`` does so for numpy when it resumes) leaves these in place."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 loads everything anyway
        return
    pairs = fairseq_checkpoint_globals()
    if torch.__version__ < "2.5":  # takes no (object, name) pairs; loads all unless asked
        pairs = [obj for obj, _ in pairs]
    add_safe_globals(pairs)


def checkpoint_problem(path):
    """Why the file ``path`` is not an intact checkpoint, or None if it is.

    torch saves a zip archive with a CRC per member, so reading it through catches a file cut
    short (by a kill during fairseq's non-atomic copy to checkpoint_last.pt, say), an empty file
    and random bytes, before torch's unpickler gives a message that names no file."""
    try:
        if os.path.getsize(path) == 0:
            return "it is empty"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return None if bad is None else f"its member {bad} is corrupt"
    except zipfile.BadZipFile as e:
        return f"it is not a complete torch checkpoint ({e})"
    except OSError as e:
        return f"it cannot be read ({e.strerror})"


def checkpoint_updates(path):
    """The number of updates recorded inside the checkpoint at ``path`` (its training
    progress, whatever the file's time); the tensors are mapped, not read."""
    state = torch.load(path, map_location="cpu", mmap=True)
    history = state.get("optimizer_history") or [{}]
    return int(history[-1].get("num_updates", 0))


# --- the dictionaries a checkpoint was trained with ----------------------------------------------


def dictionary_words(path):
    """The words of a fairseq dictionary file (``word count`` lines), in order."""
    with open(path, encoding="utf-8") as f:
        return [line.rsplit(" ", 1)[0] if " " in line.strip() else line.strip()
                for line in f if line.strip()]


def training_dictionary(checkpoint, name, recorded_data=None):
    """The copy of dictionary file ``name`` that ``checkpoint`` was trained with: beside the
    checkpoint (fairseq-skd-train keeps one there), else in the data folder its configuration
    records; None if neither has it."""
    places = [os.path.dirname(os.path.abspath(checkpoint))]
    recorded = str(recorded_data or "").split(os.pathsep)[0]
    if recorded:
        places.append(recorded)
    return next((os.path.join(p, name) for p in places if os.path.isfile(os.path.join(p, name))),
                None)


def dictionary_difference(words, other_words):
    """How two dictionaries' words differ ("9 and 10 words; the first difference is word 4:
    'cat' against 'dog'"), or None if they are the same. fairseq's dictionaries start with 4
    special symbols that dictionary files leave out, so word k of a file is index k + 4."""
    if words == other_words:
        return None
    sizes = f"{len(words)} and {len(other_words)} words"
    i = next((i for i, (a, b) in enumerate(zip(words, other_words)) if a != b), None)
    if i is None:
        return f"{sizes}; the first {min(len(words), len(other_words))} are the same"
    return f"{sizes}; the first difference is word {i + 1}: {words[i]!r} against {other_words[i]!r}"
