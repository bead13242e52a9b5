"""The layers of the paper's two LSTM models (skd_lstm_lm, skd_bahdanau), with their flags.

fairseq's models/lstm.py already has the layers with fairseq lstm's init (uniform(+-0.1), the
padding row of an embedding zero): the models import ``Embedding``, ``LSTM`` and ``Linear``
from there, as fairseq's own lstm_lm does. What is SKD's own lives here:

- the output word embeddings W, the softmax layer z = W x + b that SKD measures distances in:
  their flags (``add_output_embedding_args``), checks (``check_output_embedding_args``) and
  initialisation (``init_output_embedding_``; the models' module docstrings say why), and
  ``ScaledLinear`` for the layers that feed W, started small;
- ``LSTMDecoderBase``: what both decoders own, E, W, b, the dropouts on E and on the LSTM
  outputs, and the recurrent state of incremental decoding in one cached dict;
- the flags of one LSTM (``add_lstm_args``) and ``left_pad_index`` for the models' LSTMs, which
  run over right-padded rows;
- ``SplitInputLSTMCell``, skd_bahdanau's decoder cell: nn.LSTMCell with the part of its input
  that is known before the loop (the previous words) projected for all steps at once;
- ``set_defaults``, fairseq's ``args.x = getattr(args, "x", default)`` for a preset's table of
  defaults.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models import FairseqIncrementalDecoder
from fairseq.models.lstm import Embedding
from fairseq.modules import FairseqDropout
from torch import Tensor, nn


def add_lstm_args(parser, side, embeddings, hidden, outputs):
    """The flags of one LSTM, with fairseq lstm's names: --{side}-embed-dim and
    --{side}-dropout-in of its input ``embeddings``, --{side}-hidden-size (help text ``hidden``)
    and --{side}-dropout-out on its ``outputs``."""
    # fmt: off
    parser.add_argument(f'--{side}-embed-dim', type=int, metavar='N',
                        help=f'dimension of the {embeddings}')
    parser.add_argument(f'--{side}-hidden-size', type=int, metavar='N', help=hidden)
    parser.add_argument(f'--{side}-dropout-in', type=float, metavar='D',
                        help=f'dropout on the {embeddings}')
    parser.add_argument(f'--{side}-dropout-out', type=float, metavar='D',
                        help=f'dropout on {outputs}')
    # fmt: on


def add_dropout_arg(parser, flags):
    """--dropout, fairseq lstm's: the default of the dropout ``flags``."""
    parser.add_argument('--dropout', type=float, metavar='D',
                        help=f'dropout probability (default of {flags})')


def add_output_embedding_args(parser, features):
    """The flags of W, the softmax layer z = W x + b, whose input x is ``features``."""
    # fmt: off
    parser.add_argument('--decoder-out-embed-dim', type=int, metavar='N',
                        help='dimension of the output word embeddings W (the softmax layer '
                             f'z = W x + b) and of its input x, {features}')
    parser.add_argument('--decoder-out-embed-std', type=float, metavar='S',
                        help='std of the N(0, S^2) init of W; rows start about '
                             'S * sqrt(2 * dim) apart (README, "Initialisation")')
    parser.add_argument('--share-decoder-input-output-embed', action='store_true',
                        help='tie the decoder input word embeddings to W (needs '
                             '--decoder-embed-dim == --decoder-out-embed-dim)')
    # fmt: on


def set_defaults(args, **defaults) -> None:
    """``args.name = getattr(args, "name", value)`` for each ``name=value``, in order: what a
    fairseq architecture preset does for each of its flags (a value given, on the command line
    or by a preset that ran first, stays). A default computed from another flag
    (``decoder_dropout_in=args.dropout``) goes in a later call than the one that sets that flag."""
    for name, value in defaults.items():
        setattr(args, name, getattr(args, name, value))


def check_task(model_name, task, language_model):
    """A checkpoint given to a tool of the other task (an LM to fairseq-generate's translation
    task, a translation model to fairseq-eval-lm) builds without complaint and produces
    garbage: refuse it, naming the task to use."""
    from fairseq.tasks.language_modeling import LanguageModelingTask
    from fairseq.tasks.translation import TranslationTask

    wrong = TranslationTask if language_model else LanguageModelingTask
    if isinstance(task, wrong):
        right = "language_modeling" if language_model else "translation"
        raise ValueError(f"{model_name} is a {'language' if language_model else 'translation'} "
                         f"model and the task is {type(task).__name__}: use it with --task {right}")


