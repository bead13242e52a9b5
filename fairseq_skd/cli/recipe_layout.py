"""The folder layout of one recipe run, the paper's reported numbers, and fairseq JSON log parsing.

One experiment folder, named after the experiment::

    EXP_DIR/                       # ptb | wiki2 | wmt15_en_fi | wmt15_fi_en | wmt15_en_de
      <variant>/                   # baseline | noise | skd | noise_skd
        train.log                  # fairseq-train stdout, --log-format json, appended on resume
        score_test.json            # LM: fairseq-skd-score-lm --json
        score_valid.json
        bleu_test_beam1.json       # MT: fairseq-skd-bleu --json
        bleu_test_beam12.json
        bleu_valid_beam1.json
        bleu_valid_beam12.json
"""

import json
import re

VARIANTS = ("baseline", "noise", "skd", "noise_skd")
VARIANT_NAMES = {"baseline": "Baseline", "noise": "+Noise", "skd": "+SKD", "noise_skd": "+Noise+SKD"}
SKD_VARIANTS = ("skd", "noise_skd")

LM_EXPERIMENTS = {"ptb": "PTB", "wiki2": "Wiki-2"}
MT_EXPERIMENTS = {"wmt15_en_fi": "En-Fi", "wmt15_fi_en": "Fi-En", "wmt15_en_de": "En-De"}
BEAMS = (1, 12)

TRAIN_LOG = "train.log"


def lm_score_file(subset):
    return f"score_{subset}.json"


def bleu_file(subset, beam):
    return f"bleu_{subset}_beam{beam}.json"


# Table 2: NLL per sentence on the test sets (natural log, mean over sentences).
PAPER_TABLE2 = {
    "ptb": {"baseline": 101.40, "noise": 101.28, "skd": 99.38, "noise_skd": 97.41},
    "wiki2": {"baseline": 119.49, "noise": 118.70, "skd": 116.85, "noise_skd": 116.60},
}

# Table 3: BLEU, {beam: (test, dev)}.
PAPER_TABLE3 = {
    "wmt15_en_fi": {
        "baseline": {1: (7.29, 8.28), 12: (9.01, 9.85)},
        "noise": {1: (7.68, 8.50), 12: (9.35, 9.53)},
        "skd": {1: (8.36, 9.43), 12: (9.87, 10.30)},
        "noise_skd": {1: (8.81, 8.95), 12: (10.13, 10.47)},
    },
    "wmt15_fi_en": {
        "baseline": {1: (10.42, 11.39), 12: (11.89, 12.78)},
        "noise": {1: (10.74, 11.80), 12: (12.39, 13.35)},
        "skd": {1: (10.70, 12.52), 12: (12.43, 13.82)},
        "noise_skd": {1: (11.87, 12.92), 12: (13.16, 14.13)},
    },
    "wmt15_en_de": {
        "baseline": {1: (19.72, 19.28), 12: (22.25, 20.91)},
        "noise": {1: (20.69, 19.68), 12: (22.40, 20.92)},
        "skd": {1: (20.29, 20.41), 12: (22.59, 21.75)},
        "noise_skd": {1: (21.16, 20.34), 12: (23.07, 21.64)},
    },
}

# fairseq's JSON progress bar: "<time> | INFO | train_inner | {...}" (also "| valid |", "| train |")
_LOG_RECORD = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")
_UPDATE_KEY = {"train_inner": "num_updates", "train": "train_num_updates", "valid": "valid_num_updates"}


def _number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_log_text(text):
    """``{"train_inner": [...], "train": [...], "valid": [...]}`` from fairseq JSON log text.

    Values are numbers (fairseq writes them as strings). A log appended across resumes repeats
    the updates done after the last checkpoint: a record whose update count does not exceed the
    previous one's starts a new run, which replaces the earlier records from that update on.
    """
    records = {kind: [] for kind in _UPDATE_KEY}
    for line in text.splitlines():
        match = _LOG_RECORD.search(line)
        if not match:
            continue
        try:
            record = json.loads(match.group(2))
        except ValueError:
            continue
        kind = match.group(1)
        record = {key: _number(value) for key, value in record.items()}
        update = record.get(_UPDATE_KEY[kind])
        if not isinstance(update, (int, float)):
            continue
        kept = records[kind]
        while kept and kept[-1][_UPDATE_KEY[kind]] >= update:
            kept.pop()
        kept.append(record)
    return records


def parse_log(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_log_text(f.read())


def series(records, kind, key):
    """(updates, values) of ``key`` over the records of ``kind`` that have a numeric value."""
    update_key = _UPDATE_KEY[kind]
    xs, ys = [], []
    for record in records.get(kind, []):
        value = record.get(key)
        if isinstance(value, (int, float)):
            xs.append(record[update_key])
            ys.append(value)
    return xs, ys
