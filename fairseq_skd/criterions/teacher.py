"""The teacher of word-level distillation (``kd_cross_entropy``): its distribution over the next
word at every target position of a batch, from trained checkpoints run alongside the student
(:class:`OnlineTeacher`) or from their top-K computed once and stored (:class:`CachedTeacher`,
written by :func:`write_cache`, the work of ``fairseq-skd-cache-teacher``).

Both give, per scored target position of a batch (flattened as the criterion flattens the
student's log-probabilities), a :class:`TeacherDistribution`: the teacher's probabilities at the
distillation's temperature, over the whole vocabulary or over its K most likely words
(renormalised), its most likely word, and the NLL it gives the reference word at temperature 1.
An ensemble (``PATH1:PATH2``) averages its members' tempered probabilities.

The teacher is checked before any training: an intact checkpoint of the student's task, trained
with the student's dictionaries word for word (a teacher over other word ids would give soft
targets for the wrong words); the cache is checked against the data and dictionaries it was made
from (sha256 of the files) and its settings. The teacher is frozen, always in eval mode, moved to
the student's device and dtype at the first batch, and never part of the student's model, so it
is not saved in the student's checkpoints.

Cache layout (``DIR``): ``meta.json`` (the settings and checksums) and three fairseq indexed
datasets of the subset, one item per sample id, a row per target position:
``SUBSET.ids`` (int32, K word ids), ``SUBSET.probs`` (float16 stored as its uint16 bits, K
probabilities) and ``SUBSET.nll`` (float32 stored as its int32 bits, the teacher's NLL of the
reference word at temperature 1).
"""

import hashlib
import json
import os
from typing import NamedTuple, Optional

import numpy as np
import torch

from ..checkpoint_loading import (checkpoint_problem, dictionary_difference, dictionary_words,
                                  training_dictionary)
from ..modules.soft_target_losses import teacher_distribution

CACHE_FORMAT = 1
CACHE_META = "meta.json"


class TeacherError(ValueError):
    """A teacher or cache that cannot be used, named with what to do."""


class TeacherDistribution(NamedTuple):
    probs: torch.Tensor  # [N x V] or [N x K], float32, at the temperature
    ids: Optional[torch.Tensor]  # [N x K] word ids of probs' columns, None for the whole vocabulary
    argmax: torch.Tensor  # [N] the teacher's most likely word
    target_nll: torch.Tensor  # [N] -ln p_teacher(reference word) at temperature 1
    neg_entropy: Optional[torch.Tensor] = None  # [N] sum p ln p of probs, where known already


def task_name(task):
    """The registered name of ``task``'s class (``translation``, ``language_modeling``, ...)."""
    from fairseq.tasks import TASK_REGISTRY

    return next((name for name, cls in TASK_REGISTRY.items() if type(task) is cls),
                type(task).__name__)


def dictionary_files(task):
    """The dictionary files of ``task``'s data folder that word ids depend on."""
    if hasattr(task, "source_dictionary") and getattr(task.cfg, "source_lang", None):
        return [f"dict.{task.cfg.source_lang}.txt", f"dict.{task.cfg.target_lang}.txt"]
    return ["dict.txt"]


def data_folder(task):
    config = getattr(task, "cfg", None) or task.args
    return str(config.data).split(os.pathsep)[0]


def flat_positions(tensor, ignore_prefix_size=0):
    """[B x T x ...] -> [B*(T-prefix) x ...], as the criterion flattens log-probabilities."""
    if ignore_prefix_size > 0:
        tensor = tensor[:, ignore_prefix_size:]
    return tensor.reshape(-1, *tensor.shape[2:])


# --- online: the teacher's checkpoints run on each batch ------------------------------------------


def check_teacher_checkpoint(path, task):
    """The teacher at ``path`` is an intact checkpoint of ``task``'s kind, trained with the
    dictionaries of ``task``'s data folder word for word. Returns its state."""
    return check_teacher(path, task_name(task), data_folder(task), dictionary_files(task))


