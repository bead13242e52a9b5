"""Gaussian noise on the decoder's input word embeddings (the paper's "+Noise" rows).

Works for any fairseq decoder with an ``embed_tokens`` module. The noise is added only while the
embedding runs inside the decoder's forward and in training mode, so an encoder that shares the
same embedding module (``--share-all-embeddings``) and every evaluation or generation pass see
the clean embeddings.
"""

import torch
from torch import nn


class TargetEmbeddingNoise:
    """Hooks that add N(0, std^2) noise to ``decoder.embed_tokens`` outputs during training."""

    def __init__(self, decoder: nn.Module, std: float):
        embed_tokens = getattr(decoder, "embed_tokens", None)
        if not isinstance(embed_tokens, nn.Module):
            raise ValueError(
                f"--target-embed-noise needs a decoder with an embed_tokens module; "
                f"{type(decoder).__name__} has none. Drop --target-embed-noise for this model."
            )
        self.std = std
        self._decoder_depth = 0
        self._handles = [
            decoder.register_forward_pre_hook(self._enter_decoder),
            decoder.register_forward_hook(self._leave_decoder, always_call=True),
            embed_tokens.register_forward_hook(self._add_noise),
        ]

    def _enter_decoder(self, module, args):
        self._decoder_depth += 1

    def _leave_decoder(self, module, args, output):
        self._decoder_depth -= 1

    def _add_noise(self, module, args, output):
        if self._decoder_depth > 0 and module.training and self.std > 0:
            return output + torch.randn_like(output) * self.std
        return output

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
