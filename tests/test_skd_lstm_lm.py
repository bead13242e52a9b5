"""skd_lstm_lm: structure, initial scales, incremental decoding, beam search, learning, CLI."""

import argparse
import collections
import math
import re

import pytest
import torch
import torch.nn.functional as F
from fairseq import options, tasks
from fairseq.data import data_utils
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

import fairseq_skd  # noqa: F401
from fairseq_skd.models.skd_lstm_lm import SKDLSTMLanguageModel
from fairseq_skd.modules.output_embedding import find_output_embedding
from fairseq_skd.modules.target_embedding_noise import TargetEmbeddingNoise

from helpers import (LM_TASK, USER_DIR, assert_incremental_state_stays_one_constant_entry,
                     build_model, generate, greedy, incremental_lprobs,
                     make_dictionary, make_lm_data, parse_json_logs, preprocess_lm,
                     random_sentences, run, train)

ARCHS = ("skd_lstm_lm", "skd_lstm_lm_tiny")
SKD_SIGMA = 0.1


# ---------------------------------------------------------------- helpers


def tiny_model(seed=1, dictionary=None, **overrides):
    """skd_lstm_lm_tiny (embeddings 32, LSTM 64, W 32) on 20 words unless told otherwise."""
    dictionary = dictionary if dictionary is not None else make_dictionary(20)
    return build_model("skd_lstm_lm_tiny", dictionary, seed, **overrides)


def lm_batch(dictionary, lengths=(6, 3, 9, 1, 5), seed=2, left_pad=False):
    """Model inputs as language_modeling gives them with --sample-break-mode eos, </s> w1 .. wn,
    right-padded as it pads them; left padding too, for generation prefixes."""
    g = torch.Generator().manual_seed(seed)
    sents = random_sentences(dictionary, lengths, g, eos_first=True)
    return data_utils.collate_tokens(sents, dictionary.pad(), left_pad=left_pad), sents


def full_lprobs(model, tokens):
    logits, _ = model(tokens)
    return F.log_softmax(logits.float(), dim=-1)


# ---------------------------------------------------------------- registration and structure


def test_presets_are_registered_with_prefix():
    for arch in ARCHS:
        assert ARCH_MODEL_REGISTRY[arch] is SKDLSTMLanguageModel
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY["skd_lstm_lm"](args)
    # Hahn & Choi (2019), Section 4.2: word dimension 500, 400 hidden units
    assert (args.decoder_embed_dim, args.decoder_hidden_size, args.decoder_out_embed_dim) == (
        500, 400, 500)
    assert args.share_decoder_input_output_embed is False
    assert args.decoder_dropout_in == args.decoder_dropout_out == args.dropout


def test_structure_and_state_dict():
    model = tiny_model()
    dec = model.decoder
    assert isinstance(dec.lstm, torch.nn.LSTM) and dec.lstm.num_layers == 1
    assert (dec.lstm.input_size, dec.lstm.hidden_size) == (32, 64)
    assert (dec.fc_hidden.in_features, dec.fc_hidden.out_features) == (64, 32)
    assert dec.fc_out.bias is not None  # z = W h + b
    assert sorted(model.state_dict()) == sorted(
        f"decoder.{k}" for k in [
            "embed_tokens.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0",
            "lstm.bias_hh_l0", "fc_hidden.weight", "fc_hidden.bias", "fc_out.weight",
            "fc_out.bias"])


def test_forward_matches_the_formulas():
    """z = W ReLU(F LSTM(E y) + f) + b, written out with the modules' weights."""
    model = tiny_model().eval()
    d = model.decoder.dictionary
    tokens, _ = lm_batch(d, lengths=(5, 5, 5))
    dec = model.decoder
    with torch.no_grad():
        logits, _ = model(tokens)
        s, _ = dec.lstm(dec.embed_tokens(tokens))
        h = torch.relu(s @ dec.fc_hidden.weight.t() + dec.fc_hidden.bias)
        z = h @ dec.fc_out.weight.t() + dec.fc_out.bias
    torch.testing.assert_close(logits, z, atol=1e-6, rtol=1e-6)


