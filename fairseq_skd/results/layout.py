"""The folders a recipe writes, its tasks and the paper's experiments.

An experiment folder (a recipe's ``EXP_DIR``) holds a run folder per seed; a run folder holds a
folder per variant (``fairseq_skd/variants.py``)::

    EXP_DIR/                       # ptb | wiki2 | wmt15_en_fi | ... | synthetic | your corpus
      results.md, results.csv      # fairseq-skd-collect: mean ± std over the seeds, every row
      reliability.png              # the test set's reliability diagram, the seeds pooled
      commands.sh                  # every command the recipe ran, in order
      seed<N>/                     # one run folder per --seeds value
        results.md, results.csv, *.png   # that seed's tables and figures
        <variant>/                 # baseline | noise | skd | noise_skd | ...
          train.log                # fairseq-train's output, --log-format json, appended on resume
          score_test.json          # fairseq-skd-score-lm / fairseq-skd-score-mt --json: NLL,
                                   # prediction diagnostics, q_n (MT: teacher-forced, test only)
          score_valid.json         # LM
          score_train.json         # both: a fixed sample of the training set (--max-sentences),
                                   # for the test - train NLL gap
          inputs.json              # the KD variants: their teacher's run and the translation
                                   # pass of sequence-level KD, counted in their cost
          bleu_test_beam1.json     # MT: fairseq-skd-bleu --json, a file per subset and beam
          ...

fairseq-skd-collect also reads a single run folder given directly (variant folders in it).
"""

import re
from pathlib import Path

# lm: language modelling (Table 2); mt: machine translation (Table 3).
TASKS = ("lm", "mt")
TASK_NAMES = {"lm": "Language model", "mt": "Translation"}
TASK_TITLES = {"lm": "Language model (Table 2 style)", "mt": "Translation (Table 3 style)"}
LM_EXPERIMENTS = {"ptb": "PTB", "wiki2": "Wiki-2"}
MT_EXPERIMENTS = {"wmt15_en_fi": "En-Fi", "wmt15_fi_en": "Fi-En", "wmt15_en_de": "En-De"}
SUBSETS = ("test", "valid")
BEAMS = (1, 12)
TRAIN_SAMPLE = "train"  # the subset of score_train.json
INPUTS = "inputs.json"

TRAIN_LOG = "train.log"
_SEED_DIR = re.compile(r"^seed(\d+)$")


def score_file(subset):
    """fairseq-skd-score-lm's (LM) or fairseq-skd-score-mt's (MT) JSON summary of ``subset``."""
    return f"score_{subset}.json"


def bleu_file(subset, beam):
    return f"bleu_{subset}_beam{beam}.json"


def seed_dir(exp_dir, seed):
    return Path(exp_dir) / f"seed{seed}"


def seed_dirs(exp_dir):
    """{seed: run folder} of the ``seed<N>`` folders in ``exp_dir``, by seed."""
    found = {int(m.group(1)): p for p in Path(exp_dir).iterdir()
             if p.is_dir() and (m := _SEED_DIR.match(p.name))}
    return dict(sorted(found.items()))
