"""A warning for when sigma does not suit the scale of the output embeddings.

q_n = min(exp(-sigma d(W_t, W_n)), qn_max) sits at the clip wherever d < ln(1 / qn_max) / sigma.
When that holds almost everywhere, SKD only moves alpha * qn_max of the target's mass onto the
model's own prediction, whatever it is, which was measured to hurt. sigma only means something
relative to the distances in W, so the warning names the median distance and a sigma that would
make q_n informative.
"""

import logging
import math

import torch

logger = logging.getLogger("fairseq_skd.criterions.self_kd_cross_entropy")

# The first training batches are watched until this many positions with n != t have been seen;
# the warning fires if this fraction or more of them were clipped.
SATURATION_MIN_POSITIONS = 2000
SATURATION_CLIP_FRACTION = 0.95


class SaturationWarning:
    """Collects the clip rate of q_n over the first positions of training and warns once."""

    def __init__(self, qn_max: float):
        self.qn_max = qn_max
        self.mismatch = 0
        self.clipped = 0
        self.distances = []
        self.done = False

    def update(self, stats, sigma: float) -> None:
        """``stats`` of ``predicted_soft_targets`` for one training batch."""
        if self.done:
            return
        self.mismatch += int(stats["qn_count"])
        self.clipped += int(stats["clipped"])
        self.distances.append(stats["distance"][stats["mismatch_mask"]].cpu())
        if self.mismatch < SATURATION_MIN_POSITIONS:
            return
        self.done = True
        fraction = self.clipped / self.mismatch
        median = torch.cat(self.distances).median().item()
        self.distances = []
        if fraction >= SATURATION_CLIP_FRACTION and _is_first_worker():
            suggested = math.log(2.0 / self.qn_max) / max(median, 1e-12)
            logger.warning(
                f"SKD: q_n was clipped at --skd-qn-max={self.qn_max} for {100 * fraction:.1f}% of "
                f"the positions where the prediction differs from the target: the median "
                f"distance d(W_t, W_n) is {median:.3g}, so exp(-{sigma:.3g} * d) is "
                f"{math.exp(-sigma * median):.2f}. SKD then only moves alpha * {self.qn_max} "
                f"of the target's mass onto the model's own prediction, whatever it is. "
                f"--skd-sigma {suggested:.3g} would put q_n at {self.qn_max / 2:.2g} for the "
                f"median distance (or use --skd-sigma auto, or scale the output embeddings up)."
            )


def _is_first_worker() -> bool:
    return not torch.distributed.is_available() or not torch.distributed.is_initialized() or (
        torch.distributed.get_rank() == 0
    )
