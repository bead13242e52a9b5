"""Scoring a checkpoint on a binarized subset: NLL per sentence, prediction diagnostics and
temperature-scaled NLL. The one home of the computation behind ``fairseq-skd-score-lm``
(language models, one sentence per sample) and ``fairseq-skd-score-mt`` (translation models,
teacher-forced on the reference translations).

Each sentence's NLL is the sum of ``-ln p`` over its target tokens, the end-of-sentence token
included (natural log). For a language model fairseq's ``language_modeling`` task in eos break
mode gives the model ``</s> w_1 ... w_n`` and scores ``w_1 ... w_n </s>``; for translation the
decoder reads the reference shifted right and is scored on the reference and ``</s>``. Every
sentence must be scored exactly once, or scoring fails rather than report a number over part of
the data (fairseq's batching drops the last sentences unless batch sizes need not be a multiple
of 8, which is set here).

Before anything is computed the inputs are checked, each failure naming the file and what to do:
the checkpoint is an intact file of the right kind of model, and the data's dictionaries are the
ones the model was trained with, compared word by word (a dictionary with the same size but the
words in another order silently gives wrong numbers otherwise). The training dictionaries are
looked for beside the checkpoint (``fairseq-skd-train`` keeps copies there) and then in the
data folder recorded in the checkpoint.
"""

import argparse
import logging
import math
import os
import warnings

import numpy as np
import torch

from ..checkpoint_loading import checkpoint_problem, dictionary_words, training_dictionary
from ..modules.output_embedding import find_output_embedding
from .diagnostics import PredictionDiagnostics, fit_temperature
from .qn import QnStatistics

logger = logging.getLogger(__name__)

TASKS = {"lm": "language_modeling", "mt": "translation"}
TOOLS = {"lm": "fairseq-skd-score-lm", "mt": "fairseq-skd-score-mt"}
DIAGNOSTICS = ("mean_entropy", "top1_accuracy", "mean_max_prob", "ece", "nll_argmax_right",
               "nll_argmax_wrong")
# The validation set's log-probabilities are kept in memory for the temperature fit (several
# passes) up to this size; beyond it each pass runs the model again.
CALIBRATION_CACHE_BYTES = 1 << 30


class ScoreError(Exception):
    """A user-facing failure: a missing or damaged file, a mismatch, incomplete scoring."""


# --- checks and loading -------------------------------------------------------------------------


def read_checkpoint(checkpoint):
    """fairseq's checkpoint state, configuration as recorded (see :func:`apply_overrides`)."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(checkpoint):
        raise ScoreError(f"checkpoint not found: {checkpoint}")
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise ScoreError(f"{checkpoint} is not a usable checkpoint: {problem}. Use another "
                         "checkpoint of the run (checkpoint_best.pt, checkpointN.pt) or train again")
    try:
        return checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    except Exception as e:  # the unpickler's errors name no file
        raise ScoreError(f"{checkpoint} could not be loaded: {type(e).__name__}: {e}") from e


def apply_overrides(state, overrides):
    """Set ``overrides`` in the state's configuration, as fairseq's loader does when given them."""
    from fairseq.dataclass.utils import overwrite_args_by_name

    if state.get("args") is not None:
        for name, value in overrides.items():
            setattr(state["args"], name, value)
    if state.get("cfg") is not None:
        overwrite_args_by_name(state["cfg"], overrides)


def task_config(state):
    """The checkpoint's task configuration (omegaconf), from either of fairseq's formats."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if state.get("args") is not None:
        return convert_namespace_to_omegaconf(state["args"]).task
    if state.get("cfg") is not None:
        return state["cfg"]["task"]
    raise ScoreError("the checkpoint holds no configuration (neither 'args' nor 'cfg')")


def dictionary_names(kind, task_cfg, data):
    """The dictionary files a model of ``kind`` reads from its data folder."""
    if kind == "lm":
        return ["dict.txt"]
    from fairseq.data import data_utils

    src, tgt = task_cfg.get("source_lang"), task_cfg.get("target_lang")
    if src is None or tgt is None:
        src, tgt = data_utils.infer_language_pair(data)
        if src is None:
            raise ScoreError(f"cannot tell the languages of {data}: the checkpoint names none "
                             "and the folder has no train.SRC-TGT.SRC.idx files")
    return [f"dict.{src}.txt", f"dict.{tgt}.txt"]


