"""SKD outside fairseq: fairseq_skd.losses with torch alone, and the Hugging Face Trainer
integration (fairseq_skd.hf) on tiny models built from configs (nothing downloaded): GPT-2 (a
causal LM, tied embeddings), BART and T5 (encoder-decoders); the loss against the fairseq
criterion's, resume, gradient accumulation, the logs, a model without output embeddings."""

import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fairseq_skd.hf import SelfKDLossFunc, SKDArguments, SKDTrainer  # noqa: E402
from fairseq_skd.losses import self_kd_loss, skd_alpha  # noqa: E402

from helpers import PAD, REPO, TinyDecoderModel, at_update, make_criterion, make_sample  # noqa: E402

V = 48


def gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(config)


def bart(seed=0):
    torch.manual_seed(seed)
    return transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        max_position_embeddings=32, dropout=0.0, attention_dropout=0.0))


def t5(seed=0):
    torch.manual_seed(seed)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=16, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
        dropout_rate=0.0, decoder_start_token_id=0))


def causal_data(n=16, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        ids = torch.randint(3, V, (length,), generator=g)
        labels = ids.clone()
        labels[: i % 3] = -100  # a prompt left out
        data.append({"input_ids": ids, "labels": labels})
    return data


def seq2seq_data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, V, (8,), generator=g),
             "labels": torch.randint(3, V, (6,), generator=g)} for _ in range(n)]


def arguments(tmp_path, **kw):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6,
                    logging_steps=2, report_to=[], use_cpu=True, save_strategy="no",
                    learning_rate=1e-3, seed=1, data_seed=1, disable_tqdm=True)
    settings.update(kw)
    return transformers.TrainingArguments(**settings)


SKD = SKDArguments(warmup_steps=1, alpha_step=0.5, sigma=0.3)


