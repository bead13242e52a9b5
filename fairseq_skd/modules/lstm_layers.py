"""Layers and initialisers shared by the paper's two LSTM models (skd_lstm_lm, skd_bahdanau),
with their flags and checks: those of one LSTM (``add_lstm_args``) and of the output word
embeddings W (``add_output_embedding_args``, ``check_output_embedding_args``).

The layers with fairseq lstm's init (uniform(+-0.1), the padding row of an embedding zero) are
fairseq's own: the models import ``Embedding``, ``LSTM``, ``LSTMCell`` and ``Linear`` from
fairseq.models.lstm, as fairseq's lstm_lm does.
"""

import torch
from torch import nn


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


def left_pad_index(padding_mask, dim):
    """Gather index (B x T x dim) that moves right-padded rows back to left padding: position
    p of a row with k pads reads right-padded position (p - k) mod T (a pad position for p < k).
    The inverse of fairseq's utils.convert_padding_direction(left_to_right=True)."""
    seqlen = padding_mask.size(1)
    positions = torch.arange(seqlen, device=padding_mask.device).expand_as(padding_mask)
    num_pads = padding_mask.long().sum(dim=1, keepdim=True)
    index = torch.remainder(positions - num_pads, seqlen)
    return index.unsqueeze(-1).expand(-1, -1, dim)


def init_output_embedding_(weight, std):
    """N(0, std^2) rows of W: two rows are about std * sqrt(2 * dim) apart, which is what makes
    the paper's sigma meaningful (README, "Initialisation")."""
    with torch.no_grad():
        weight.normal_(0.0, std)
    return weight


def OutputEmbedding(num_embeddings, embedding_dim, padding_idx, std):
    """An input embedding that is also W (tied): W's init, padding row zero."""
    m = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
    init_output_embedding_(m.weight, std)
    nn.init.constant_(m.weight[padding_idx], 0)
    return m
