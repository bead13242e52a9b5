"""Self-knowledge distillation in Hugging Face ``transformers``' Trainer.

    from fairseq_skd.hf import SKDArguments, SKDTrainer

    trainer = SKDTrainer(model=model, args=training_args, train_dataset=train,
                         skd=SKDArguments(warmup_steps=500, alpha_step=0.0002))
    trainer.train()                      # logs skd_alpha, skd_qn, skd_clip, skd_match, skd_sigma

The loss is ``fairseq_skd.losses.self_kd_loss`` (the fairseq criterion's): W is
``model.get_output_embeddings().weight`` (tied to the input embeddings or not), labels of -100
are left out, a causal LM's labels are shifted as its own loss shifts them (logits at position
i predict label i + 1), an encoder-decoder's (Marian, BART, T5) are not. alpha is a function of
``state.global_step``, so it is resume-safe and the same on every process. The loss is summed
over the labelled positions and divided by Trainer's ``num_items_in_batch`` (the labelled
positions of the whole accumulated batch, over every process with
``average_tokens_across_devices``), as Trainer normalises its own token-level losses, so
gradient accumulation and several processes give the gradient of one large batch. Everything is
float32 under fp16/bf16.

The pieces work without the Trainer subclass too: :class:`SelfKDLossFunc` is a
``compute_loss_func`` (``Trainer(..., compute_loss_func=SelfKDLossFunc(model, skd))``) and
:class:`SKDCallback` gives it the step (add it first: ``callbacks=[SKDCallback(loss_func)]``).
"""

import math
from dataclasses import asdict, dataclass

import torch

from .losses import auto_sigma_of, nearest_words, self_kd_loss, skd_alpha

try:
    from transformers import Trainer, TrainerCallback
except ImportError as e:  # pragma: no cover - what a user without the extra sees
    raise ImportError("fairseq_skd.hf needs Hugging Face transformers: pip install \"fairseq-skd[hf]\" "
                      "(in the repository: pip install \".[hf]\", or ./setup_env.sh)") from e

STATS = ("match", "qn_count", "qn", "clipped", "positions")


@dataclass
class SKDArguments:
    """SKD's settings (the fairseq criterion's --skd-* flags, docs/criterion.md)."""
    warmup_steps: int = 500  # K: steps with plain cross-entropy (alpha = 0)
    alpha_step: float = 0.0002  # eta: increase of alpha per step after K
    alpha_max: float = 1.0
    skd_lambda: float = 1.0
    sigma: "float | str" = "auto"  # a number, or ln 2 / the mean nearest-neighbour distance in W
    sigma_refresh: int = 100  # steps between recomputations of sigma "auto"
    qn_max: float = 0.5
    soft_targets: str = "predicted"  # predicted (Eq. 8), topk or full (Eq. 7)
    topk: int = 10
    topk_refresh: int = 100
    distance: str = "l2"
    label_smoothing: float = 0.0

    def __post_init__(self):
        problems = []
        if not (self.sigma == "auto" or (isinstance(self.sigma, (int, float)) and self.sigma > 0)):
            problems.append(f"sigma must be 'auto' or a number > 0, got {self.sigma!r}")
        for name, ok in (("warmup_steps", self.warmup_steps >= 0), ("alpha_step", self.alpha_step >= 0),
                         ("alpha_max", 0 <= self.alpha_max <= 1), ("skd_lambda", 0 <= self.skd_lambda <= 1),
                         ("qn_max", 0 < self.qn_max <= 1), ("sigma_refresh", self.sigma_refresh >= 1),
                         ("topk", self.topk >= 1), ("topk_refresh", self.topk_refresh >= 1),
                         ("label_smoothing", 0 <= self.label_smoothing < 1),
                         ("soft_targets", self.soft_targets in ("predicted", "topk", "full")),
                         ("distance", self.distance in ("l2", "cosine", "dot"))):
            if not ok:
                problems.append(f"{name} cannot be {getattr(self, name)!r}")
        if problems:
            raise ValueError("SKDArguments: " + "; ".join(problems))


def output_embedding(model):
    """W: the weight of ``model.get_output_embeddings()``, or a clear error."""
    get = getattr(model, "get_output_embeddings", None)
    layer = get() if callable(get) else None
    if layer is None or getattr(layer, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings "
                         "(get_output_embeddings() is None): SKD needs the [vocab x dim] matrix "
                         "right below the softmax, as language models and sequence-to-sequence "
                         "models with a language-modelling head have")
    return layer.weight