def check_dictionaries(checkpoint, task_cfg, data, names):
    """Each of ``names`` in ``data`` must be, word for word, the dictionary the model was trained
    with. Returns the training copies compared against (none found: a warning, no check)."""
    recorded = str(task_cfg.get("data") or "").split(os.pathsep)[0]
    compared = []
    for name in names:
        given = os.path.join(data, name)
        if not os.path.isfile(given):
            raise ScoreError(f"{given} not found: DATA_BIN must be a fairseq-preprocess output "
                             f"folder with the dictionary the model was trained with ({name})")
        trained = training_dictionary(checkpoint, name, recorded)
        if trained is None:
            logger.warning(f"no copy of the training dictionary {name} beside {checkpoint} or in "
                           f"{recorded or 'its recorded data folder'}: cannot check that {given} "
                           "is the one the model was trained with")
            continue
        if os.path.abspath(trained) != os.path.abspath(given) and dictionary_words(trained) != dictionary_words(given):
            raise ScoreError(f"{given} is not the dictionary {checkpoint} was trained with "
                             f"({trained}): the words differ, so the scores would be of other "
                             "words. Binarize the text with that dictionary (fairseq-preprocess "
                             f"--srcdict {trained}) or score with the matching data folder")
        compared.append(trained)
    return compared


def load_model_and_task(checkpoint, data, kind, user_dir="auto", use_cuda=False):
    """The checkpoint's model (eval mode) and its task set up on ``data``, after the checks."""
    import fairseq_skd  # noqa: F401  registers the plugin's models and the checkpoint globals
    from fairseq import checkpoint_utils, utils

    if user_dir not in (None, "", "auto"):
        utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    if not os.path.isdir(data):
        raise ScoreError(f"DATA_BIN {data} is not a folder")
    overrides = {"data": data}
    if kind == "lm":
        overrides["sample_break_mode"] = "eos"
    state = read_checkpoint(checkpoint)
    task_cfg = task_config(state)  # as trained: its data folder is where its dictionaries were
    task_name = task_cfg.get("_name") or state["args"].task
    if task_name != TASKS[kind]:
        other = next((k for k, name in TASKS.items() if name == task_name), None)
        hint = f": score it with {TOOLS[other]}" if other else ""
        raise ScoreError(f"{checkpoint} was trained with the task {task_name}, not "
                         f"{TASKS[kind]}{hint}")
    check_dictionaries(checkpoint, task_cfg, data, dictionary_names(kind, task_cfg, data))
    apply_overrides(state, overrides)
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [checkpoint], arg_overrides=overrides, state=state)
    except RuntimeError as e:
        if "size mismatch" in str(e):
            raise ScoreError(f"the dictionaries in {data} do not fit {checkpoint} (the model's "
                             "vocabulary has another size): use the data folder it was trained "
                             "on") from e
        raise
    config = getattr(task, "cfg", None) or getattr(task, "args", None)  # a legacy task has args
    if kind == "lm" and str(getattr(config, "sample_break_mode", "eos")) != "eos":
        raise ScoreError(f"could not set --sample-break-mode eos on the task of {checkpoint}")
    model = models[0]
    if use_cuda:
        model.cuda()
    return model.eval(), task


def load_subset(task, data, subset):
    try:
        task.load_dataset(subset)
        return task.dataset(subset)
    except FileNotFoundError as e:
        raise ScoreError(f"subset '{subset}' not found: no {os.path.join(data, subset)}[.*].bin / "
                         f".idx files ({e})") from e
    except (AssertionError, ValueError, OSError, IndexError) as e:
        raise ScoreError(f"the binarized subset '{subset}' in {data} cannot be read "
                         f"({type(e).__name__}: {e}): its .bin/.idx files are damaged or not "
                         "fairseq-preprocess output; binarize the text again") from e