def test_output_embedding_is_found_and_decoder_has_embed_tokens():
    model = tiny_model()
    W = find_output_embedding(model)
    assert isinstance(W, torch.nn.Parameter)
    assert W is model.decoder.fc_out.weight is model.decoder.get_output_embedding_matrix()
    assert W is model.get_output_embedding_matrix()
    assert W.shape == (len(model.decoder.dictionary), 32)
    assert isinstance(model.decoder.embed_tokens, torch.nn.Embedding)
    assert model.decoder.embed_tokens.weight is not W  # not tied by default

    tied = tiny_model(share_decoder_input_output_embed=True)
    assert find_output_embedding(tied) is tied.decoder.embed_tokens.weight
    assert tied.decoder.embed_tokens.weight is tied.decoder.fc_out.weight


def test_tied_embeddings_through_fairseq_options(lm_bin):
    """The flags parse through fairseq's own argparse path (add_args) and build the model."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(lm_bin), "--user-dir", USER_DIR, "--task", "language_modeling",
        "--arch", "skd_lstm_lm_tiny", "--share-decoder-input-output-embed",
        "--decoder-out-embed-std", "0.5", "--dropout", "0.2"])
    model = tasks.setup_task(args).build_model(args)
    assert isinstance(model, SKDLSTMLanguageModel)
    assert find_output_embedding(model) is model.decoder.embed_tokens.weight
    assert model.decoder.dropout_in_module.p == model.decoder.dropout_out_module.p == 0.2
    W = find_output_embedding(model).detach()
    assert W[model.decoder.padding_idx].abs().sum() == 0
    assert 0.4 < W[4:].std() < 0.6


def test_bad_sharing_configuration_names_the_flags():
    with pytest.raises(ValueError) as err:
        tiny_model(share_decoder_input_output_embed=True, decoder_out_embed_dim=16)
    for flag in ("--share-decoder-input-output-embed", "--decoder-embed-dim",
                 "--decoder-out-embed-dim"):
        assert flag in str(err.value)


def test_bad_output_embedding_std_names_the_flag():
    with pytest.raises(ValueError, match="--decoder-out-embed-std"):
        tiny_model(decoder_out_embed_std=0.0)


def test_tied_state_dict_round_trip():
    model = tiny_model(share_decoder_input_output_embed=True, seed=1)
    other = tiny_model(share_decoder_input_output_embed=True, seed=2)
    other.load_state_dict(model.state_dict(), strict=True)
    assert other.decoder.embed_tokens.weight is other.decoder.fc_out.weight
    tokens, _ = lm_batch(model.decoder.dictionary)
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens)[0], other.eval()(tokens)[0])


def test_max_positions_from_tokens_per_sample():
    assert tiny_model(tokens_per_sample=64).max_positions() == 64
    assert tiny_model(tokens_per_sample=64, max_target_positions=9).max_positions() == 9


def test_target_embed_noise_hooks_embed_tokens():
    model = tiny_model()
    tokens, _ = lm_batch(model.decoder.dictionary)
    noise = TargetEmbeddingNoise(model.decoder, std=0.5)
    try:
        model.train()
        assert not torch.equal(model(tokens)[0], model(tokens)[0])
        model.eval()
        assert torch.equal(model(tokens)[0], model(tokens)[0])
    finally:
        noise.remove()


# ---------------------------------------------------------------- initialisation (SKD scale)


def test_init_scales_default_preset():
    """Output-embedding distances far above ln2 / sigma = 6.9 (q_n not clipped at 0.5), logits
    of a sane scale at init (see the module docstring)."""
    d = make_dictionary(1000)
    model = build_model("skd_lstm_lm", d, seed=1).eval()
    W = find_output_embedding(model).detach()[d.nspecial :]
    distances = torch.cdist(W, W)
    pairwise = distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)]
    nearest = distances.fill_diagonal_(float("inf")).min(dim=1)[0]
    threshold = math.log(2) / SKD_SIGMA
    assert pairwise.median() > threshold and nearest.median() > threshold
    assert 11 < pairwise.median() < 14.5  # ~ 0.4 * sqrt(2 * 500) = 12.6
    assert nearest.median() > 10
    # fairseq's uniform(+-0.1) would give ~ sqrt(2 * 500 / 300) = 1.8: q_n clipped everywhere
    tokens, _ = lm_batch(d, lengths=(20, 14, 30, 25), seed=4)
    with torch.no_grad():
        logits, _ = model(tokens)
    assert 0.005 < logits.std() <= 1.5
    # a near-uniform start: the initial loss is close to log(V)
    assert logits.max() - logits.min() < 5
    # tied: the input embedding is W, same scale, logits still sane
    tied = build_model("skd_lstm_lm", d, seed=1,
                       share_decoder_input_output_embed=True).eval()
    with torch.no_grad():
        logits, _ = tied(tokens)
    assert 0.005 < logits.std() <= 1.5


# ---------------------------------------------------------------- incremental decoding


@pytest.mark.parametrize("left_pad", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("tied", [False, True], ids=["separate", "tied"])
def test_incremental_equals_full_forward(left_pad, tied):
    model = tiny_model(share_decoder_input_output_embed=tied).eval()
    d = model.decoder.dictionary
    tokens, sents = lm_batch(d, left_pad=left_pad)
    words = tokens.ne(d.pad())
    with torch.no_grad():
        full = full_lprobs(model, tokens)
        steps, _ = incremental_lprobs(model, tokens)
        # at every word (padding positions are padding), and each sentence as if alone
        torch.testing.assert_close(steps[words], full[words], atol=1e-5, rtol=0)
        for i, sent in enumerate(sents):
            alone = full_lprobs(model, sent[None])[0]
            torch.testing.assert_close(full[i][words[i]], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("left_pad", [False, True], ids=["right_pad", "left_pad"])
def test_incremental_after_a_padded_prefix(left_pad):
    """A first call with a whole padded prefix leaves each row's state after its last word."""
    model = tiny_model().eval()
    d = model.decoder.dictionary
    prefix, sents = lm_batch(d, lengths=(4, 1, 6, 2), left_pad=left_pad)
    following = torch.randint(d.nspecial, len(d), (prefix.size(0), 3),
                              generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        state = {}
        model.decoder(prefix, incremental_state=state)
        tokens = prefix
        for t in range(following.size(1)):
            tokens = torch.cat([tokens, following[:, t : t + 1]], dim=1)
            logits, _ = model.decoder(tokens, incremental_state=state)
            for i, sent in enumerate(sents):
                alone = torch.cat([sent, following[i, : t + 1]])[None]
                expected = full_lprobs(model, alone)[0, -1]
                torch.testing.assert_close(F.log_softmax(logits[i, 0], dim=-1), expected,
                                           atol=1e-5, rtol=0)


def test_incremental_state_is_one_dict_and_step_cost_is_constant():
    model = tiny_model().eval()
    d = model.decoder.dictionary
    tokens, _ = lm_batch(d)
    # (s, c), B x hidden each
    assert_incremental_state_stays_one_constant_entry(
        lambda t, state: model.decoder(tokens[:, : t + 1], incremental_state=state),
        tokens.size(1), 5, 64)


def test_reorder_incremental_state():
    """After reordering (a permutation with repeats, as beam search does), the next steps give
    the reordered outputs of the unreordered run."""
    model = tiny_model().eval()
    d = model.decoder.dictionary
    tokens, _ = lm_batch(d, lengths=(8, 7, 9, 8, 8))
    new_order = torch.tensor([2, 0, 0, 4, 1, 2, 3])
    with torch.no_grad():
        reference, _ = incremental_lprobs(model, tokens)
        state = {}
        for t in range(3):
            model.decoder(tokens[:, : t + 1], incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        (cached,) = state.values()
        assert cached["hidden"].size(0) == len(new_order)
        for t in range(3, tokens.size(1)):
            logits, _ = model.decoder(tokens[new_order, : t + 1], incremental_state=state)
            torch.testing.assert_close(F.log_softmax(logits[:, 0], dim=-1),
                                       reference[new_order, t], atol=1e-5, rtol=0)
        # a wrong order gives different outputs: the check above can fail
        state = {}
        for t in range(3):
            model.decoder(tokens[:, : t + 1], incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, torch.tensor([1, 2, 3, 4, 0]))
        logits, _ = model.decoder(tokens[:, :4], incremental_state=state)
        assert not torch.allclose(F.log_softmax(logits[:, 0], dim=-1), reference[:, 3], atol=1e-3)


# ---------------------------------------------------------------- beam search


def lm_generate(model, prefix, beam, **kwargs):
    """LM generation as fairseq-generate --task language_modeling does it: the (right-padded)
    prefix words are forced, then the model continues."""
    return generate(model, prefix, beam, prefix_tokens=prefix, **kwargs)


def peaked_model(seed, eos_bias=0.0, scale=30.0):
    """A random model whose next-word distributions are peaked (instead of the near-uniform
    start of the SKD-scaled init), so that beams diverge and hypotheses end at different steps."""
    model = tiny_model(seed=seed).eval()
    with torch.no_grad():
        model.decoder.fc_hidden.weight.mul_(scale)
        model.decoder.fc_out.bias[model.decoder.dictionary.eos()] = eos_bias
    return model


def prefixes(dictionary, lengths, seed):
    """Right-padded word prefixes (no </s>), as language_modeling's inference_step passes them."""
    g = torch.Generator().manual_seed(seed)
    sents = [torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=g)
             for n in lengths]
    return data_utils.collate_tokens(sents, dictionary.pad(), left_pad=False)


def test_beam_1_equals_greedy():
    model = peaked_model(seed=7, eos_bias=3.5)
    d = model.decoder.dictionary
    prefix = prefixes(d, lengths=(3, 1, 5, 2, 4), seed=6)
    max_len = 12
    with torch.no_grad():
        hypos = lm_generate(model, prefix, beam=1, max_len_a=0, max_len_b=max_len)
        expected = greedy(model, prefix, max_len, prefix_tokens=prefix)
    lengths, free_words = set(), 0
    for i, (h, (tokens, scores)) in enumerate(zip(hypos, expected)):
        assert len(h) == 1
        assert h[0]["tokens"].tolist() == tokens.tolist()
        n = int(prefix[i].ne(d.pad()).sum())
        assert h[0]["tokens"][:n].tolist() == prefix[i, :n].tolist()
        torch.testing.assert_close(h[0]["positional_scores"], scores, atol=1e-5, rtol=0)
        lengths.add(len(tokens))
        free_words += len(tokens) - n - 1
    assert len(lengths) > 1  # not all forced to max_len: eos was chosen freely
    assert free_words > 0  # and words too, after the prefixes


def test_beam_search_batch_equals_each_prefix_alone():
    """Beams diverge and reorder, and sentences finish at different steps (the batch shrinks):
    every hypothesis and score must be the one found for the prefix decoded alone."""
    model = peaked_model(seed=7, eos_bias=3.5)
    d = model.decoder.dictionary
    prefix = prefixes(d, lengths=(3, 1, 5, 2, 4), seed=6)
    kwargs = dict(beam=4, max_len_a=0, max_len_b=10)
    with torch.no_grad():
        batch = lm_generate(model, prefix, **kwargs)
        n_diverged = 0
        for i in range(prefix.size(0)):
            n = int(prefix[i].ne(d.pad()).sum())
            alone = lm_generate(model, prefix[i : i + 1, :n], **kwargs)[0]
            assert len(batch[i]) == 4
            assert [h["tokens"].tolist() for h in batch[i]] == [h["tokens"].tolist() for h in alone]
            for hb, ha in zip(batch[i], alone):
                assert hb["tokens"][:n].tolist() == prefix[i, :n].tolist()
                torch.testing.assert_close(hb["positional_scores"], ha["positional_scores"],
                                           atol=1e-5, rtol=0)
            n_diverged += len({tuple(h["tokens"][: n + 1].tolist()) for h in alone}) > 1
    assert n_diverged > 0
    assert len({len(h[0]["tokens"]) for h in batch}) > 1  # sentences ended at different steps


# ---------------------------------------------------------------- fairseq command line


@pytest.fixture(scope="module")
def lm_bin(tmp_path_factory):
    return preprocess_lm(make_lm_data(tmp_path_factory.mktemp("skd_lstm_lm")))


TRAIN = [*LM_TASK, "--arch", "skd_lstm_lm_tiny", "--optimizer", "adam", "--lr", 0.01,
         "--max-tokens", 400, "--required-batch-size-multiple", 1, "--no-epoch-checkpoints"]


# the sentences of helpers.make_lm_data
_SUBJECT = "(the cat|the dog|a cat|a dog|my friend|the teacher)"
_VERB = "(sees|likes|watches|finds)"
_OBJECT = "(the ball|a ball|the house|a toy|the garden|a bird)"
GRAMMAR = re.compile(f"{_SUBJECT} {_VERB} {_OBJECT}( and {_VERB} {_OBJECT})?")


def tokens_of(path):
    """Words of a text file, one sentence a line, each line ending in </s>."""
    return [w for line in path.read_text().splitlines() for w in line.split() + ["</s>"]]


def unigram_bits(data_dir):
    """Cross-entropy (bits per token) of valid.txt under train.txt's add-one unigram."""
    counts = collections.Counter(tokens_of(data_dir / "train.txt"))
    valid = tokens_of(data_dir / "valid.txt")
    total, vocab = sum(counts.values()), len(counts) + 1
    return -sum(math.log2((counts[w] + 1) / (total + vocab)) for w in valid) / len(valid)


def test_learns_the_grammar(lm_bin, tmp_path):
    proc = train(lm_bin, tmp_path, *TRAIN, "--criterion", "cross_entropy", "--max-epoch", 6)
    valid = parse_json_logs(proc.stdout + proc.stderr, "valid")
    assert len(valid) == 6
    losses = [float(r["valid_loss"]) for r in valid]
    unigram = unigram_bits(lm_bin.parent)
    # the grammar's words are far from independent: the LSTM must beat the unigram clearly
    # (unigram ~3.6 bits; the grammar's own entropy is ~2 bits per token)
    assert losses[-1] < unigram - 1.0, (losses, unigram)
    assert losses[-1] < losses[0]

    # fairseq-generate continues each test sentence's first two words (incremental state,
    # beam search): the continuations follow the grammar
    gen = run("fairseq-generate", lm_bin, "--user-dir", USER_DIR, *LM_TASK,
              "--path", tmp_path / "checkpoint_best.pt", "--gen-subset", "test", "--beam", 3,
              "--prefix-size", 2, "--max-len-a", 0, "--max-len-b", 10, "--batch-size", 16,
              "--required-batch-size-multiple", 1, "--cpu", "--num-workers", 0)
    out = gen.stdout + gen.stderr
    sources = dict(re.findall(r"^S-(\d+)\t(.*)$", out, flags=re.M))
    hypotheses = dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, flags=re.M))
    assert len(sources) == len(hypotheses) == 40
    grammatical = 0
    for i, hyp in hypotheses.items():
        assert hyp.split()[:2] == sources[i].split()[:2]
        grammatical += GRAMMAR.fullmatch(hyp) is not None
    assert grammatical >= 36, out[-3000:]


