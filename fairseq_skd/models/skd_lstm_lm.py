"""The paper's language model: one LSTM layer and one feed-forward layer with ReLU.

Hahn & Choi (2019), Section 4.2: "RNNLM is our baseline, which consists of a single LSTM layer
and single feed forward layer with ReLU (Le et al., 2015) ... The word dimension is set to 500
and the number of hidden nodes is 400". Registered as ``skd_lstm_lm``.

Structure, for the word y_{i-1} before position i:

    e_i        = E y_{i-1}                              (input word embedding, --decoder-embed-dim)
    s_i, c_i   = LSTM(e_i, (s_{i-1}, c_{i-1}))          (--decoder-hidden-size)
    h_i        = ReLU(F s_i + f)                        (to the word dim, --decoder-out-embed-dim)
    z_i        = W h_i + b,   p(y_i) = softmax(z_i)     (paper Eq. 6)

W [vocab x word dim] is the output word embedding SKD measures distances in;
``get_output_embedding_matrix()`` on the model and on the decoder returns it. With
``--share-decoder-input-output-embed`` E is W (off by default; needs --decoder-embed-dim equal to
--decoder-out-embed-dim, checked in ``build_model``). Dropout as in fairseq's ``lstm_lm``:
--decoder-dropout-in on e, --decoder-dropout-out on s and again on h (both default to --dropout).

The LSTM is the fused ``nn.LSTM`` for whole sequences and for single generation steps.
Padding tokens are not words: they never change the recurrent state, so a sentence gets the
same outputs alone or in a batch with right padding (what ``language_modeling`` gives) or with
left padding (moved to the right before the LSTM and the outputs moved back). In training a
right-padded batch runs straight through the LSTM (the outputs at real words only depend on
earlier words); with an incremental state, where the final state matters, rows are packed.
Generation keeps (s, c) in one cached dict, reordered with ``index_select(0, new_order)``
(``LSTMDecoderBase`` in modules/lstm_layers.py, which skd_bahdanau's decoder shares); the cost of
a step does not depend on the prefix length.

Initialisation (it matters for SKD; README.md, "Initialisation"): q_n =
exp(-sigma ||W_t - W_n||) is below the 0.5 clip only where the distance exceeds ln2 / sigma
(6.9 at the paper's sigma = 0.1). fairseq's ``lstm_lm`` initialises W uniformly in +-0.1, which
puts its rows 2-3 apart, so q_n is clipped almost everywhere. Here

- W's rows are N(0, std^2), std = ``--decoder-out-embed-std``: two rows are about
  std * sqrt(2 * dim) apart, and distances concentrate in high dimension (nearest neighbours
  among 10K words are 0.90 of that, the closest pair 0.83). The default std is 0.4: at the
  paper's word dim 500 rows start 12.6 apart (nearest neighbours ~11.5), so q_n starts near
  exp(-1.26) = 0.28, below the clip, and can rise past 0.5 as the words the model confuses come
  together (the paper's Fig. 3(a) and its "q_n = 0.4" example). Why not std 1 (31.6 apart)?
  Then q_n starts at 0.04, SKD is nearly off, and, because Adam moves every weight by about lr
  per update whatever its scale, W needs ~std / lr updates to move by its own spread before
  its geometry can say which words are alike. Measured on the synthetic corpus
  (fairseq_skd.data.synthetic, 69K tokens, Adam 1e-3, 700 tokens per batch, paper sizes,
  dropout 0.3, one seed): the nearest content word is a synonym for 15/94 words after 484
  updates and 24/94 after 968 with std 0.4, for 4/94 and 9/94 with std 1.0 (fairseq's lstm_lm:
  25/94 after 363, but rows 1.6-2 apart); validation loss 3.250 / 3.220 with std 0.4 against
  3.290 / 3.255 with std 1.0 (lstm_lm: 3.245 after 363 updates).
  The tiny preset (dim 32) uses std 1.0: rows 8.0 apart, still above 6.9.
- to keep the softmax trainable with such a W, the feed-forward layer F starts small: its
  weights are N(0, 2 / (hidden * dim)) and f = 0, so for LSTM outputs of RMS r each entry of h
  has RMS about r / sqrt(dim) (the 2 undoes ReLU's halving of the second moment), ||h|| is
  about r <= 1, and the logits z = W h have std about std * r <= std. The LSTM outputs start
  with r ~ 0.05, so the logits start near 0 (std 0.02 at the default preset, measured) and the
  loss near log(vocab), as with fairseq's init. tests/test_skd_lstm_lm.py measures both scales.
- b = 0; E, the LSTM and their biases get fairseq lstm's uniform(+-0.1) (padding row of E zero).
  When E is tied to W it has W's N(0, std^2) init (padding row zero, same scale as W), so the
  LSTM inputs have RMS std instead of ~0.06; the initial logits std is then ~0.05 (measured).

Presets: ``skd_lstm_lm`` (the paper's 500 / 400 / 500), ``skd_lstm_lm_tiny`` (32 / 64 / 32, no
dropout) for tests and CPU runs.
"""

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.models import FairseqLanguageModel, register_model, register_model_architecture
from fairseq.models.lstm import LSTM
from torch import Tensor