def fixed_sample(dataset, count, seed=1):
    """``count`` sentences of ``dataset`` drawn without replacement with a fixed seed, in their
    order, numbered 0..count-1 (``.indices``: their numbers in ``dataset``): the same sentences
    for every checkpoint trained on the same data, e.g. to measure the NLL on training data. The
    whole dataset where it has no more than ``count`` sentences."""
    from fairseq.data import BaseWrapperDataset, FairseqDataset

    class FixedSample(BaseWrapperDataset):
        def __init__(self):
            super().__init__(dataset)
            chosen = np.random.RandomState(seed).choice(len(dataset), count, replace=False)
            self.indices = np.sort(chosen)

        def __getitem__(self, index):
            return {**self.dataset[int(self.indices[index])], "id": index}

        def __len__(self):
            return len(self.indices)

        @property
        def sizes(self):
            return self.dataset.sizes[self.indices]

        @property
        def tgt_sizes(self):
            sizes = getattr(self.dataset, "tgt_sizes", None)
            return None if sizes is None else sizes[self.indices]

        def num_tokens(self, index):
            return self.dataset.num_tokens(int(self.indices[index]))

        def num_tokens_vec(self, indices):
            return self.dataset.num_tokens_vec(self.indices[indices])

        def size(self, index):
            return self.dataset.size(int(self.indices[index]))

        def ordered_indices(self):
            return np.arange(len(self.indices))

        # the wrapped dataset's own would read its sizes at our numbers
        batch_by_size = FairseqDataset.batch_by_size

        def filter_indices_by_size(self, indices, max_sizes):
            kept, ignored = self.dataset.filter_indices_by_size(self.indices[indices], max_sizes)
            return (np.searchsorted(self.indices, kept),
                    np.searchsorted(self.indices, np.asarray(ignored, dtype=np.int64)).tolist())

    return dataset if count >= len(dataset) else FixedSample()


# --- scoring ----------------------------------------------------------------------------------


def batches(model, task, dataset, max_tokens=4096, batch_size=None, use_cuda=False):
    """Teacher-forced batches: yields (sentence ids, float32 log-probs [B x T x V],
    target [B x T], mask of scored positions [B x T])."""
    from fairseq import utils

    pad = task.target_dictionary.pad()
    max_positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    # fairseq asks for pinned memory on CPU too, and torch warns about it at every pass
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    try:
        itr = task.get_batch_iterator(
            dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
            max_positions=max_positions, ignore_invalid_inputs=False,
            required_batch_size_multiple=1,  # fairseq's default 8 drops the last sentences
            seed=1, num_workers=0,
        ).next_epoch_itr(shuffle=False)
    except Exception as e:  # fairseq raises a bare Exception for a too long sentence
        if "is invalid" in str(e):
            raise ScoreError(f"a sentence is longer than the model allows ({max_positions}): {e}") from e
        raise
    with torch.no_grad():
        while True:
            try:
                sample = next(itr)
            except StopIteration:
                return
            except (ValueError, IndexError, OSError) as e:  # reading the .bin file
                raise ScoreError(f"the binarized data of {dataset_name(task, dataset)} cannot be "
                                 f"read ({type(e).__name__}: {e}): its .bin/.idx files are "
                                 "damaged; binarize the text again") from e
            if not sample or "net_input" not in sample:
                continue
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            net_output = model(**sample["net_input"])
            lprobs = model.get_normalized_probs(net_output, log_probs=True, sample=sample).float()
            target = sample["target"]
            if lprobs.shape[:2] != target.shape:
                raise ScoreError(f"model output {tuple(lprobs.shape)} does not match targets "
                                 f"{tuple(target.shape)}")
            yield sample["id"].tolist(), lprobs, target, target.ne(pad)


def dataset_name(task, dataset):
    """'subset' of DATA_BIN for messages."""
    subset = next((name for name, d in task.datasets.items() if d is dataset), "a subset")
    return f"'{subset}' in {task.cfg.data if getattr(task, 'cfg', None) else task.args.data}"


def score_subset(model, task, dataset, max_tokens=4096, batch_size=None, use_cuda=False,
                 temperature=None, qn=None):
    """``{id: (tokens, nll)}`` for every sentence, the PredictionDiagnostics of all tokens and,
    with a ``temperature``, those after scaling by it (None without), from one pass, which also
    feeds ``qn`` (a :class:`.qn.QnStatistics`) if given."""
    scores, diagnostics = {}, PredictionDiagnostics()
    calibrated = PredictionDiagnostics(temperature) if temperature is not None else None
    for ids, lprobs, target, mask in batches(model, task, dataset, max_tokens, batch_size, use_cuda):
        token_nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
        for index, n, value in zip(ids, mask.sum(1).tolist(), token_nll.sum(1).tolist()):
            if index in scores:
                raise ScoreError(f"sentence {index} was scored twice")
            scores[index] = (n, value)
        for accumulator in filter(None, (diagnostics, calibrated, qn)):
            accumulator.update(lprobs.view(-1, lprobs.size(-1)), target.view(-1), mask.view(-1))
    return scores, diagnostics, calibrated


