"""The folder of one experiment, its variants and tasks.

One experiment folder (a recipe's ``EXP_DIR``, or one seed of the offline study)::

    EXP_DIR/                       # ptb | wiki2 | wmt15_en_fi | wmt15_fi_en | wmt15_en_de | seed<N>
      <variant>/                   # baseline | noise | skd | noise_skd
        train.log                  # fairseq-train stdout, --log-format json, appended on resume
        score_test.json            # fairseq-skd-score-lm / fairseq-skd-score-mt --json: NLL and
                                   # prediction diagnostics (MT: teacher-forced, test only)
        score_valid.json           # LM
        bleu_test_beam1.json       # MT: fairseq-skd-bleu --json
        bleu_test_beam12.json
        bleu_valid_beam1.json
        bleu_valid_beam12.json
      results.md, results.csv, *.png   # fairseq-skd-collect (reliability.png from score_test.json)
"""

# The paper's four rows (Tables 2 and 3), in its order (defined in fairseq_skd/variants.py).
from ..variants import NAMES as VARIANT_NAMES  # noqa: E402,F401
from ..variants import SKD_VARIANTS, VARIANTS  # noqa: E402,F401

# lm: language modelling (Table 2); mt: machine translation (Table 3).
TASKS = ("lm", "mt")
TASK_NAMES = {"lm": "Language model", "mt": "Translation"}
TASK_TITLES = {"lm": "Language model (Table 2 style)", "mt": "Translation (Table 3 style)"}
LM_EXPERIMENTS = {"ptb": "PTB", "wiki2": "Wiki-2"}
MT_EXPERIMENTS = {"wmt15_en_fi": "En-Fi", "wmt15_fi_en": "Fi-En", "wmt15_en_de": "En-De"}
SUBSETS = ("test", "valid")
BEAMS = (1, 12)

TRAIN_LOG = "train.log"


def score_file(subset):
    """fairseq-skd-score-lm's (LM) or fairseq-skd-score-mt's (MT) JSON summary of ``subset``."""
    return f"score_{subset}.json"


def bleu_file(subset, beam):
    return f"bleu_{subset}_beam{beam}.json"
