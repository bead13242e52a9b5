"""The paper's NMT model: Bahdanau et al. (2015) attention encoder-decoder with LSTM for GRU.

Hahn & Choi (2019), Section 4.2: "Attention-based NMT ... (Bahdanau et al., 2015), which is our
baseline in this paper except for replacing GRU with LSTM". Registered as ``skd_bahdanau``.

Structure (Bahdanau et al. 2015, Appendix A, with LSTM cells):

- encoder: source embeddings -> one bidirectional LSTM over packed sequences; the annotation
  of word j is h_j = [fwd_j; bwd_j]. Left- and right-padded input both work, and annotations
  (hence attention weights and --print-alignment) keep the input's positions. (fairseq's
  ``lstm``, read from its code, attends over right-padded positions even for its default
  left-padded source, which would shift its printed alignments by the number of pads.)
  The encoder also returns U_a h_j + b_a, the attention keys, computed ONCE per sentence
  (that is why U_a lives in the encoder), and the backward state at the first word.
- decoder initial state: [s_0; m_0] = tanh(W_s bwd_1 + b_s) (Bahdanau's s_0 = tanh(W_s bwd_1);
  an LSTM also needs a memory cell m_0, taken from the same projection).
- decoder step i (prefix-length-independent cost):
      e_ij  = v^T tanh(W_a s_{i-1} + U_a h_j)      (padding masked with -inf, in float32)
      a_ij  = softmax_j(e_ij),  c_i = sum_j a_ij h_j   (``additive_attention``)
      s_i   = LSTM([E y_{i-1}; c_i], (s_{i-1}, m_{i-1}))  (``SplitInputLSTMCell``)
      t_i   = maxout_2(U_o s_i + V_o E y_{i-1} + C_o c_i)       (deep output, pool size 2)
      z_i   = W t_i + b,   p(y_i) = softmax(z_i)
  (Bahdanau's readout reads s_{i-1}; we read the new state s_i, as dl4mt/Nematus do, so the
  readout sees the LSTM step that consumed c_i.)  W [vocab x readout dim] is the output word
  embedding that SKD measures distances in; ``get_output_embedding_matrix()`` returns it.
- teacher-forced training runs the recurrence step by step (attention depends on s_{i-1}), but
  everything that does not depend on the recurrence (the embedding part of the LSTM input
  projection, ``SplitInputLSTMCell.input_gates``, the readout, the softmax) is computed for all
  positions at once.
- incremental decoding keeps (s, m) in one cached dict; ``reorder_incremental_state`` and
  ``reorder_encoder_out`` index_select(0, new_order) (all tensors are batch-first). The cache,
  E, W and b are those of ``LSTMDecoderBase`` (modules/lstm_layers.py), shared with skd_lstm_lm.
- the extra output is ``{"attn": [A]}`` with A of shape B x T_tgt x T_src (fairseq's
  transformer convention; SequenceGenerator, --print-alignment and SequenceScorer read it),
  given in eval mode while ``need_attn`` (fairseq-generate sets it for --print-alignment).

Initialisation (it matters for SKD; README.md, "Initialisation"): q_n =
exp(-sigma ||W_t - W_n||) is below the 0.5 clip only where the distance exceeds ln2 / sigma
(6.9 at the paper's sigma = 0.1). fairseq's uniform(+-0.1) init puts rows of W 2-3 apart, so
q_n is clipped almost everywhere. Here

- W's rows are N(0, std^2) with std = ``--decoder-out-embed-std`` (default 1.0), so two rows are
  about std * sqrt(2 * dim) apart. Measured at init (300 words): median distance 31.7 and
  median nearest-neighbour distance 29.2 for ``skd_bahdanau`` (readout dim 500), 22.5 / 20.0
  for ``skd_bahdanau_small`` (256), 7.9 / 5.5 for ``skd_bahdanau_tiny`` (32, a test size);
- to keep the softmax sane with such a W, the readout (U_o, V_o, C_o) starts small: its weights
  are N(0, 1 / (fan_in * out_dim)), so for inputs of RMS <= 1 each entry of t has RMS about
  1/sqrt(out_dim), ||t|| about 1, and the logits z = W t have std about std * ||t|| <= 1.
  The LSTM states and annotations are well below RMS 1, so measured logit std at init is 0.08
  (skd_bahdanau), 0.05 (small), 0.04 (tiny): the initial loss is log V to 3 decimals.
  tests/test_skd_bahdanau_nmt.py checks both scales for the default preset.
- when W is tied to the decoder input embeddings (--share-decoder-input-output-embed or
  --share-all-embeddings) the shared matrix gets W's init; other embeddings, the LSTMs, the
  attention and the initial-state projection use fairseq lstm's uniform(+-0.1); biases of the
  readout and of W are zero.

Presets: ``skd_bahdanau`` (Bahdanau's sizes: embeddings 620, hidden 1000 per direction and in
the decoder, alignment dim 1000, readout 500), ``skd_bahdanau_small`` (256/256/256/256) and
``skd_bahdanau_tiny`` (32/64/64/32, no dropout) for tests and CPU runs.
"""

