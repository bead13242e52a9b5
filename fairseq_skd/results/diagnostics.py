"""The prediction diagnostics table and the reliability diagram's data, for the collector and the
offline study: which values they show, in what order and format, what they mean, and the seeds'
reliability tables pooled into one.

The values come from two places: ``score_test.json`` (``fairseq-skd-score-lm`` /
``fairseq-skd-score-mt``, computed in ``fairseq_skd.evaluation``) and the training log's summary
(:func:`fairseq_skd.results.logs.training_summary`: best and last epoch, and how far the
validation loss rose after the best), and ``score_train.json`` (the test - train NLL gap).
"""

# (key, header, format): the keys of score_test.json, then of the training summary
SCORE_COLUMNS = [
    ("nll_per_token", "NLL/token", "{:.4f}"),
    ("temperature", "T", "{:.3f}"),
    ("calibrated_nll_per_token", "NLL/token at T", "{:.4f}"),
    ("top1_accuracy", "top-1 acc.", "{:.3f}"),
    ("mean_max_prob", "mean max prob", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
    ("mean_entropy", "entropy", "{:.3f}"),
    ("nll_argmax_right", "NLL right", "{:.3f}"),
    ("nll_argmax_wrong", "NLL wrong", "{:.3f}"),
]
TRAINING_COLUMNS = [
    ("best_epoch", "best epoch", "{:.0f}"),
    ("epochs", "epochs", "{:.0f}"),
    ("rise_after_best", "valid rise after best (bits)", "{:.3f}"),
    ("test_train_gap", "test - train NLL/token", "{:+.3f}"),
]
COLUMNS = SCORE_COLUMNS + TRAINING_COLUMNS
SCORE_KEYS = tuple(key for key, _, _ in SCORE_COLUMNS)

LEGEND = (
    "Prediction diagnostics of the checkpoint with the best validation loss, on the test set "
    "(`fairseq-skd-score-lm` / `fairseq-skd-score-mt`, translation teacher-forced on the "
    "reference), per token with `</s>` included, in nats: NLL/token; T: the one temperature "
    "fitted on the validation set (minimum NLL of softmax(logits / T)); NLL/token at T: the test "
    "NLL after dividing the logits by T; top-1 acc.: how often the most probable word is the "
    "target; mean max prob: that word's mean probability, the model's confidence; ECE: expected "
    "calibration error over 15 equal-width confidence bins (0: confidence matches accuracy); "
    "entropy: of the predicted distribution; NLL right / wrong: the mean NLL where the most "
    "probable word is / is not the target. best epoch: the epoch of the lowest validation loss "
    "(the checkpoint scored), of the epochs trained (training stops after --patience epochs "
    "without a better one, or at --max-epoch); valid rise after best: the last validation loss "
    "minus the best, base 2 (0: still at its best when training stopped); test - train "
    "NLL/token: the NLL per token of the scored checkpoint on the test set minus that on a fixed "
    "sample of the training set, both in eval mode (no dropout), in nats: how much better the "
    "model fits its training data than unseen data. A run best well before its last epoch, "
    "with a rise after it and a large gap, overfits: the regime where a regulariser can "
    "help. Reading: mean max prob above "
    "top-1 acc., T > 1 and a higher ECE say over-confident; a variant whose NLL/token is worse "
    "than the baseline's but whose NLL/token at T is not ranks words as well and is only too "
    "sure; one whose top-1 acc. and NLL/token at T are both worse ranks words worse.")


def pool_reliability(tables):
    """One reliability table from several (e.g. a variant's seeds) over the same bins: counts
    summed, each bin's mean confidence and accuracy weighted by its counts (None where no
    table has a token in the bin)."""
    tables = [t for t in tables if t]
    if not tables:
        return None
    edges = [[(b["lower"], b["upper"]) for b in t] for t in tables]
    if any(e != edges[0] for e in edges):
        raise ValueError("reliability tables with different bins cannot be pooled")
    pooled = []
    for bins in zip(*tables):
        count = sum(b["count"] for b in bins)

        def weighted(key):
            if count == 0:
                return None
            return sum(b["count"] * b[key] for b in bins if b["count"]) / count

        pooled.append({"lower": bins[0]["lower"], "upper": bins[0]["upper"], "count": count,
                       "confidence": weighted("confidence"), "accuracy": weighted("accuracy")})
    return pooled