class SelfKDLossFunc:
    """A Trainer ``compute_loss_func``: SKD's loss of a batch, normalised by
    ``num_items_in_batch``; summable statistics kept for the logs."""

    def __init__(self, model, skd: SKDArguments = None):
        self.model, self.skd = model, skd or SKDArguments()
        output_embedding(model)  # refuse a model without one now, not at the first step
        self.causal = not getattr(model.config, "is_encoder_decoder", False)
        self.step = 0
        self.sigma_state = self.neighbour_state = None
        self.reset_stats()

    def reset_stats(self):
        self.stats = dict.fromkeys(STATS, 0.0)
        self.alpha_sum, self.sigma_sum, self.batches = 0.0, 0.0, 0

    def _due(self, state, every):
        return state is None or (self.step != state[0] and self.step % every == 0)

    def current_sigma(self, weight):
        if self.skd.sigma != "auto":
            return float(self.skd.sigma)
        if self._due(self.sigma_state, self.skd.sigma_refresh):
            self.sigma_state = (self.step, auto_sigma_of(weight, self.skd.distance))
        return self.sigma_state[1]

    def current_neighbours(self, weight):
        state = self.neighbour_state
        if self._due(state, self.skd.topk_refresh) or state[1].device != weight.device:
            self.neighbour_state = (self.step, nearest_words(weight, self.skd.topk, self.skd.distance))
        return self.neighbour_state[1]

    @property
    def alpha(self):
        s = self.skd
        return skd_alpha(self.step, s.warmup_steps, s.alpha_step, s.alpha_max)

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if self.causal:  # position i predicts token i + 1: the labels shifted, the logits
            # whole (slicing them would copy the [batch x length x vocab] tensor), as HF does
            labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
        weight = output_embedding(self.model)
        training = self.model.training
        alpha = self.alpha if training else 0.0
        sigma = self.current_sigma(weight)
        neighbours = (self.current_neighbours(weight)
                      if self.skd.soft_targets == "topk" and alpha > 0 else None)
        out = self_kd_loss(logits, labels.to(logits.device), weight, alpha, sigma=sigma,
                           qn_max=self.skd.qn_max, skd_lambda=self.skd.skd_lambda,
                           soft_targets=self.skd.soft_targets, neighbours=neighbours,
                           distance=self.skd.distance, label_smoothing=self.skd.label_smoothing)
        loss = out.loss if training else out.nll_loss  # evaluation reports the plain NLL
        if training:
            with torch.no_grad():
                for key in ("match", "qn_count", "qn", "clipped"):
                    if key in out.stats:
                        self.stats[key] += float(out.stats[key])
                self.stats["positions"] += float(out.tokens)
                self.alpha_sum += alpha
                self.sigma_sum += sigma
                self.batches += 1
        divisor = num_items_in_batch if num_items_in_batch is not None else out.tokens
        if torch.is_tensor(divisor):
            divisor = divisor.to(loss.device)
        return loss / divisor

    def logged(self, reduce=lambda values: values):
        """skd_alpha, skd_sigma (means over the batches since the last call), skd_match, skd_qn
        and skd_clip (over the positions), ``reduce`` summing the sums over processes; resets."""
        sums = reduce(torch.tensor([self.stats[k] for k in STATS] + [self.alpha_sum, self.sigma_sum,
                                                                    float(self.batches)],
                                   dtype=torch.float64))
        match, qn_count, qn, clipped, positions, alpha, sigma, batches = sums.tolist()
        self.reset_stats()
        logs = {}
        if batches:
            logs.update(skd_alpha=alpha / batches, skd_sigma=sigma / batches)
        if positions:
            logs["skd_match"] = match / positions
        if qn_count:
            logs.update(skd_qn=qn / qn_count, skd_clip=clipped / qn_count)
        return {k: round(v, 5) for k, v in logs.items() if math.isfinite(v)}


class SKDCallback(TrainerCallback):
    """Gives a :class:`SelfKDLossFunc` Trainer's step before every step (the count restored on
    resuming from a Trainer checkpoint, the same on every process)."""

    def __init__(self, loss_func):
        self.loss_func = loss_func

    def on_train_begin(self, args, state, control, **kwargs):
        self.loss_func.step = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self.loss_func.step = state.global_step


class SKDTrainer(Trainer):
    """``transformers.Trainer`` training with SKD's loss; its logs add skd_alpha, skd_sigma,
    skd_match, skd_qn and skd_clip (summed over processes), so they reach TensorBoard and the
    other ``report_to`` integrations."""

    def __init__(self, *args, skd: SKDArguments = None, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("SKDTrainer computes its own loss: leave compute_loss_func out")
        model = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        if model is None:
            raise ValueError("SKDTrainer needs the model (model=...)")
        self.skd_loss = SelfKDLossFunc(model, skd)
        super().__init__(*args, compute_loss_func=self.skd_loss, **kwargs)
        self.add_callback(SKDCallback(self.skd_loss))

    def compute_loss(self, model, inputs, *args, **kwargs):
        if not self.skd_loss.causal and "decoder_input_ids" not in inputs and "labels" in inputs:
            # the loss function takes the labels away: the decoder's inputs come from them first,
            # as the model itself would make them
            unwrapped = self.accelerator.unwrap_model(model)
            inputs = {**inputs, "decoder_input_ids":
                      unwrapped.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])}
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # a training log: the statistics since the previous one
            logs.update(self.skd_loss.logged(
                lambda values: self.accelerator.reduce(values.to(self.args.device), "sum").cpu()))
        super().log(logs, *args, **kwargs)


def describe(skd: SKDArguments):
    return ", ".join(f"{k}={v}" for k, v in asdict(skd).items())
