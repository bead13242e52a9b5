"""What the tests share (after fairseq's tests/utils.py); bench/ reuses it too.

- Tiny datasets and fairseq command-line runs: commands run as subprocesses of this
  environment's console scripts (``fairseq-train`` ...), exactly as a user runs them, with
  ``--user-dir`` pointing at the plugin; the task and architecture flags the tests train with.
- Dictionaries, tasks and random sentences for models built in Python, fairseq's beam search on
  them and greedy decoding written out with its rules.
- A tiny model, task and samples for the criterion's unit tests.

Sizes: ``make_dictionary(n_words)`` counts words, without fairseq's ``SPECIAL_SYMBOLS``; a
``vocab`` (TinyDecoderModel, make_task, make_sample, make_criterion) is a whole dictionary, the
output size of a model.
"""

import argparse
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, FairseqEncoderDecoderModel
from fairseq.sequence_generator import SequenceGenerator
from torch import nn

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "fairseq_skd")
BIN = Path(sys.executable).parent


def write_lines(path, lines):
    Path(path).write_text("".join(line + "\n" for line in lines))


def make_reverse_translation_data(data_dir, n_train=600, n_valid=40, n_test=40, vocab=24,
                                  min_len=3, max_len=8, seed=1):
    """Source: random words; target: the same words reversed and renamed (w3 -> W3)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]

    def pair():
        src = [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]
        return " ".join(src), " ".join(w.upper() for w in reversed(src))

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        pairs = [pair() for _ in range(n)]
        write_lines(data_dir / f"{split}.in", [s for s, _ in pairs])
        write_lines(data_dir / f"{split}.out", [t for _, t in pairs])
    return data_dir


def make_lm_data(data_dir, n_train=500, n_valid=40, n_test=40, seed=1):
    """Sentences from a tiny grammar: subject, verb, object, with near-synonym words."""
    rng = random.Random(seed)
    subjects = ["the cat", "the dog", "a cat", "a dog", "my friend", "the teacher"]
    verbs = ["sees", "likes", "watches", "finds"]
    objects = ["the ball", "a ball", "the house", "a toy", "the garden", "a bird"]

    def sentence():
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        if rng.random() < 0.4:
            s += f" and {rng.choice(verbs)} {rng.choice(objects)}"
        return s

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        write_lines(data_dir / f"{split}.txt", [sentence() for _ in range(n)])
    return data_dir


def console_script(command):
    """How to start a fairseq console script (``fairseq-train`` ...): the script beside this
    Python, or, where fairseq was installed without its scripts there (``pip install --target``,
    as bench/gpu_check.sh does), its module: ``python -m fairseq_cli.train``."""
    script = BIN / command
    if script.exists() or not command.startswith("fairseq-"):
        return [str(script)]
    return [sys.executable, "-m", "fairseq_cli." + command[len("fairseq-"):].replace("-", "_")]


def run(command, *args, cwd=None, check=True):
    """Run a fairseq console script (``fairseq-train`` ...) and return the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    cmd = [*console_script(command), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def recipe_env():
    """The environment the recipes and ./run.sh run in from the tests: this environment's
    console scripts first on PATH (and no VIRTUAL_ENV, so a recipe does not look for another),
    one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.pop("VIRTUAL_ENV", None)
    return env


def preprocess_translation(data_dir, joined_dictionary=False):
    data_dir = Path(data_dir)
    extra = ["--joined-dictionary"] if joined_dictionary else []
    run("fairseq-preprocess", "--source-lang", "in", "--target-lang", "out",
        "--trainpref", data_dir / "train", "--validpref", data_dir / "valid",
        "--testpref", data_dir / "test", "--destdir", data_dir / "bin", "--workers", 1, *extra)
    return data_dir / "bin"


def preprocess_lm(data_dir):
    data_dir = Path(data_dir)
    run("fairseq-preprocess", "--only-source", "--trainpref", data_dir / "train.txt",
        "--validpref", data_dir / "valid.txt", "--testpref", data_dir / "test.txt",
        "--destdir", data_dir / "bin", "--workers", 1)
    return data_dir / "bin"


def train(data_bin, save_dir, *args, cpu=True, check=True):
    """fairseq-train with the plugin, on CPU unless ``cpu`` is False (then on the GPU fairseq
    picks); returns the CompletedProcess (logs in stderr)."""
    return run("fairseq-train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir,
               *(["--cpu"] if cpu else []), "--num-workers", 0, "--seed", 1, "--log-format", "json",
               "--log-interval", 1, "--no-progress-bar", *args, check=check)


# language_modeling as the tests run it: one sentence a sample
LM_TASK = ["--task", "language_modeling", "--sample-break-mode", "eos", "--tokens-per-sample", 64]

# fairseq's own architectures at tiny sizes (one layer, 32 dimensions)
FAIRSEQ_ARCHS = {
    "lstm": ["--arch", "lstm", "--encoder-layers", 1, "--decoder-layers", 1,
             "--encoder-embed-dim", 32, "--decoder-embed-dim", 32, "--encoder-hidden-size", 32,
             "--decoder-hidden-size", 32, "--decoder-out-embed-dim", 32],
    "transformer": ["--arch", "transformer", "--encoder-layers", 1, "--decoder-layers", 1,
                    "--encoder-embed-dim", 32, "--decoder-embed-dim", 32,
                    "--encoder-ffn-embed-dim", 64, "--decoder-ffn-embed-dim", 64,
                    "--encoder-attention-heads", 2, "--decoder-attention-heads", 2],
    "lstm_lm": ["--arch", "lstm_lm", "--decoder-layers", 1, "--decoder-embed-dim", 32,
                "--decoder-hidden-size", 32, "--decoder-out-embed-dim", 32],
    "transformer_lm": ["--arch", "transformer_lm", "--decoder-layers", 1,
                       "--decoder-embed-dim", 32, "--decoder-ffn-embed-dim", 64,
                       "--decoder-attention-heads", 2, "--decoder-output-dim", 32,
                       "--decoder-input-dim", 32],
}


def parse_json_logs(text, kind="train_inner"):
    """The JSON records fairseq logs for ``kind`` ('train_inner', 'train', 'valid'), values as
    fairseq wrote them (the results module's parser)."""
    from fairseq_skd.results.logs import raw_records

    return raw_records(text, kind)


def train_workers(data_bin, save_dir, *args, nproc=1):
    """fairseq-skd-train with ``nproc`` data-parallel workers and the plugin, its output appended
    to save_dir/train.log; returns that log's text."""
    log = Path(save_dir) / "train.log"
    run("fairseq-skd-train", "--nproc", nproc, data_bin, "--user-dir", USER_DIR, "--save-dir",
        save_dir, *args, "--log", log)
    return log.read_text()


def by_update(log_text):
    """The train_inner records of a training log by update number; after a resume, the later."""
    return {int(r["num_updates"]): r for r in parse_json_logs(log_text)}


def last_weights(save_dir):
    """The model's parameters in save_dir/checkpoint_last.pt."""
    import fairseq_skd  # noqa: F401  (torch's safe loader reads the plugin's checkpoints)

    return torch.load(Path(save_dir) / "checkpoint_last.pt", map_location="cpu")["model"]


# --- dictionaries, tasks, sentences and models built in Python; decoding ----------------------

SPECIAL_SYMBOLS = len(Dictionary())  # <s>, <pad>, </s>, <unk>: 4, before any word
PAD = 1  # fairseq's Dictionary puts <pad> at index 1


def make_dictionary(n_words, prefix="w"):
    """A fairseq Dictionary of ``n_words`` words ``{prefix}0`` .. after its special symbols:
    ``len(d) == SPECIAL_SYMBOLS + n_words`` (as fairseq's tests/utils.py dummy_dictionary)."""
    d = Dictionary()
    for i in range(n_words):
        d.add_symbol(f"{prefix}{i}")
    return d


class Task:
    """What a model's build_model and a criterion need of a fairseq task: its dictionaries
    (``target_dictionary``, also named ``dictionary`` as language_modeling names it, defaults to
    the source one)."""

    def __init__(self, dictionary, target_dictionary=None):
        self.source_dictionary = dictionary
        self.target_dictionary = self.dictionary = (
            dictionary if target_dictionary is None else target_dictionary)


def build_model(arch, dictionary, /, seed, target_dictionary=None, **overrides):
    """The registered architecture ``arch``, its preset applied to the flags ``overrides`` (an
    ``arch`` among them too, where a model reads it), built for Task(dictionary,
    target_dictionary) with its weights drawn after torch.manual_seed(seed)."""
    args = argparse.Namespace(**overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    torch.manual_seed(seed)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, Task(dictionary, target_dictionary))


def random_sentences(dictionary, lengths, generator, eos_first=False):
    """For each n of ``lengths``, n random words of ``dictionary`` (no special symbol) drawn
    with ``generator``, and </s>: last, as fairseq's datasets hold a sentence, or with
    ``eos_first`` first, as a language model reads it (language_modeling --sample-break-mode
    eos)."""
    eos = torch.tensor([dictionary.eos()])
    out = []
    for n in lengths:
        words = torch.randint(dictionary.nspecial, len(dictionary), (int(n),), generator=generator)
        out.append(torch.cat([eos, words] if eos_first else [words, eos]))
    return out


def incremental_lprobs(model, prev_output_tokens, encoder_out=None):
    """The decoder run one step at a time with one cached state, as beam search runs it: the
    log-probabilities (B x T x V) and the attention (B x T x S; None for a language model)."""
    state, steps, attns = {}, [], []
    for t in range(prev_output_tokens.size(1)):
        logits, extra = model.decoder(prev_output_tokens[:, : t + 1], encoder_out,
                                      incremental_state=state)
        assert logits.size(1) == 1
        steps.append(F.log_softmax(logits.float(), dim=-1))
        attns.append(extra["attn"][0])
    return torch.cat(steps, dim=1), None if attns[0] is None else torch.cat(attns, dim=1)


def generate(model, src_tokens, beam, prefix_tokens=None, **kwargs):
    """fairseq's SequenceGenerator (``kwargs``: its options) on ``src_tokens``, each row as long
    as its tokens that are not padding. A language model's src_tokens are the prefixes that it
    continues, also given as ``prefix_tokens`` (right-padded), as fairseq-generate --task
    language_modeling gives them."""
    generator = SequenceGenerator([model], model.decoder.dictionary, beam_size=beam, **kwargs)
    lengths = src_tokens.ne(model.decoder.dictionary.pad()).sum(1)
    sample = {"id": torch.arange(src_tokens.size(0)),
              "net_input": {"src_tokens": src_tokens, "src_lengths": lengths}}
    return generator.generate([model], sample, prefix_tokens=prefix_tokens)


def greedy(model, src_tokens, max_len, prefix_tokens=None):
    """Greedy decoding written out with SequenceGenerator's rules: pad never chosen, </s> not
    first (min_len 1), the words of ``prefix_tokens`` (right-padded) forced with their own
    scores, </s> forced after ``max_len`` tokens. An encoder-decoder model encodes
    ``src_tokens``; a language model takes only the batch size from them. For each sentence:
    (tokens, positional scores)."""
    d = model.decoder.dictionary
    bsz = src_tokens.size(0)
    encoder_out = None
    if isinstance(model, FairseqEncoderDecoderModel):
        encoder_out = model.encoder(src_tokens, src_tokens.ne(d.pad()).sum(1))
    tokens = torch.full((bsz, 1), d.eos())
    state, results = {}, [None] * bsz
    scores = torch.zeros(bsz, 0)
    for step in range(max_len + 1):
        logits, _ = model.decoder(tokens, encoder_out, incremental_state=state)
        lprobs = F.log_softmax(logits[:, -1].float(), dim=-1)
        lprobs[:, d.pad()] = -math.inf
        if step == 0:
            lprobs[:, d.eos()] = -math.inf
        best = lprobs.argmax(dim=-1)
        if prefix_tokens is not None and step < prefix_tokens.size(1):
            forced = prefix_tokens[:, step].ne(d.pad())
            best = torch.where(forced, prefix_tokens[:, step], best)
        if step == max_len:
            best = torch.full((bsz,), d.eos())
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        scores = torch.cat([scores, lprobs.gather(1, best[:, None])], dim=1)
        for i in range(bsz):
            if results[i] is None and best[i] == d.eos():
                results[i] = (tokens[i, 1:].clone(), scores[i].clone())
    return results


# --- a tiny model, task and samples for the criterion's unit tests ----------------------------

# Four words in a 2-d output embedding; distances from word 0: 0.5 (word 2), 2.5 (word 3), 5 (word 1).
W_HAND = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.3, 0.4], [1.5, 2.0]])
LOGITS_HAND = torch.tensor([2.0, 1.0, 0.5, -1.0])  # argmax n = 0 at every position


