"""fairseq's JSON training log (``fairseq-train --log-format json``): its records, series over
updates, a summary of the training, and one line per epoch while the log streams.

fairseq writes one record per line::

    2026-11-24 15:03:42 | INFO | train_inner | {"epoch": 1, "loss": "6.2", "num_updates": "10"}
    2026-11-24 15:03:50 | INFO | valid | {"epoch": 1, "valid_loss": "5.9", "valid_num_updates": "12"}
    2026-11-24 15:03:50 | INFO | train | {"epoch": 1, "train_loss": "6.0", "train_num_updates": "12"}

(``[train_inner]`` in place of ``| train_inner |`` under fairseq's hydra logging): a
``train_inner`` record every ``--log-interval`` updates, and at the end of each epoch a
``valid`` record followed by the epoch's ``train`` record. Values are strings.

``valid_loss`` compares across criterions: fairseq's ``cross_entropy`` logs the NLL per token
(base 2) as its loss, and ``self_kd_cross_entropy`` reports the same plain NLL as ``loss`` in
validation. Its ``valid_skd_*`` keys are not read here: validation applies alpha = 0 while the
criterion logs its schedule's alpha there.
"""

import json
import re
import time

RECORD_KINDS = ("train_inner", "train", "valid")
UPDATE_KEYS = {"train_inner": "num_updates", "train": "train_num_updates", "valid": "valid_num_updates"}
_KIND = "|".join(RECORD_KINDS)
_RECORD = re.compile(rf"(?:\| ({_KIND}) \||\[({_KIND})\])[^{{]*(\{{.*\}})\s*$")


def raw_record(line):
    """``(kind, record)`` of a log line, the values as fairseq wrote them; None for any other
    line (fairseq's other INFO lines, warnings, a line cut short by a kill)."""
    match = _RECORD.search(line)
    if not match:
        return None
    try:
        record = json.loads(match.group(3))
    except ValueError:
        return None
    return (match.group(1) or match.group(2)), record


def raw_records(text, kind):
    """Every record of ``kind`` in log text, in order, the values as fairseq wrote them (a log
    appended across resumes keeps the repeated updates; :func:`parse_log_text` drops them)."""
    return [record for k, record in filter(None, map(raw_record, text.splitlines())) if k == kind]


def _number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_record(line):
    """``(kind, record)`` of a log line with numeric values as numbers, or None."""
    found = raw_record(line)
    if found is None:
        return None
    kind, record = found
    return kind, {key: _number(value) for key, value in record.items()}


def parse_log_text(text):
    """``{"train_inner": [...], "train": [...], "valid": [...]}`` from fairseq JSON log text.

    Values are numbers (fairseq writes them as strings). A log appended across resumes repeats
    the updates done after the last checkpoint: a record whose update count does not exceed the
    previous one's starts a new run, which replaces the earlier records from that update on.
    """
    records = {kind: [] for kind in RECORD_KINDS}
    for found in map(parse_record, text.splitlines()):
        if found is None:
            continue
        kind, record = found
        update_key = UPDATE_KEYS[kind]
        if not is_number(record.get(update_key)):
            continue
        kept = records[kind]
        while kept and kept[-1][update_key] >= record[update_key]:
            kept.pop()
        kept.append(record)
    return records