def test_the_losses_import_and_run_where_fairseq_does_not(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['fairseq'] = None\n")
    code = ("import torch, fairseq_skd.losses as L, fairseq_skd.hf\n"
            "import sys; assert 'fairseq' not in sys.modules or sys.modules['fairseq'] is None\n"
            "out = L.self_kd_loss(torch.randn(2, 3, 5), torch.tensor([[1, 2, -100], [0, 4, 3]]),"
            " torch.randn(5, 4), alpha=0.5)\n"
            "print(float(out.loss) > 0, int(out.tokens))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "5"]


@pytest.mark.parametrize("soft_targets", ["predicted", "topk", "full"])
def test_the_loss_equals_the_fairseq_criterions(soft_targets):
    """The same log-probabilities and W: fairseq's padding (index 1) there, -100 here."""
    sample = make_sample(12)
    config = dict(skd_warmup_updates=0, skd_alpha_step=0.7, skd_alpha_max=0.7, skd_sigma="0.4",
                  skd_soft_targets=soft_targets, skd_topk=3, label_smoothing=0.1)
    model = at_update(TinyDecoderModel(12), 5).train()
    loss, _, log = make_criterion(**config)(model, sample)
    logits = model(sample["net_input"]["src_tokens"])[0]
    labels = sample["target"].masked_fill(sample["target"].eq(PAD), -100)
    neighbours = None
    if soft_targets == "topk":
        from fairseq_skd.losses import nearest_words
        neighbours = nearest_words(model.out.weight, 3, exclude=PAD)
    out = self_kd_loss(logits, labels, model.out.weight, alpha=0.7, sigma=0.4, label_smoothing=0.1,
                       soft_targets=soft_targets, neighbours=neighbours, exclude_word=PAD)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert out.nll_loss.item() == pytest.approx(log["nll_loss"].item(), rel=1e-6)
    assert int(out.tokens) == sample["ntokens"] and out.stats["match"] == log["skd_match"]


def test_a_causal_lm_step_is_the_shifted_loss_over_the_labelled_tokens():
    model = gpt2().train()
    batch = transformers.default_data_collator(causal_data(4))
    func = SelfKDLossFunc(model, SKD)
    func.step = 3
    outputs = model(input_ids=batch["input_ids"])
    loss = func(outputs, batch["labels"])
    logits, labels = outputs.logits[:, :-1], batch["labels"][:, 1:]
    expected = self_kd_loss(logits, labels, model.lm_head.weight, skd_alpha(3, 1, 0.5), sigma=0.3)
    assert loss.item() == pytest.approx((expected.loss / labels.ne(-100).sum()).item(), rel=1e-6)
    assert model.lm_head.weight is model.transformer.wte.weight  # W: the tied embedding
    model.eval()
    with torch.no_grad():  # evaluation: the plain NLL, as the model's own loss
        plain = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        assert func(model(input_ids=batch["input_ids"]), batch["labels"]).item() == pytest.approx(plain.item(), rel=1e-5)


@pytest.mark.parametrize("build,data", [(gpt2, causal_data), (bart, seq2seq_data), (t5, seq2seq_data)],
                         ids=["gpt2", "bart", "t5"])
def test_trainer_trains_and_logs_the_skd_statistics(build, data, tmp_path):
    trainer = SKDTrainer(model=build(), args=arguments(tmp_path), train_dataset=data(), skd=SKD)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [2, 4, 6]
    # alpha of steps 0-1, 2-3, 4-5 (K = 1, eta = 0.5): means over the logged steps
    assert [entry["skd_alpha"] for entry in logs] == [0.25, 1.0, 1.0]
    for entry in logs:
        assert 0 <= entry["skd_qn"] <= 0.5 and 0 <= entry["skd_clip"] <= 1 and 0 <= entry["skd_match"] <= 1
        assert entry["skd_sigma"] == 0.3 and entry["loss"] > 0


def final_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    # a constant learning rate: a run stopped after 3 steps has the schedule of the whole run
    kwargs = dict(max_steps=6, save_strategy="steps", save_steps=3, lr_scheduler_type="constant")
    whole = SKDTrainer(model=gpt2(), args=arguments(tmp_path / "whole", **kwargs),
                       train_dataset=causal_data(), skd=SKD)
    whole.train()
    first = SKDTrainer(model=gpt2(), args=arguments(tmp_path / "resumed", **{**kwargs, "max_steps": 3}),
                       train_dataset=causal_data(), skd=SKD)
    first.train()
    resumed = SKDTrainer(model=gpt2(), args=arguments(tmp_path / "resumed", **kwargs),
                         train_dataset=causal_data(), skd=SKD)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.skd_loss.step == 5  # the step given before the last update: resume-safe
    a, b = final_weights(whole), final_weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_2_equals_a_batch_twice_as_large(tmp_path):
    """The micro-batches' labelled tokens differ (prompts left out), so a per-micro-batch mean
    would weigh them wrongly; the loss is normalised by the accumulated batch's token count. SGD:
    the update is the gradient itself, which Adam's normalisation would blur."""
    sgd = dict(optim="sgd", learning_rate=0.5, max_steps=2)
    big = SKDTrainer(model=gpt2(), args=arguments(tmp_path / "big", per_device_train_batch_size=8, **sgd),
                     train_dataset=causal_data(), skd=SKD)
    big.train()
    small = SKDTrainer(model=gpt2(), args=arguments(tmp_path / "small", per_device_train_batch_size=4,
                                                    gradient_accumulation_steps=2, **sgd),
                       train_dataset=causal_data(), skd=SKD)
    small.train()
    a, b = final_weights(big), final_weights(small)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_a_model_without_output_embeddings_is_refused_clearly(tmp_path):
    model = transformers.GPT2Model(transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="GPT2Model has no output embeddings"):
        SKDTrainer(model=model, args=arguments(tmp_path), train_dataset=causal_data())


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="sigma must be 'auto' or a number > 0, got -1.*qn_max cannot be 2"):
        SKDArguments(sigma=-1, qn_max=2)


def test_bf16_logits_give_the_loss_of_their_float32_values():
    logits = torch.randn(2, 6, 12).bfloat16()
    labels = torch.randint(0, 12, (2, 6))
    weight = torch.randn(12, 8)
    low = self_kd_loss(logits, labels, weight, alpha=0.8, sigma=0.3)
    high = self_kd_loss(logits.double(), labels, weight.double(), alpha=0.8, sigma=0.3)
    assert low.loss.dtype == torch.float32
    assert low.loss.item() == pytest.approx(high.loss.item(), rel=1e-6)  # bf16 arithmetic: ~1e-2