def check_output_embedding_args(args) -> None:
    """Raise ValueError naming the flags when W's options cannot hold."""
    if not args.decoder_out_embed_std > 0:
        raise ValueError(
            f"--decoder-out-embed-std must be > 0, got {args.decoder_out_embed_std} (rows of W "
            "start about std * sqrt(2 * --decoder-out-embed-dim) apart)"
        )
    tied = args.share_decoder_input_output_embed
    if tied and args.decoder_embed_dim != args.decoder_out_embed_dim:
        raise ValueError(
            "--share-decoder-input-output-embed requires --decoder-embed-dim "
            f"({args.decoder_embed_dim}) to equal --decoder-out-embed-dim "
            f"({args.decoder_out_embed_dim}, the word dimension of W)"
        )


def shares_output_embedding(args) -> bool:
    """Whether the decoder's input word embeddings E are W: --share-decoder-input-output-embed,
    or --share-all-embeddings (skd_bahdanau), which ties the source embeddings to them too."""
    return args.share_decoder_input_output_embed or getattr(args, "share_all_embeddings", False)


def init_output_embedding_(weight, std):
    """N(0, std^2) rows of W: two rows are about std * sqrt(2 * dim) apart, which is what makes
    the paper's sigma meaningful (README, "Initialisation")."""
    with torch.no_grad():
        weight.normal_(0.0, std)
    return weight


def ScaledLinear(in_features, out_features, std):
    """A linear layer started at a chosen scale: N(0, std^2) weights, zero bias (the layers
    between the LSTM and W, started small so that the logits stay O(1) next to an N(0, 1) W)."""
    m = nn.Linear(in_features, out_features)
    nn.init.normal_(m.weight, 0.0, std)
    nn.init.zeros_(m.bias)
    return m


