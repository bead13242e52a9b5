"""Find W, the output word-embedding matrix right below the softmax (z = Wh + b, paper Eq. 6).

SKD measures distances between rows of W. A model says where W is by defining
``get_output_embedding_matrix()`` (returning the [vocab x dim] weight); otherwise the fairseq
decoders we know are looked up: ``transformer``/``transformer_lm`` (``output_projection``) and
``lstm``/``lstm_lm`` (``fc_out``, or ``embed_tokens`` when input and output are shared).
"""

import torch
from torch import nn


class OutputEmbeddingNotFound(ValueError):
    pass


def find_output_embedding(model: nn.Module) -> torch.Tensor:
    """Return the [vocab x dim] output word-embedding weight of ``model`` (a Parameter)."""
    declared = getattr(model, "get_output_embedding_matrix", None)
    if callable(declared):
        return declared()
    decoder = getattr(model, "decoder", model)
    declared = getattr(decoder, "get_output_embedding_matrix", None)
    if callable(declared):
        return declared()

    name = type(model).__name__
    if getattr(decoder, "adaptive_softmax", None) is not None:
        raise OutputEmbeddingNotFound(
            f"self_kd_cross_entropy: {name} uses an adaptive softmax (--adaptive-softmax-cutoff), "
            "which has no single output word-embedding matrix to measure distances in; train "
            "it with a full softmax (drop --adaptive-softmax-cutoff) or use another criterion"
        )
    # fairseq transformer / transformer_lm: a Linear whose weight is the tied input embedding
    # when input and output embeddings are shared.
    projection = getattr(decoder, "output_projection", None)
    if isinstance(projection, nn.Linear):
        return projection.weight
    # fairseq lstm / lstm_lm
    if getattr(decoder, "share_input_output_embed", False) and isinstance(
        getattr(decoder, "embed_tokens", None), nn.Embedding
    ):
        return decoder.embed_tokens.weight
    fc_out = getattr(decoder, "fc_out", None)
    if isinstance(fc_out, nn.Linear):
        return fc_out.weight
    raise OutputEmbeddingNotFound(
        f"self_kd_cross_entropy: cannot find the output word-embedding matrix of {name}. "
        "Give the model (or its decoder) a method get_output_embedding_matrix() that returns "
        "the [vocab x dim] weight right below the softmax."
    )