def check_teacher(path, task, data_dir, dictionaries, flag="--kd-teacher"):
    """The teacher at ``path`` is an intact checkpoint of the task registered as ``task``,
    trained with the dictionary files ``dictionaries`` of ``data_dir`` word for word; ``flag``
    is the option that named it, for the messages. Returns its state. (Also the check of
    sequence-level KD's teacher before it translates: recipes/utils/seqkd_data.sh.)"""
    from fairseq import checkpoint_utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if not os.path.isfile(path):
        raise TeacherError(f"{flag} {path}: no such file")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise TeacherError(f"{flag} {path} is not a usable checkpoint: {problem}")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    cfg = convert_namespace_to_omegaconf(state["args"]) if state.get("args") else state["cfg"]
    teacher_task = cfg["task"]["_name"]
    if teacher_task != task:
        raise TeacherError(f"{flag} {path} was trained with the task {teacher_task}, the "
                           f"student trains with {task}: a teacher predicts the "
                           "student's targets only for the same task")
    for name in dictionaries:
        student = os.path.join(data_dir, name)
        trained = training_dictionary(path, name, cfg["task"].get("data"))
        if trained is None:
            raise TeacherError(
                f"{flag} {path}: the dictionary it was trained with ({name}) is neither "
                "beside it nor in the data folder its configuration names, so its word ids "
                f"cannot be checked against the student's ({student}); copy that dictionary "
                "beside the checkpoint (fairseq-skd-train does so when it trains)")
        difference = dictionary_difference(dictionary_words(trained), dictionary_words(student))
        if difference is not None:
            raise TeacherError(
                f"{flag} {path} was trained with another dictionary than the student's: "
                f"{trained} and {student} have {difference}. The teacher's predictions would "
                "be for other words: distil into a student binarized with the teacher's "
                f"dictionary (fairseq-preprocess --srcdict/--tgtdict {trained})")
    return state


class OnlineTeacher:
    """One or more models (an ensemble) run on every training batch, frozen and in eval mode."""

    def __init__(self, models, paths=()):
        self.models = [model.eval().requires_grad_(False) for model in models]
        self.paths = list(paths)
        self._placed = None

    @classmethod
    def load(cls, paths, task):
        """The trained checkpoints ``PATH1:PATH2:...``, checked against ``task`` first."""
        from fairseq import checkpoint_utils

        paths = [p for p in paths.split(":") if p]
        states = [check_teacher_checkpoint(path, task) for path in paths]
        models = [checkpoint_utils.load_model_ensemble([path], task=task, state=state)[0][0]
                  for path, state in zip(paths, states)]
        return cls(models, paths)

    def place(self, like):
        """On the device and dtype of the student's parameter ``like`` (once, or when they
        change)."""
        where = (like.device, like.dtype if like.is_floating_point() else None)
        if self._placed != where:
            for model in self.models:
                model.to(device=like.device, dtype=where[1]).eval()
            self._placed = where

    @torch.no_grad()
    def distribution(self, sample, temperature, topk, ignore_prefix_size=0):
        logits = []
        for model in self.models:
            model.eval()
            logits.append(flat_positions(model(**sample["net_input"])[0].float(),
                                         ignore_prefix_size))
        dist = teacher_distribution(logits, temperature, topk)
        del logits  # the [N x V] buffers: free before the student's backward
        plain = dist.probs if dist.plain is None else dist.plain
        target = flat_positions(sample["target"], ignore_prefix_size)
        target_nll = -plain.gather(1, target[:, None]).squeeze(1).clamp(min=1e-45).log()
        return TeacherDistribution(dist.probs, dist.ids, dist.argmax, target_nll,
                                   dist.neg_entropy)


# --- cached: the teacher's top-K computed once ---------------------------------------------------