class SplitInputLSTMCell(nn.LSTMCell):
    """fairseq lstm's ``LSTMCell`` (an nn.LSTMCell with uniform(+-0.1) init; the same parameter
    names, so checkpoints of it load, and the same gates i, f, g, o) for an input [x_t; u_t] of
    which x_t is known for all steps before the loop (a decoder's previous-word embeddings) and
    u_t only at step t (an attention context).

    ``input_gates(x)`` applies x's columns of W_ih, and both biases, to every step in one
    matmul; ``step`` adds [u_t; h_{t-1}] times the other columns and W_hh in one matmul per step
    (their weight, ``step_weight()``, built once per sequence) and updates (h, c).
    """

    def __init__(self, known_input_size, step_input_size, hidden_size):
        super().__init__(known_input_size + step_input_size, hidden_size)
        self.known_input_size = known_input_size
        # fairseq lstm's init (after nn.LSTMCell's own, as fairseq's LSTMCell draws it)
        for param in self.parameters():
            nn.init.uniform_(param, -0.1, 0.1)

    def input_gates(self, x: Tensor) -> Tensor:
        """x's share of the gates, biases included: ... x known_input_size -> ... x 4H."""
        return F.linear(x, self.weight_ih[:, : self.known_input_size], self.bias_ih + self.bias_hh)

    def step_weight(self) -> Tensor:
        """[W_ih's u columns, W_hh]^T, (step_input_size + H) x 4H: ``step``'s weight."""
        return torch.cat([self.weight_ih[:, self.known_input_size :], self.weight_hh], dim=1).t()

    def step(
        self, x_gates: Tensor, u: Tensor, hx: Tuple[Tensor, Tensor], step_weight: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """(h_t, c_t) from x_t's gates (B x 4H, from ``input_gates``), u_t (B x step_input_size)
        and hx = (h_{t-1}, c_{t-1}): what ``self(torch.cat([x_t, u_t], 1), hx)`` gives."""
        hidden, cell = hx
        gates = torch.addmm(x_gates, torch.cat([u, hidden], dim=1), step_weight)
        in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
        hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
        return hidden, cell


def DecoderEmbedding(args, dictionary):
    """E, the decoder's input word embeddings (--decoder-embed-dim): fairseq lstm's init, or,
    when E is W (``shares_output_embedding``), W's init; the padding row zero."""
    num_embeddings, padding_idx = len(dictionary), dictionary.pad()
    if not shares_output_embedding(args):
        return Embedding(num_embeddings, args.decoder_embed_dim, padding_idx)
    m = nn.Embedding(num_embeddings, args.decoder_embed_dim, padding_idx=padding_idx)
    init_output_embedding_(m.weight, args.decoder_out_embed_std)
    nn.init.constant_(m.weight[padding_idx], 0)
    return m


class LSTMDecoderBase(FairseqIncrementalDecoder):
    """What both LSTM decoders own, built from the flags of ``add_lstm_args(parser, "decoder",
    ...)`` and ``add_output_embedding_args``:

    - the dropouts on E (--decoder-dropout-in) and on the LSTM outputs (--decoder-dropout-out);
    - E (``embed_tokens``), from ``DecoderEmbedding`` unless given (a shared one);
    - W, b of the softmax layer z = W x + b (``fc_out``), from ``build_output_layer``, which a
      subclass calls after building its other layers: parameters are drawn from the random
      generator in the order of the layers;
    - the recurrent state (s, c), B x H each, in one cached dict (``get_cached_state``,
      ``set_cached_state``), reordered with ``index_select(0, new_order)``.
    """

    def __init__(self, args, dictionary, max_target_positions, embed_tokens=None):
        super().__init__(dictionary)
        self.padding_idx = dictionary.pad()
        self.share_input_output_embed = shares_output_embedding(args)
        self.max_target_positions = max_target_positions
        self.dropout_in_module = FairseqDropout(
            args.decoder_dropout_in, module_name=self.__class__.__name__
        )
        self.dropout_out_module = FairseqDropout(
            args.decoder_dropout_out, module_name=self.__class__.__name__
        )
        if embed_tokens is None:
            embed_tokens = DecoderEmbedding(args, dictionary)
        self.embed_tokens = embed_tokens

    def build_output_layer(self, args) -> nn.Linear:
        """W, b: b = 0; W is E when they are shared, else its rows are N(0, std^2)."""
        fc_out = nn.Linear(args.decoder_out_embed_dim, len(self.dictionary))
        nn.init.zeros_(fc_out.bias)
        if self.share_input_output_embed:
            fc_out.weight = self.embed_tokens.weight
        else:
            init_output_embedding_(fc_out.weight, args.decoder_out_embed_std)
        return fc_out

    def get_output_embedding_matrix(self) -> nn.Parameter:
        """W, the [vocab x word dim] output word embedding (z = W x + b)."""
        return self.fc_out.weight

    def output_layer(self, features):
        """z = W x + b."""
        return self.fc_out(features)

    def get_cached_state(
        self, incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]]
    ) -> Optional[Tuple[Tensor, Tensor]]:
        """(s, c) after the last step, or None before the first one."""
        cached = self.get_incremental_state(incremental_state, "cached_state")
        if cached is None:
            return None
        hidden, cell = cached["hidden"], cached["cell"]
        assert hidden is not None and cell is not None
        return hidden, cell

    def set_cached_state(
        self,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]],
        hidden: Tensor,
        cell: Tensor,
    ):
        """Keep (s, c) for the next step (nothing without an incremental state)."""
        state: Dict[str, Optional[Tensor]] = {"hidden": hidden, "cell": cell}
        self.set_incremental_state(incremental_state, "cached_state", state)

    def reorder_incremental_state(
        self,
        incremental_state: Dict[str, Dict[str, Optional[Tensor]]],
        new_order: Tensor,
    ):
        cached = self.get_incremental_state(incremental_state, "cached_state")
        if cached is None:
            return
        reordered = {
            key: value.index_select(0, new_order) if value is not None else None
            for key, value in cached.items()
        }
        self.set_incremental_state(incremental_state, "cached_state", reordered)

    def max_positions(self):
        """Maximum output length supported by the decoder."""
        return self.max_target_positions


def left_pad_index(padding_mask, dim):
    """Gather index (B x T x dim) that moves right-padded rows back to left padding: position
    p of a row with k pads reads right-padded position (p - k) mod T (a pad position for p < k).
    The inverse of fairseq's utils.convert_padding_direction(left_to_right=True)."""
    seqlen = padding_mask.size(1)
    positions = torch.arange(seqlen, device=padding_mask.device).expand_as(padding_mask)
    num_pads = padding_mask.long().sum(dim=1, keepdim=True)
    index = torch.remainder(positions - num_pads, seqlen)
    return index.unsqueeze(-1).expand(-1, -1, dim)
