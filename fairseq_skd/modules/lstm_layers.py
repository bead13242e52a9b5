"""Layers and initialisers shared by the paper's two LSTM models (skd_lstm_lm, skd_bahdanau).

The layers with fairseq lstm's init (uniform(+-0.1), the padding row of an embedding zero) are
fairseq's own: the models import ``Embedding``, ``LSTM``, ``LSTMCell`` and ``Linear`` from
fairseq.models.lstm, as fairseq's lstm_lm does.
"""

import torch
from torch import nn


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