class TinyDecoderModel(nn.Module):
    """Embedding -> tanh (-> dropout) -> output embedding W: just what a criterion touches."""

    def __init__(self, vocab=12, dim=6, seed=0, dropout=0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)
        nn.init.normal_(self.out.weight, std=0.6)
        self.dropout = dropout

    def forward(self, src_tokens, src_lengths=None):
        h = torch.tanh(self.embed_tokens(src_tokens))
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        return self.out(h), None

    def get_normalized_probs(self, net_output, log_probs):
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def get_targets(self, sample, net_output):
        return sample["target"]

    def get_output_embedding_matrix(self):
        return self.out.weight


def make_task(vocab=12):
    """A Task with one dictionary of ``vocab`` symbols, the special ones included."""
    return Task(make_dictionary(vocab - SPECIAL_SYMBOLS))


def make_sample(vocab=12, bsz=3, tgt_len=5, pad_last=2, seed=0):
    """Random source and target words (ids >= 4); the last sentence ends in ``pad_last`` pads."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (bsz, tgt_len), generator=g)
    target = torch.randint(4, vocab, (bsz, tgt_len), generator=g)
    target[-1, tgt_len - pad_last :] = PAD
    ntokens = int(target.ne(PAD).sum())
    return {"net_input": {"src_tokens": src}, "target": target, "ntokens": ntokens,
            "nsentences": bsz}


def make_criterion(sentence_avg=False, vocab=12, **config):
    """self_kd_cross_entropy on make_task(vocab)'s dictionary; ``config``: fields of its
    SelfKDCrossEntropyConfig, the rest at their defaults."""
    from fairseq_skd.criterions.self_kd_cross_entropy import (SelfKDCrossEntropyConfig,
                                                              SelfKDCrossEntropyCriterion)

    cfg = SelfKDCrossEntropyConfig(sentence_avg=sentence_avg, **config)
    return SelfKDCrossEntropyCriterion(cfg, make_task(vocab))


def at_update(model, num_updates):
    """``model`` told that ``num_updates`` updates are done, as fairseq's trainer tells it."""
    from fairseq_skd.modules.update_counter import attach_update_counter

    attach_update_counter(model).set_num_updates(num_updates)
    return model


def loss_and_grads(criterion, sample, num_updates, reduce=True):
    """A fresh TinyDecoderModel at update ``num_updates`` in training mode: the criterion's loss,
    the gradients of the model's parameters, sample size and logging output."""
    model = at_update(TinyDecoderModel(), num_updates).train()
    loss, sample_size, log = criterion(model, sample, reduce=reduce)
    loss.sum().backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], sample_size, log


def assert_incremental_state_stays_one_constant_entry(decode_prefix, length, batch, hidden):
    """A decoder's incremental state, fed prefix after prefix (``decode_prefix(t, state)`` runs
    the decoder on the first t + 1 target tokens), is one entry holding the recurrent state, of
    the same size at every step: a step's cost does not grow with the prefix."""
    state = {}
    with torch.no_grad():
        for t in range(length):
            decode_prefix(t, state)
            assert len(state) == 1
            (cached,) = state.values()
            assert {k: tuple(v.shape) for k, v in cached.items()} == {
                "hidden": (batch, hidden), "cell": (batch, hidden)}