def target_sizes(dataset):
    """Target tokens per sentence (a translation dataset's sizes count the source too)."""
    sizes = getattr(dataset, "tgt_sizes", None)
    return dataset.sizes if sizes is None else sizes


def check_complete(scores, dataset, subset):
    """Fail unless every sentence of the subset was scored once, with all its target tokens."""
    expected = len(dataset)
    if len(scores) != expected:
        missing = sorted(set(range(expected)) - set(scores))
        raise ScoreError(
            f"scored {len(scores)} of {expected} sentences of '{subset}'; missing e.g. {missing[:10]}")
    sizes = target_sizes(dataset)
    for index, (n, _) in scores.items():
        if n != int(sizes[index]):
            raise ScoreError(f"sentence {index}: scored {n} tokens, the dataset has {int(sizes[index])}")


def fit_subset_temperature(model, task, dataset, max_tokens=4096, batch_size=None, use_cuda=False):
    """The temperature minimising the NLL of ``dataset`` (see ``diagnostics.fit_temperature``).
    Its log-probabilities are kept for the fit's passes when they fit CALIBRATION_CACHE_BYTES."""
    vocab = len(task.target_dictionary)
    tokens = int(sum(target_sizes(dataset)))

    def run_model():
        for _, lprobs, target, mask in batches(model, task, dataset, max_tokens, batch_size, use_cuda):
            yield lprobs.view(-1, vocab), target.view(-1), mask.view(-1)

    if 4 * tokens * vocab <= CALIBRATION_CACHE_BYTES:
        cached = [(lp[m].cpu(), t[m].cpu(), None) for lp, t, m in run_model()]
        return fit_temperature(lambda: cached)
    return fit_temperature(run_model)


def score(data, checkpoint, kind, subset="test", calibration_subset="valid", cpu=False,
          user_dir="auto", max_tokens=4096, batch_size=None, qn_sigma=None, max_sentences=None):
    """Score ``subset``; returns (summary dict, ``{id: (tokens, nll)}``, ids the sentences' line
    numbers in the subset). With a ``calibration_subset`` the summary also holds the temperature
    fitted there and the test NLL and diagnostics after scaling by it; with a ``qn_sigma`` (a
    number or ``auto``) the median q_n and clip rate at that sigma (:mod:`.qn`); with
    ``max_sentences`` a fixed sample of that many sentences (:func:`fixed_sample`) is scored."""
    use_cuda = torch.cuda.is_available() and not cpu
    model, task = load_model_and_task(checkpoint, data, kind, user_dir, use_cuda)
    dataset = load_subset(task, data, subset)
    whole = len(dataset)
    if max_sentences is not None:
        dataset = fixed_sample(dataset, max_sentences)
    fit = None
    if calibration_subset:  # the temperature first, so the test set is read once
        calibration = load_subset(task, data, calibration_subset)
        fit = fit_subset_temperature(model, task, calibration, max_tokens, batch_size, use_cuda)
    qn = None
    if qn_sigma is not None:
        qn = QnStatistics(find_output_embedding(model), task.target_dictionary.pad())
    scores, diagnostics, calibrated = score_subset(model, task, dataset, max_tokens, batch_size,
                                                   use_cuda, fit and fit.temperature, qn)
    check_complete(scores, dataset, subset)
    sentences = len(scores)
    tokens = sum(n for n, _ in scores.values())
    total = sum(v for _, v in scores.values())
    result = diagnostics.result()
    if len(dataset) < whole:  # a sample: its sentences by their line numbers in the subset
        scores = {int(dataset.indices[i]): value for i, value in scores.items()}
    summary = {"subset": subset, "sentences": sentences, "subset_sentences": whole,
               "tokens": tokens,
               "nll_per_sentence": total / sentences, "nll_per_token": total / tokens,
               "ppl": math.exp(total / tokens), "checkpoint": checkpoint,
               **{key: result[key] for key in DIAGNOSTICS}, "reliability": result["reliability"]}
    if qn is not None:
        summary.update(qn.result(qn_sigma))
    if fit is not None:
        scaled = calibrated.result()
        summary.update({"calibration_subset": calibration_subset, "temperature": fit.temperature,
                        "calibrated_nll_per_token": scaled["nll_per_token"],
                        "calibrated_ece": scaled["ece"]})
    return summary, scores