from ..modules.lstm_layers import (LSTMDecoderBase, ScaledLinear, add_dropout_arg, add_lstm_args,
                                   add_output_embedding_args, check_output_embedding_args,
                                   check_task, left_pad_index, set_defaults)

DEFAULT_MAX_TARGET_POSITIONS = 1e5


@register_model("skd_lstm_lm")
class SKDLSTMLanguageModel(FairseqLanguageModel):
    """One LSTM layer + a feed-forward layer with ReLU + softmax (the paper's RNNLM)."""

    @staticmethod
    def add_args(parser):
        """Add model-specific arguments to the parser."""
        # fmt: off
        add_lstm_args(parser, 'decoder', 'input word embeddings', 'LSTM hidden size',
                      'the LSTM outputs and on the feed-forward outputs')
        add_output_embedding_args(parser, 'the output h of the feed-forward ReLU layer')
        add_dropout_arg(parser, '--decoder-dropout-in/out')
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        """Build a new model instance."""
        # make sure all arguments are present in older models
        base_architecture(args)
        check_task("skd_lstm_lm", task, language_model=True)
        check_output_embedding_args(args)
        if getattr(args, "max_target_positions", None) is not None:
            max_target_positions = args.max_target_positions
        else:
            max_target_positions = getattr(args, "tokens_per_sample", DEFAULT_MAX_TARGET_POSITIONS)
        return cls(SKDLSTMDecoder(args, task.target_dictionary, max_target_positions))

    def get_output_embedding_matrix(self) -> nn.Parameter:
        """W, the [vocab x word dim] output word embedding (z = W h + b)."""
        return self.decoder.get_output_embedding_matrix()