from typing import Dict, Optional

import torch
import torch.nn as nn
from fairseq import utils
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    register_model,
    register_model_architecture,
)
from fairseq.models.lstm import LSTM, Embedding, Linear
from fairseq.modules import FairseqDropout
from torch import Tensor

from ..modules.additive_attention import additive_attention
from ..modules.lstm_layers import (DecoderEmbedding, LSTMDecoderBase, ScaledLinear,
                                   SplitInputLSTMCell, add_dropout_arg, add_lstm_args,
                                   add_output_embedding_args,
                                   check_output_embedding_args, check_task, left_pad_index,
                                   set_defaults, shares_output_embedding)

DEFAULT_MAX_SOURCE_POSITIONS = 1e5
DEFAULT_MAX_TARGET_POSITIONS = 1e5


@register_model("skd_bahdanau")
class SKDBahdanauModel(FairseqEncoderDecoderModel):
    """Bahdanau et al. (2015) attention NMT with LSTM cells (the paper's NMT baseline)."""

    @staticmethod
    def add_args(parser):
        """Add model-specific arguments to the parser."""
        # fmt: off
        add_lstm_args(parser, 'encoder', 'source word embeddings',
                      'encoder LSTM size per direction (annotations are twice this)',
                      'the encoder annotations')
        add_lstm_args(parser, 'decoder', 'target (decoder input) word embeddings',
                      'decoder LSTM size', 'the decoder LSTM outputs s_i (readout input)')
        parser.add_argument('--decoder-attention-dim', type=int, metavar='N',
                            help="hidden size of the additive attention (Bahdanau's n')")
        add_output_embedding_args(parser, 'the readout t after maxout')
        parser.add_argument('--share-all-embeddings', action='store_true',
                            help='share source, target and output embeddings (needs a joined '
                                 'dictionary and equal --encoder-embed-dim, --decoder-embed-dim '
                                 'and --decoder-out-embed-dim)')
        parser.add_argument('--decoder-dropout-readout', type=float, metavar='D',
                            help='dropout on the readout t_i (softmax input)')
        add_dropout_arg(parser, 'every --*-dropout-* flag')
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        """Build a new model instance."""
        base_architecture(args)
        check_task("skd_bahdanau", task, language_model=False)
        check_embedding_sharing(args, task.source_dictionary, task.target_dictionary)
        max_source_positions = getattr(args, "max_source_positions", DEFAULT_MAX_SOURCE_POSITIONS)
        max_target_positions = getattr(args, "max_target_positions", DEFAULT_MAX_TARGET_POSITIONS)
        # E is built first when it is W: the encoder may share it (--share-all-embeddings)
        decoder_embed = None
        if shares_output_embedding(args):
            decoder_embed = DecoderEmbedding(args, task.target_dictionary)
        encoder = SKDBahdanauEncoder(
            args,
            task.source_dictionary,
            max_source_positions,
            embed_tokens=decoder_embed if args.share_all_embeddings else None,
        )
        decoder = SKDBahdanauDecoder(
            args, task.target_dictionary, encoder.output_units, max_target_positions, decoder_embed
        )
        return cls(encoder, decoder)

    def get_output_embedding_matrix(self) -> nn.Parameter:
        """W, the [vocab x readout dim] output word embedding (z = W t + b)."""
        return self.decoder.get_output_embedding_matrix()


def check_embedding_sharing(args, src_dict, tgt_dict) -> None:
    """Raise ValueError naming the flags when the embedding-sharing options cannot hold."""
    if args.share_all_embeddings:
        if src_dict != tgt_dict:
            raise ValueError(
                "--share-all-embeddings requires a joined source/target dictionary "
                "(fairseq-preprocess --joined-dictionary); the dictionaries differ"
            )
        dims = (args.encoder_embed_dim, args.decoder_embed_dim, args.decoder_out_embed_dim)
        if len(set(dims)) != 1:
            raise ValueError(
                "--share-all-embeddings requires --encoder-embed-dim, --decoder-embed-dim and "
                "--decoder-out-embed-dim to be equal, got {}, {} and {}".format(*dims)
            )
    check_output_embedding_args(args)


