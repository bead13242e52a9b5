"""Let torch's safe checkpoint loader (the default since torch 2.6) read fairseq checkpoints.

fairseq calls ``torch.load`` without ``weights_only``, so on torch >= 2.6 the safe unpickler
refuses every checkpoint of an argparse-configured (legacy) architecture with
``Unsupported global: GLOBAL argparse.Namespace``; ``fairseq-generate``, ``fairseq-eval-lm``
and ``--restore-file`` all fail. fairseq imports ``--user-dir`` before loading anything, so
allow-listing here fixes them without switching the safety off: the only global such
checkpoints need beyond torch's defaults is ``argparse.Namespace`` (checked with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on translation and LM checkpoints,
``checkpoint_last.pt`` included). Any other global is still refused.
"""

import argparse

import torch

FAIRSEQ_CHECKPOINT_GLOBALS = (argparse.Namespace,)


def allow_fairseq_checkpoint_globals() -> None:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads everything anyway
        add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))