class SKDLSTMDecoder(LSTMDecoderBase):
    """Embedding -> LSTM -> ReLU feed-forward -> W; incremental state (s, c) in one dict."""

    def __init__(self, args, dictionary, max_target_positions=DEFAULT_MAX_TARGET_POSITIONS):
        super().__init__(args, dictionary, max_target_positions)  # dropouts, E
        self.hidden_size = args.decoder_hidden_size
        self.lstm = LSTM(args.decoder_embed_dim, self.hidden_size, batch_first=True)
        # F, f: the feed-forward ReLU layer to the word dimension, started small (docstring)
        self.fc_hidden = FeedForward(self.hidden_size, args.decoder_out_embed_dim)
        self.fc_out = self.build_output_layer(args)  # W, b

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out=None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        **kwargs,
    ):
        """
        Args:
            prev_output_tokens: B x T previous words (right- or left-padded).
            incremental_state: the generation cache; when it holds a state, only the last
                column of ``prev_output_tokens`` is read.
        Returns:
            logits (B x T x vocab, or B x 1 x vocab for a cached step) and ``{"attn": [None]}``.
        """
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.output_layer(x), extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out=None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        **kwargs,
    ):
        """h (B x T x word dim), the input of the softmax layer, and ``{"attn": [None]}``."""
        cached = self.get_cached_state(incremental_state)
        if cached is not None:
            outputs, hidden, cell = self._step(prev_output_tokens[:, -1:], *cached)
        else:
            outputs, hidden, cell = self._run(
                prev_output_tokens, final_state=incremental_state is not None
            )
        self.set_cached_state(incremental_state, hidden, cell)
        x = self.dropout_out_module(outputs)
        x = self.dropout_out_module(F.relu(self.fc_hidden(x)))
        return x, {"attn": [None]}

    def _step(self, tokens: Tensor, hidden: Tensor, cell: Tensor):
        """One generation step from the cached (s, c), B x H each; a padding token keeps them."""
        x = self.dropout_in_module(self.embed_tokens(tokens))  # B x 1 x E
        outputs, (new_hidden, new_cell) = self.lstm(x, (hidden.unsqueeze(0), cell.unsqueeze(0)))
        new_hidden, new_cell = new_hidden.squeeze(0), new_cell.squeeze(0)
        is_pad = tokens.eq(self.padding_idx)  # B x 1; no .any(): no host sync per step
        return outputs, torch.where(is_pad, hidden, new_hidden), torch.where(is_pad, cell, new_cell)

    def _run(self, tokens: Tensor, final_state: bool):
        """LSTM over whole (padded) sequences from the zero state: outputs B x T x H and, when
        ``final_state``, the state after each row's last word (B x H each)."""
        bsz, seqlen = tokens.size()
        padding_mask = tokens.eq(self.padding_idx)
        left_padded = bool(padding_mask[:, 0].any())
        if left_padded:
            # the LSTM must start at each row's first word: move the padding to the right
            tokens = utils.convert_padding_direction(tokens, self.padding_idx, left_to_right=True)
        x = self.dropout_in_module(self.embed_tokens(tokens))  # B x T x E
        if final_state and bool(padding_mask.any()):
            lengths = (~padding_mask).sum(dim=1)
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
            )
            packed_out, (hidden, cell) = self.lstm(packed)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(
                packed_out, batch_first=True, total_length=seqlen
            )
            # rows of padding only (the first step of a left-padded batch) keep the zero state
            empty = lengths.eq(0).view(1, bsz, 1)
            hidden, cell = hidden.masked_fill(empty, 0.0), cell.masked_fill(empty, 0.0)
        else:
            # right padding: the outputs at words only depend on earlier words
            outputs, (hidden, cell) = self.lstm(x)
        if left_padded:
            outputs = outputs.gather(1, left_pad_index(padding_mask, outputs.size(-1)))
        return outputs, hidden.squeeze(0), cell.squeeze(0)


def FeedForward(in_features, out_features):
    """F, f of h = ReLU(F s + f), started small: N(0, 2 / (in * out)) weights, zero bias, so
    ||h|| is about the RMS of s and the logits W h stay O(1) next to an N(0, 1) W."""
    return ScaledLinear(in_features, out_features, (2.0 / (in_features * out_features)) ** 0.5)


@register_model_architecture("skd_lstm_lm", "skd_lstm_lm")
def base_architecture(args):
    """Hahn & Choi (2019), Section 4.2: word dimension 500, 400 hidden units."""
    set_defaults(args, dropout=0.1, decoder_embed_dim=500, decoder_hidden_size=400,
                 decoder_out_embed_dim=500, decoder_out_embed_std=0.4)
    set_defaults(args, decoder_dropout_in=args.dropout, decoder_dropout_out=args.dropout,
                 share_decoder_input_output_embed=False)


@register_model_architecture("skd_lstm_lm", "skd_lstm_lm_tiny")
def skd_lstm_lm_tiny(args):
    # W's rows 8.0 apart at dim 32 (std 0.4 would give 3.2, below ln2 / sigma = 6.9)
    set_defaults(args, dropout=0.0, decoder_embed_dim=32, decoder_hidden_size=64,
                 decoder_out_embed_dim=32, decoder_out_embed_std=1.0)
    base_architecture(args)