class SKDBahdanauEncoder(FairseqEncoder):
    """Bidirectional LSTM encoder; also computes the attention keys U_a h_j + b_a once."""

    def __init__(
        self,
        args,
        dictionary,
        max_source_positions=DEFAULT_MAX_SOURCE_POSITIONS,
        embed_tokens=None,
    ):
        super().__init__(dictionary)
        self.padding_idx = dictionary.pad()
        self.max_source_positions = max_source_positions
        # the layers in the order they run
        if embed_tokens is None:
            embed_tokens = Embedding(len(dictionary), args.encoder_embed_dim, self.padding_idx)
        self.embed_tokens = embed_tokens
        self.dropout_in_module = FairseqDropout(
            args.encoder_dropout_in, module_name=self.__class__.__name__
        )
        self.hidden_size = args.encoder_hidden_size
        self.output_units = 2 * self.hidden_size
        self.lstm = LSTM(
            args.encoder_embed_dim, self.hidden_size, batch_first=True, bidirectional=True
        )
        self.dropout_out_module = FairseqDropout(
            args.encoder_dropout_out, module_name=self.__class__.__name__
        )
        # U_a (with the attention's bias b_a): applied once per sentence, not per decoder step.
        self.attention_key_proj = Linear(self.output_units, args.decoder_attention_dim)

    def forward(self, src_tokens: Tensor, src_lengths: Tensor):
        """
        Args:
            src_tokens: B x T source tokens, left- or right-padded.
            src_lengths: B lengths.
        Returns:
            a dict of batch-first tensors: ``annotations`` (B x T x 2H, zero at padding),
            ``attention_keys`` (B x T x A, U_a h_j + b_a), ``padding_mask`` (B x T, True at
            padding) and ``backward_first`` (B x H, the backward LSTM state at the first word).
        """
        padding_mask = src_tokens.eq(self.padding_idx)
        left_padded = bool(padding_mask[:, 0].any())
        if left_padded:
            # pack_padded_sequence wants right padding
            src_tokens = utils.convert_padding_direction(
                src_tokens, self.padding_idx, left_to_right=True
            )
        bsz, seqlen = src_tokens.size()
        x = self.dropout_in_module(self.embed_tokens(src_tokens))
        packed = nn.utils.rnn.pack_padded_sequence(
            x, src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_out, (final_hiddens, _) = self.lstm(packed)
        annotations, _ = nn.utils.rnn.pad_packed_sequence(
            packed_out, batch_first=True, total_length=seqlen
        )
        if left_padded:
            # back to the caller's positions, so attention weights (and --print-alignment)
            # index the source tokens as given
            annotations = annotations.gather(1, left_pad_index(padding_mask, annotations.size(-1)))
        annotations = self.dropout_out_module(annotations)
        return {
            "annotations": annotations,
            "attention_keys": self.attention_key_proj(annotations),
            "padding_mask": padding_mask,
            # the backward direction ends at the first word: Bahdanau's bwd_1
            "backward_first": final_hiddens[1],
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, Tensor], new_order: Tensor):
        return {key: value.index_select(0, new_order) for key, value in encoder_out.items()}

    def max_positions(self):
        """Maximum input length supported by the encoder."""
        return self.max_source_positions


