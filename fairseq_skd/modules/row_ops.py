"""Row-wise operations over [positions x vocab] matrices that torch is slow at on CPU.

Two costs dominate there, not the arithmetic: torch's CPU argmax reads about 1 GB/s, and a fresh
[positions x vocab] tensor (the product inside ``vecdot``, ``exp`` of a whole matrix) costs more
in page faults on first touch than the arithmetic that fills it. So these work a block of rows at
a time, on buffers small enough to be reused, and give torch's results exactly. On a GPU they
are torch's own operations.
"""

import torch

# elements of the [rows x vocab] block worked on at a time: 4 MB in float32
BLOCK_ELEMENTS = 1 << 20


def row_blocks(x: torch.Tensor):
    """Slices of ``x``'s rows, whole on a GPU, BLOCK_ELEMENTS at a time on CPU."""
    n, v = x.shape
    rows = n if x.is_cuda else max(1, BLOCK_ELEMENTS // max(v, 1))
    return [slice(start, start + rows) for start in range(0, n, rows)]


def row_argmax(x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``x.argmax(-1)`` for a [N x V] matrix, exactly (the first maximum of each row), faster on
    CPU: the maximum of each block of ``block`` columns first (a plain reduction), then the
    argmax within each row's first best block. torch's CPU argmax reads about 1 GB/s, so over
    [tokens x vocab] log-probabilities it was most of SKD's extra cost (bench_criterion)."""
    n, v = x.shape
    blocks = v // block
    if x.is_cuda or blocks < 2 or x.stride(1) != 1:
        return x.argmax(-1)
    maxima = x.as_strided((n, blocks, block), (x.stride(0), block, 1)).amax(-1)
    if v > blocks * block:
        maxima = torch.cat([maxima, x[:, blocks * block :].amax(-1, keepdim=True)], dim=1)
    columns = (maxima.argmax(-1)[:, None] * block
               + torch.arange(block, device=x.device)).clamp_(max=v - 1)
    return columns.gather(1, x.gather(1, columns).argmax(-1, keepdim=True)).squeeze(1)



def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.vecdot(a, b)`` for [N x V] matrices, a block of rows at a time (no
    [N x V] product), without autograd."""
    out = torch.empty(a.shape[0], dtype=torch.result_type(a, b), device=a.device)
    for rows in row_blocks(a):
        torch.linalg.vecdot(a[rows], b[rows], out=out[rows])
    return out


class WeightedRowSum(torch.autograd.Function):
    """sum_v w_v x_v per row for weights ``w`` that are a target (no gradient) and values ``x``
    that are not: :func:`row_dot` forward, and a backward of one product w * grad."""

    @staticmethod
    def forward(ctx, weights, values):
        ctx.save_for_backward(weights)
        return row_dot(weights, values)

    @staticmethod
    def backward(ctx, grad):
        (weights,) = ctx.saved_tensors
        return None, weights * grad.unsqueeze(-1)


def softmax_with_neg_entropy_(logits):
    """(softmax over the last dimension, sum p ln p per row, the argmax per row) of float
    ``logits`` [..., V], a contiguous tensor this turns into the probabilities in place:
    ln p = (z - max) - ln s, so the entropy costs one dot product per row instead of a logarithm
    of every probability, and the argmax gives the max."""
    flat = logits.view(-1, logits.shape[-1])
    argmax = row_argmax(flat)
    flat.sub_(flat.gather(1, argmax[:, None]))
    neg_entropy = torch.empty(flat.shape[0], dtype=flat.dtype, device=flat.device)
    for rows in row_blocks(flat):
        shifted = flat[rows]
        probs = shifted.exp()
        total = probs.sum(-1)
        neg_entropy[rows] = torch.linalg.vecdot(probs, shifted) / total - total.log()
        shifted.copy_(probs.div_(total[:, None]))
    lead = logits.shape[:-1]
    return logits, neg_entropy.view(lead), argmax.view(lead)