def parse_log(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_log_text(f.read())


def series(records, kind, key):
    """(updates, values) of ``key`` over the records of ``kind`` that have a numeric value."""
    update_key = UPDATE_KEYS[kind]
    xs, ys = [], []
    for record in records.get(kind, []):
        value = record.get(key)
        if is_number(value):
            xs.append(record[update_key])
            ys.append(value)
    return xs, ys


def training_summary(records):
    """What a training did, from its parsed log (:func:`parse_log_text`)::

        updates           the last update logged (train_inner or train record)
        epochs            epochs finished (the last train record's epoch)
        seconds           fairseq's wall clock of the training at its last record (``wall``,
                          kept across resumes in the checkpoints): its cost in time
        best_valid_loss   the lowest valid_loss (NLL per token, base 2), and
        best_epoch        the epoch that logged it
        rise_after_best   the last valid_loss minus the best (base 2): how far the validation
                          loss rose again after the best epoch, 0 if it did not; with
                          best_epoch, the regime a run ended in (a baseline that overfits
                          shows a best epoch well before its last and a rise)
        qn, clip, alpha   the mean q_n where the prediction is not the target (clipped, as
                          logged), the rate of clipped q_n and alpha over the last finished
                          epoch (its train record), or at the last train_inner record if
                          training went on after that epoch

    Each is None where the log has no such record: a training stopped before its first epoch
    ended has no epochs and no best_valid_loss; a criterion other than self_kd_cross_entropy
    logs no qn, clip or alpha.
    """
    inner, epochs, valid = records["train_inner"], records["train"], records["valid"]
    updates = [rs[-1][UPDATE_KEYS[kind]] for kind, rs in (("train_inner", inner), ("train", epochs))
               if rs]
    last_epoch = epochs[-1].get("epoch") if epochs else None
    walls = [r[key] for kind, key in (("train_inner", "wall"), ("train", "train_wall"))
             for r in records[kind][-1:] if is_number(r.get(key))]
    summary = {"updates": int(max(updates)) if updates else None,
               "epochs": int(last_epoch) if is_number(last_epoch) else None,
               "seconds": max(walls) if walls else None,
               "best_valid_loss": None, "best_epoch": None, "rise_after_best": None,
               "qn": None, "clip": None, "alpha": None}
    scored = [r for r in valid if is_number(r.get("valid_loss"))]
    if scored:
        best = min(scored, key=lambda r: r["valid_loss"])
        summary["best_valid_loss"], summary["best_epoch"] = best["valid_loss"], best.get("epoch")
        summary["rise_after_best"] = scored[-1]["valid_loss"] - best["valid_loss"]
    for key in ("qn", "clip", "alpha"):
        epoch = [r for r in epochs if is_number(r.get(f"train_skd_{key}"))]
        inner_ = [r for r in inner if is_number(r.get(f"skd_{key}"))]
        # the epoch mean, unless training went on after the last finished epoch
        if epoch and (not inner_ or epoch[-1]["train_num_updates"] >= inner_[-1]["num_updates"]):
            summary[key] = epoch[-1][f"train_skd_{key}"]
        elif inner_:
            summary[key] = inner_[-1][f"skd_{key}"]
    return summary


def duration(seconds):
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# (record key, label, format) of the values an epoch line shows, in order
_EPOCH_VALUES = [
    ("train_loss", "train loss", "{:.3f}"), ("train_nll_loss", "nll", "{:.3f}"),
    ("train_skd_alpha", "alpha", "{:.2f}"), ("train_skd_qn", "q_n", "{:.3f}"),
    ("train_skd_clip", "clip", "{:.3f}"), ("train_kd_loss", "kd", "{:.3f}"),
    ("train_kd_agree", "agree", "{:.3f}"), ("valid_loss", "valid loss", "{:.3f}"),
    ("valid_bleu", "valid BLEU", "{:.2f}"),
]


class EpochProgress:
    """One line per finished epoch from fairseq-train's output, fed line by line as it streams::

        epoch 2/6  train loss 5.812  alpha 0.25  q_n 0.412  valid loss 5.644  (1m10s, about 2m20s left)

    The line comes with the epoch's ``train`` record (fairseq logs it after the epoch's
    ``valid`` record, whose values it includes). The time left is the mean time per epoch of
    this run so far times the epochs left (``epochs``: the run's last epoch; None: no estimate).
    """

    def __init__(self, epochs=None, clock=time.monotonic):
        self.epochs, self.clock = epochs, clock
        self.start, self.first_epoch, self.valid = clock(), None, {}

    def feed(self, line):
        """The epoch's line if ``line`` ends an epoch, else None."""
        found = parse_record(line)
        if found is None:
            return None
        kind, record = found
        if kind == "valid":
            self.valid = record
        if kind != "train" or not is_number(record.get("epoch")):
            return None
        epoch = int(record["epoch"])
        values = {**record, **(self.valid if self.valid.get("epoch") == record["epoch"] else {})}
        self.valid = {}
        if self.first_epoch is None:
            self.first_epoch = epoch
        parts = [f"epoch {epoch}" + (f"/{self.epochs}" if self.epochs else "")]
        parts += [f"{label} {fmt.format(values[key])}" for key, label, fmt in _EPOCH_VALUES
                  if is_number(values.get(key))]
        elapsed = self.clock() - self.start
        timing = duration(elapsed)
        if self.epochs and epoch < self.epochs:
            per_epoch = elapsed / (epoch - self.first_epoch + 1)
            timing += f", about {duration(per_epoch * (self.epochs - epoch))} left"
        return "  ".join(parts) + f"  ({timing})"
