"""A memory-lean cross-entropy computed straight from hidden states.

At SmolLM2's size the 49k-vocabulary logits dominate activation memory: batch 16 x 512 tokens
of fp32 logits is 1.6 GB, and autograd would keep several copies. Two things make it lean:

1. Only positions that carry a label are projected through the LM head. For SFT with loss on
   answers only, that is often a small fraction of the tokens (a 5-token intent name out of 40).
2. The projection runs in chunks, and each chunk's gradient is computed in the forward pass
   (softmax minus one-hot), so no logits are kept for backward: the memory held is one chunk of
   logits plus the gradient of the selected hidden states.

This is a function the loop calls explicitly, not a patch of the model's forward.

Targets may be soft (train/teacher.py): a position then learns against the mixture
hard_share · one-hot(label) + Σ_k soft_probs_k · one-hot(soft_ids_k), whose gradient is the same
softmax minus target, so the chunked scheme is unchanged.
"""

from __future__ import annotations

import torch

from tunewright.dataset.tokenize import IGNORE_INDEX

DEFAULT_CHUNK_TOKENS = 1024  # 1024 x 49k fp32 logits = 200 MB at most live at once


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * NLL(softmax(h_i W^T), y_i), with gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, chunk_tokens, soft=None):
        compute_dtype = hidden.dtype
        weight_c = weight.to(compute_dtype)
        needs_weight_grad = weight.requires_grad
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if needs_weight_grad else None
        total = torch.zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_tokens):
            span = slice(start, start + chunk_tokens)
            h, y, w = hidden[span], targets[span], token_weights[span]
            logits = (h @ weight_c.T).float()
            log_z = torch.logsumexp(logits, dim=-1)
            rows = torch.arange(len(y))
            if soft is None:
                target_logit = logits[rows, y]
            else:
                soft_ids, soft_probs, hard_share = (t[span] for t in soft)
                target_logit = hard_share * logits[rows, y] + (
                    soft_probs * logits.gather(1, soft_ids)
                ).sum(1)
            total += ((log_z - target_logit) * w).sum()
            # d/dlogits of w * CE(target) = w * (softmax - target); reuse the logits buffer
            grad_logits = logits.sub_(log_z[:, None]).exp_()
            if soft is None:
                grad_logits[rows, y] -= 1.0
            else:
                grad_logits[rows, y] -= hard_share
                grad_logits.scatter_add_(1, soft_ids, -soft_probs)
            grad_logits.mul_(w[:, None])
            grad_logits_c = grad_logits.to(compute_dtype)
            grad_hidden[span] = grad_logits_c @ weight_c
            if needs_weight_grad:
                grad_weight += (grad_logits_c.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if needs_weight_grad else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        g_h = grad_hidden * grad_output.to(grad_hidden.dtype)
        g_w = None if grad_weight is None else (grad_weight * grad_output).to(ctx.weight_dtype)
        return g_h, g_w, None, None, None, None


def select_trained_positions(
    hidden: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift for next-token prediction and keep only positions with a label.

    Returns (hidden states [N, H], target ids [N], token weights [N]).
    """
    shifted_labels = labels[:, 1:]
    keep = shifted_labels != IGNORE_INDEX
    selected_hidden = hidden[:, :-1][keep]
    targets = shifted_labels[keep]
    if loss_weights is None:
        weights = torch.ones(targets.shape, dtype=torch.float32)
    else:
        weights = loss_weights[:, 1:][keep].float()
    return selected_hidden, targets, weights


def chunked_cross_entropy(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    soft: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (weighted) next-token NLL over labelled positions, and the summed weight.

    `hidden` is [B, T, H] from the model body, `labels` [B, T] with IGNORE_INDEX where not
    trained. Divide the first result by the second (summed over all micro-batches of an
    optimiser step) for the mean token loss. `soft`: (soft_ids, soft_probs, hard_share) for
    every labelled position in row order (train/teacher.py `soft_targets`).
    """
    selected, targets, weights = select_trained_positions(hidden, labels, loss_weights)
    if targets.numel() == 0:
        zero = hidden.sum() * 0.0  # keeps the graph connected so backward still works
        return zero, torch.zeros(())
    if soft is not None and len(soft[2]) != len(targets):
        raise ValueError(f"{len(soft[2])} soft targets for {len(targets)} trained positions")
    total = _LinearCrossEntropy.apply(
        selected, lm_head_weight, targets, weights, chunk_tokens, soft
    )
    return total, weights.sum()


@torch.no_grad()
def sequence_log_probs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `labels` [B, T]: the summed log-probability of its labelled tokens, and how
    many there are ([B] float32 each). No graph is kept: chunk by chunk, as the loss above."""
    selected, targets, _ = select_trained_positions(hidden, labels)
    # the row of each selected position, in the order the boolean mask selects them (row-major)
    rows = (labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 0].to(hidden.device)
    weight = lm_head_weight.to(selected.dtype)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), chunk_tokens):
        span = slice(start, start + chunk_tokens)
        logits = (selected[span] @ weight.T).float()
        picked = logits.gather(1, targets[span, None]).squeeze(1)
        sums.index_add_(0, rows[span], picked - torch.logsumexp(logits, dim=-1))
    counts = torch.bincount(rows, minlength=labels.shape[0]).float()
    return sums, counts