def sha256(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def data_checksums(task, subset):
    """sha256 of the binarized ``subset`` and of the dictionaries in ``task``'s data folder."""
    folder = data_folder(task)
    names = sorted(n for n in os.listdir(folder)
                   if n.startswith(subset + ".") and n.endswith((".bin", ".idx")))
    if not names:
        raise TeacherError(f"no binarized subset '{subset}' in {folder}")
    return {name: sha256(os.path.join(folder, name)) for name in names + dictionary_files(task)}


def task_settings(task):
    """What decides a sample's target tokens, beside the data: the task and, for language
    modelling, how text is cut into samples."""
    config = getattr(task, "cfg", None) or task.args
    settings = {"task": task_name(task)}
    for key in ("sample_break_mode", "add_bos_token", "source_lang", "target_lang"):
        if getattr(config, key, None) is not None:
            settings[key] = str(getattr(config, key))
    return settings


def check_cacheable(task):
    settings = task_settings(task)
    if "sample_break_mode" in settings and settings["sample_break_mode"] != "eos":
        raise TeacherError("--kd-teacher-cache stores the teacher's outputs per sentence: a "
                           "language model needs --sample-break-mode eos (it has "
                           f"{settings['sample_break_mode']}); distil online (--kd-teacher) "
                           "otherwise")


def consecutive_batches(dataset, max_tokens):
    """Lists of consecutive sample ids whose padded size stays within ``max_tokens``."""
    batch, longest = [], 0
    for index in range(len(dataset)):
        size = int(np.max(dataset.size(index)))
        if batch and max(longest, size) * (len(batch) + 1) > max_tokens:
            yield batch
            batch, longest = [], 0
        batch.append(index)
        longest = max(longest, size)
    if batch:
        yield batch


class CacheWriter:
    """The three indexed datasets of a cache, written a sample at a time in id order."""

    KINDS = (("ids", np.int32), ("probs", np.uint16), ("nll", np.int32))

    def __init__(self, out_dir, subset):
        from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

        os.makedirs(out_dir, exist_ok=True)
        self.prefix = os.path.join(out_dir, subset)
        self.builders = {kind: MMapIndexedDatasetBuilder(f"{self.prefix}.{kind}.bin.part", dtype=dtype)
                         for kind, dtype in self.KINDS}
        self.sentences = self.positions = 0

    def add(self, ids, probs, nll):
        """One sample's rows: ``ids`` and ``probs`` [L x K], ``nll`` [L]."""
        self.builders["ids"].add_item(ids.int().cpu().reshape(-1))
        self.builders["probs"].add_item(torch.from_numpy(
            probs.half().cpu().numpy().view(np.uint16).reshape(-1)))
        self.builders["nll"].add_item(torch.from_numpy(nll.float().cpu().numpy().view(np.int32)))
        self.sentences += 1
        self.positions += len(nll)

    def finish(self):
        for kind, builder in self.builders.items():
            builder.finalize(f"{self.prefix}.{kind}.idx")
            os.replace(f"{self.prefix}.{kind}.bin.part", f"{self.prefix}.{kind}.bin")


@torch.no_grad()
def write_cache(teacher, task, subset, out_dir, topk, temperature, max_tokens=4096,
                use_cuda=False, log=print):
    """Run ``teacher`` (an OnlineTeacher) over ``subset`` of ``task`` once and store its top-K per
    target position in ``out_dir``. Returns the meta data written."""
    from fairseq import utils

    check_cacheable(task)
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    pad = task.target_dictionary.pad()
    writer = CacheWriter(out_dir, subset)
    if use_cuda:
        for model in teacher.models:
            model.cuda()
    for ids in consecutive_batches(dataset, max_tokens):
        sample = dataset.collater([dataset[i] for i in ids])
        if use_cuda:
            sample = utils.move_to_cuda(sample)
        dist = teacher.distribution(sample, temperature, topk)
        filled = sample["target"].ne(pad)  # the positions stored: not padding, wherever it is
        width = sample["target"].size(1)
        rows = {index: b for b, index in enumerate(sample["id"].tolist())}
        for index in ids:  # in id order, whatever order the collater chose
            b = rows[index]
            at = b * width + filled[b].nonzero().squeeze(1)
            writer.add(dist.ids[at], dist.probs[at], dist.target_nll[at])
    writer.finish()
    meta = {"format": CACHE_FORMAT, "subset": subset, "topk": topk, "temperature": temperature,
            "teachers": [os.path.abspath(p) for p in teacher.paths],
            "sentences": writer.sentences, "positions": writer.positions,
            "task": task_settings(task), "checksums": data_checksums(task, subset)}
    with open(os.path.join(out_dir, CACHE_META), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    log(f"{subset}: {writer.sentences} sentences, {writer.positions} target positions, "
        f"top-{topk} at temperature {temperature} in {out_dir}")
    return meta


class CachedTeacher:
    """The teacher's top-K of a subset, read from a cache by sample id and position."""

    def __init__(self, prefix, topk, pad):
        from fairseq.data.indexed_dataset import MMapIndexedDataset

        self.topk, self.pad = topk, pad
        # fairseq's reader widens every item to int64; the raw files are read as stored
        self.index, self.data = {}, {}
        for kind, dtype in CacheWriter.KINDS:
            index = MMapIndexedDataset.Index(f"{prefix}.{kind}.idx")
            # copies: the index's arrays live in a file mapping it closes when it goes
            self.index[kind] = (index._pointers // np.dtype(dtype).itemsize,
                                np.array(index.sizes, dtype=np.int64))
            del index
            self.data[kind] = np.memmap(f"{prefix}.{kind}.bin", dtype=dtype, mode="r")

    @classmethod
    def open(cls, cache_dir, task, topk, temperature):
        """The cache in ``cache_dir``, checked against ``task``'s data and the training's
        settings first."""
        meta_path = os.path.join(cache_dir, CACHE_META)
        if not os.path.isfile(meta_path):
            raise TeacherError(f"--kd-teacher-cache {cache_dir}: no {CACHE_META}; make the cache "
                               "with fairseq-skd-cache-teacher")
        with open(meta_path) as f:
            meta = json.load(f)
        check_cacheable(task)
        expected = {"format": CACHE_FORMAT, "topk": topk, "temperature": temperature,
                    "task": task_settings(task)}
        for key, value in expected.items():
            if meta.get(key) != value:
                raise TeacherError(f"--kd-teacher-cache {cache_dir} was made with {key} "
                                   f"{meta.get(key)!r}, this training needs {value!r}: make the "
                                   "cache again with the training's settings")
        actual = data_checksums(task, meta["subset"])
        for name, digest in meta["checksums"].items():
            if actual.get(name) != digest:
                raise TeacherError(
                    f"--kd-teacher-cache {cache_dir} was made from other data: "
                    f"{os.path.join(data_folder(task), name)} is not the file it was made from "
                    "(its sha256 differs). Make the cache again from this data folder")
        return cls(os.path.join(cache_dir, meta["subset"]), meta["topk"],
                   task.target_dictionary.pad())

    def place(self, like):
        pass  # read from disk into the batch's device at each batch

    def rows(self, kind, indices, lengths):
        """The stored rows of the samples ``indices`` [B], each of ``lengths`` [B] target
        positions, concatenated in batch order: one read of the memory map for the batch."""
        per = 1 if kind == "nll" else self.topk
        starts, sizes = self.index[kind][0][indices], self.index[kind][1][indices]
        wrong = np.flatnonzero(sizes != lengths * per)
        if wrong.size:
            b = wrong[0]
            raise TeacherError(
                f"--kd-teacher-cache: sample {indices[b]} has {lengths[b]} target positions but "
                f"the cache holds {sizes[b] // per}: the cache is of other data")
        # element i of sample b sits at starts[b] + i: an offset per element, no Python loop
        offsets = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
        return self.data[kind][offsets]

    def distribution(self, sample, temperature, topk, ignore_prefix_size=0):
        target = sample["target"]
        batch, width = target.shape
        filled = target.ne(self.pad).cpu().numpy()  # as stored: the positions not padding
        lengths = filled.sum(1)
        indices = sample["id"].cpu().numpy()
        ids = np.zeros((batch, width, self.topk), dtype=np.int64)
        bits = np.zeros((batch, width, self.topk), dtype=np.uint16)  # float16 probabilities
        nll = np.zeros((batch, width), dtype=np.int32)  # float32 NLL
        ids[filled] = self.rows("ids", indices, lengths).reshape(-1, self.topk)
        bits[filled] = self.rows("probs", indices, lengths).reshape(-1, self.topk)
        nll[filled] = self.rows("nll", indices, lengths)
        probs = torch.from_numpy(bits.view(np.float16)).float()
        ids, probs, nll = (flat_positions(t, ignore_prefix_size).to(target.device) for t in
                           (torch.from_numpy(ids), probs, torch.from_numpy(nll.view(np.float32))))
        probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-12)
        return TeacherDistribution(probs, ids, ids[:, 0], nll)
