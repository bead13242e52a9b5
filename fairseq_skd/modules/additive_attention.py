"""Bahdanau et al.'s (2015) additive attention, one decoder step of it (skd_bahdanau).

    alpha_j = softmax_j(v^T tanh(W_a s + U_a h_j + b_a))   over the j that are not padding,
    context = sum_j alpha_j h_j

for a decoder state s over the annotations h_j of a source sentence. The projections are the
callers': the encoder computes the keys U_a h_j + b_a once per sentence, the decoder the query
W_a s at each step, so W_a, v, U_a and b_a stay the models' parameters under the names that
checkpoints hold.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def additive_attention(
    query: Tensor, keys: Tensor, v: Tensor, annotations: Tensor, padding_mask: Tensor
) -> Tuple[Tensor, Tensor]:
    """The context (B x C) and the attention weights alpha (B x S) for the query W_a s (B x A),
    the keys U_a h_j + b_a (B x S x A), v (A), the annotations h (B x S x C) and the padding
    mask (B x S, True at padding)."""
    # tanh as written: the form 2 v^T sigmoid(2 z) - sum(v), which the softmax cannot tell
    # apart, is slower with torch 2.13 on CPU (sigmoid is no faster than tanh, and the factor 2
    # costs a pass over B x S x A per call, that is per step in beam search)
    scores = torch.matmul(torch.tanh_(keys + query.unsqueeze(1)), v)  # B x S
    # FP16 support: mask and normalise in float, cast back
    alpha = F.softmax(
        scores.float().masked_fill(padding_mask, float("-inf")), dim=-1
    ).type_as(scores)
    context = torch.bmm(alpha.unsqueeze(1), annotations).squeeze(1)
    return context, alpha
