"""q_n of a trained model on a scored subset: did sigma suit the scale of the output embeddings?

q_n = min(exp(-sigma d(W_t, W_n)), qn_max) (paper Eq. 8) at the positions where the model's
prediction n differs from the target t. A clip rate near 1 means sigma is too small for the
distances between the rows of W (every prediction gets the largest share), a median q_n near 0
that it is too large (SKD changes nothing). The scorers (:mod:`.scoring`) collect the distances
in the pass that scores the subset, with the same sigma for every variant of a study, so that
the rows of a table compare the models' embeddings and not their training settings.
"""

import math

import torch

from ..modules.embedding_distance import auto_sigma, mean_nearest_neighbour_distance
from ..modules.row_ops import row_argmax  # the criterion's Eq. 8
from ..modules.skd_losses import output_embedding_distances


def parse_qn_sigma(text):
    """``--qn-sigma``: a number > 0, ``auto`` or ``none`` (None: not measured)."""
    if text.lower() == "none":
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be a number > 0, 'auto' or 'none', got {text!r}")
    return value


class QnStatistics:
    """The distances d(W_t, W_n) at the scored positions where the argmax n is not the target,
    gathered batch by batch; :meth:`result` turns them into q_n at a sigma."""

    def __init__(self, output_embed, padding_idx=None):
        self.weight = output_embed.detach()
        self.padding_idx = padding_idx
        self.distances = []

    @torch.no_grad()
    def update(self, lprobs, target, mask):
        """``lprobs`` [N x V], ``target`` [N], ``mask`` [N]: true where a position is scored."""
        pred = row_argmax(lprobs)
        wrong = pred.ne(target) & mask
        self.distances.append(
            output_embedding_distances(self.weight, target[wrong], pred[wrong]).cpu())
        return self

    def result(self, sigma, qn_max=0.5):
        """``{"qn_sigma", "median_qn", "clip_rate", "median_distance"}``; ``sigma`` a number or
        ``auto`` (ln 2 / the mean nearest-neighbour distance in W, as ``--skd-sigma auto``).
        The medians are None where the argmax was right everywhere."""
        if sigma == "auto":
            sigma = auto_sigma(mean_nearest_neighbour_distance(self.weight, exclude=self.padding_idx))
        d = torch.cat(self.distances) if self.distances else torch.empty(0)
        if d.numel() == 0:
            return {"qn_sigma": sigma, "median_qn": None, "clip_rate": None, "median_distance": None}
        q = torch.exp(-sigma * d)
        return {"qn_sigma": sigma, "median_qn": q.clamp(max=qn_max).median().item(),
                "clip_rate": q.ge(qn_max).float().mean().item(),
                "median_distance": d.median().item()}
