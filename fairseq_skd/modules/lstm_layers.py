"""Layers and initialisers shared by the paper's two LSTM models (skd_lstm_lm, skd_bahdanau)."""

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


def Embedding(num_embeddings, embedding_dim, padding_idx):
    """fairseq lstm's input embedding: uniform(+-0.1), padding row zero."""
    m = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
    nn.init.uniform_(m.weight, -0.1, 0.1)
    nn.init.constant_(m.weight[padding_idx], 0)
    return m


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


def LSTM(input_size, hidden_size, **kwargs):
    """A batch-first nn.LSTM with fairseq lstm's init: every weight and bias uniform(+-0.1)."""
    m = nn.LSTM(input_size, hidden_size, batch_first=True, **kwargs)
    for param in m.parameters():
        param.data.uniform_(-0.1, 0.1)
    return m