def test_skd_criterion_train_then_eval_lm(lm_bin, tmp_path):
    proc = train(lm_bin, tmp_path, *TRAIN, "--criterion", "self_kd_cross_entropy",
                 "--skd-warmup-updates", 5, "--skd-alpha-step", 0.02, "--skd-sigma", SKD_SIGMA,
                 "--target-embed-noise", 0.05, "--label-smoothing", 0.1, "--max-epoch", 3)
    logs = parse_json_logs(proc.stdout + proc.stderr, "train_inner")
    assert logs and float(logs[-1]["skd_alpha"]) > 0
    assert all(math.isfinite(float(r["loss"])) for r in logs)
    # distances at the tiny preset's word dim (32) are about 8 > ln2 / sigma: q_n not always
    # clipped
    assert float(logs[-1]["skd_clip"]) < 0.9
    valid = parse_json_logs(proc.stdout + proc.stderr, "valid")[-1]
    # the plain NLL, not the training loss (label-smoothed, SKD's alpha > 0)
    assert valid["valid_loss"] == valid["valid_nll_loss"]

    test_tokens = len(tokens_of(lm_bin.parent / "test.txt"))
    ev = run("fairseq-eval-lm", lm_bin, "--user-dir", USER_DIR, "--path",
             tmp_path / "checkpoint_best.pt", "--gen-subset", "test", "--sample-break-mode", "eos",
             "--tokens-per-sample", 64, "--batch-size", 16, "--cpu", "--num-workers", 0)
    text = ev.stdout + ev.stderr
    evaluated = re.search(r"Evaluated (\d+) tokens", text)
    assert evaluated and int(evaluated.group(1)) == test_tokens, text[-2000:]
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", text).group(1))
    assert loss < unigram_bits(lm_bin.parent)


def test_bad_configuration_fails_before_training(lm_bin, tmp_path):
    proc = run("fairseq-train", lm_bin, "--user-dir", USER_DIR, "--save-dir", tmp_path, "--cpu",
               *TRAIN, "--share-decoder-input-output-embed", "--decoder-out-embed-dim", 16,
               "--max-epoch", 1, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "ValueError" in text
    for flag in ("--share-decoder-input-output-embed", "--decoder-embed-dim",
                 "--decoder-out-embed-dim"):
        assert flag in text
    assert not list(tmp_path.glob("*.pt"))