class SKDBahdanauDecoder(LSTMDecoderBase):
    """LSTM decoder with additive attention and a maxout deep-output readout."""

    def __init__(
        self,
        args,
        dictionary,
        encoder_output_units,
        max_target_positions=DEFAULT_MAX_TARGET_POSITIONS,
        embed_tokens=None,
    ):
        super().__init__(args, dictionary, max_target_positions, embed_tokens)  # dropouts, E
        embed_dim = args.decoder_embed_dim
        self.hidden_size = hidden_size = args.decoder_hidden_size
        self.encoder_output_units = encoder_output_units
        self.out_embed_dim = args.decoder_out_embed_dim
        self.need_attn = True
        self.dropout_readout_module = FairseqDropout(
            args.decoder_dropout_readout, module_name=self.__class__.__name__
        )
        attention_dim = args.decoder_attention_dim

        # [s_0; m_0] = tanh(W_s bwd_1 + b_s)
        self.init_state_proj = Linear(args.encoder_hidden_size, 2 * hidden_size)
        # W_a (the bias b_a is in the encoder's U_a) and v
        self.attention_query_proj = Linear(hidden_size, attention_dim, bias=False)
        self.attention_v = nn.Parameter(torch.empty(attention_dim).uniform_(-0.1, 0.1))
        # input [E y_{i-1}; c_i]: E y_{i-1} is known before the loop, c_i computed at step i
        self.rnn = SplitInputLSTMCell(embed_dim, encoder_output_units, hidden_size)
        # U_o, V_o, C_o as one projection of [s_i; E y_{i-1}; c_i] to 2 * readout (maxout pairs)
        self.readout = ReadoutLinear(
            hidden_size + embed_dim + encoder_output_units, self.out_embed_dim
        )
        self.fc_out = self.build_output_layer(args)  # W, b

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, Tensor]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        src_lengths: Optional[Tensor] = None,
    ):
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.output_layer(x), extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, Tensor]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
    ):
        """Readout t (B x T_tgt x readout dim) and ``{"attn": [B x T_tgt x T_src or None]}``."""
        assert encoder_out is not None, "skd_bahdanau's decoder needs the encoder output"
        cached = self.get_cached_state(incremental_state)
        if cached is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
            hidden, cell = cached
        else:
            init = torch.tanh(self.init_state_proj(encoder_out["backward_first"]))
            hidden, cell = init.chunk(2, dim=-1)

        annotations = encoder_out["annotations"]  # B x S x C
        keys = encoder_out["attention_keys"]  # B x S x A
        padding_mask = encoder_out["padding_mask"]  # B x S

        emb = self.dropout_in_module(self.embed_tokens(prev_output_tokens))  # B x T x E
        bsz, seqlen = prev_output_tokens.size()
        # the embedding part of the LSTM input projection, for all steps at once; unbind, not
        # emb_gates[i]: the backward of T selects would fill T full-size zero grads
        emb_gates = self.rnn.input_gates(emb).unbind(1)
        step_weight = self.rnn.step_weight()

        hiddens, contexts, alphas = [], [], []
        for i in range(seqlen):
            context, alpha = additive_attention(
                self.attention_query_proj(hidden), keys, self.attention_v, annotations, padding_mask
            )
            hidden, cell = self.rnn.step(emb_gates[i], context, (hidden, cell), step_weight)
            hiddens.append(hidden)
            contexts.append(context)
            alphas.append(alpha)

        self.set_cached_state(incremental_state, hidden, cell)

        states = self.dropout_out_module(torch.stack(hiddens, dim=1))  # B x T x H
        readout = self.readout(torch.cat([states, emb, torch.stack(contexts, dim=1)], dim=-1))
        readout = readout.view(bsz, seqlen, self.out_embed_dim, 2).max(dim=-1)[0]  # maxout
        readout = self.dropout_readout_module(readout)

        attn: Optional[Tensor] = None
        if not self.training and self.need_attn:
            attn = torch.stack(alphas, dim=1)  # B x T_tgt x T_src
        return readout, {"attn": [attn]}

    def make_generation_fast_(self, need_attn=False, **kwargs):
        self.need_attn = need_attn


def ReadoutLinear(in_features, out_features):
    """U_o, V_o, C_o to 2 * out_features maxout inputs, started small so that ||t|| is about 1
    for inputs of RMS 1 and the logits W t stay O(1) next to an N(0, 1) W (module docstring)."""
    return ScaledLinear(in_features, 2 * out_features, (in_features * out_features) ** -0.5)


@register_model_architecture("skd_bahdanau", "skd_bahdanau")
def base_architecture(args):
    """Bahdanau et al. (2015) RNNsearch sizes: m = 620, n = n' = 1000, l = 500."""
    set_defaults(args, dropout=0.1, encoder_embed_dim=620, encoder_hidden_size=1000,
                 decoder_embed_dim=620, decoder_hidden_size=1000)
    set_defaults(args, decoder_attention_dim=args.decoder_hidden_size,
                 decoder_out_embed_dim=500, decoder_out_embed_std=1.0,
                 share_decoder_input_output_embed=False, share_all_embeddings=False,
                 encoder_dropout_in=args.dropout, encoder_dropout_out=args.dropout,
                 decoder_dropout_in=args.dropout, decoder_dropout_out=args.dropout,
                 decoder_dropout_readout=args.dropout)


@register_model_architecture("skd_bahdanau", "skd_bahdanau_small")
def skd_bahdanau_small(args):
    set_defaults(args, encoder_embed_dim=256, encoder_hidden_size=256, decoder_embed_dim=256,
                 decoder_hidden_size=256, decoder_out_embed_dim=256)
    base_architecture(args)


@register_model_architecture("skd_bahdanau", "skd_bahdanau_tiny")
def skd_bahdanau_tiny(args):
    set_defaults(args, dropout=0.0, encoder_embed_dim=32, encoder_hidden_size=64,
                 decoder_embed_dim=32, decoder_hidden_size=64, decoder_out_embed_dim=32)
    base_architecture(args)
