"""q_n of a trained model on its test set: did sigma suit the scale of the output embeddings?

q_n = min(exp(-sigma d(W_t, W_n)), qn_max) (paper Eq. 8) at the positions where the model's
prediction n differs from the target t. A clip rate near 1 means sigma is too small for the
distances between the rows of W (every prediction gets the largest share), a median q_n near 0
that it is too large (SKD changes nothing).
"""

import warnings

import torch

from fairseq_skd.modules.output_embedding import find_output_embedding
from fairseq_skd.modules.skd_losses import predicted_soft_targets  # the criterion's Eq. 8 q_n


@torch.no_grad()
def measure_qn_on_test_set(checkpoint, data_bin, sigma, qn_max=0.5, max_tokens=4000):
    """Median q_n and clip rate at ``sigma`` over the test positions where the model's
    prediction differs from the target, and the median distance d(W_t, W_n) there:
    ``{"median_qn", "clip_rate", "median_distance"}``. Runs on CPU."""
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_bin)})
    model = models[0].eval()
    task.load_dataset("test")
    distances = []
    weight = find_output_embedding(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # fairseq asks for it on CPU too
        itr = task.get_batch_iterator(task.dataset("test"), max_tokens=max_tokens,
                                      required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
        for sample in itr:
            net_output = model(**sample["net_input"])
            lprobs = model.get_normalized_probs(net_output, log_probs=True)
            target = model.get_targets(sample, net_output).view(-1)
            lprobs = lprobs.view(-1, lprobs.size(-1))
            _, _, stats = predicted_soft_targets(lprobs, target, weight, sigma, qn_max,
                                                 target.ne(task.target_dictionary.pad()))
            distances.append(stats["distance"][stats["mismatch_mask"]])
    d = torch.cat(distances)
    q = torch.exp(-sigma * d)
    return {"median_qn": q.clamp(max=qn_max).median().item(),
            "clip_rate": q.ge(qn_max).float().mean().item(), "median_distance": d.median().item()}
