"""Preference tuning: DPO (sigmoid or IPO loss) and ORPO, a second objective of the same loop.

`train.objective` picks it once, in setup: the loop's micro-batches are then whole preference
pairs (train/pairs.py; each pair is two rows, chosen then rejected, in one forward pass) and its
forward is `PreferenceForward`, which returns (summed pair losses, pairs) as the SFT forward
returns (summed token losses, tokens); the loop divides by the step's pairs, so the loss is a
mean over pairs, under gradient accumulation and data parallelism alike.

Each loss is a function of every sequence's summed answer log-probability logπ(y|x):

    DPO (sigmoid)  -log σ(β · [(logπ(y_c) - logπ_ref(y_c)) - (logπ(y_r) - logπ_ref(y_r))])
    IPO            (h - 1/(2β))², h the same difference of log-ratios, log-probs per answer token
    ORPO           -logπ(y_c)/|y_c| + β · -log σ(log odds(y_c) - log odds(y_r)),
                   log odds(y) = a - log(1 - e^a), a = logπ(y)/|y| (per answer token)

(Rafailov et al. 2023; Azar et al. 2023; Hong et al. 2024; the conventions of TRL's DPOTrainer
and ORPOTrainer, except that ORPO's NLL term is a mean per pair, not per token of the batch, so
that a step's loss is a sum over pairs like the others.) The reference log-probs are the model's
before training, computed once at setup (train/pairs.py): no second model.

Memory-lean gradients: materialising a micro-batch's logits over the 49k vocabulary for autograd
is what the chunked SFT loss (train/loss.py) exists to avoid. The loss depends on the weights only
through the per-sequence log-probs, so its gradient is Σ_s c_s · ∇logπ_s with c_s = ∂L/∂logπ_s.
The forward therefore makes two chunked passes over the LM head, for the answer tokens only:
(a) without a graph, the per-sequence log-probs, from which the loss and every c_s follow (c_s by
autograd over those few scalars); (b) the chunked cross-entropy with each answer token weighted
-c_s, a surrogate whose gradient is the true one (∇NLL_s = -∇logπ_s). The reported value is the
true loss. Only one chunk of logits is ever live, as for SFT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from tunewright.config import TrainConfig
from tunewright.dataset.tokenize import IGNORE_INDEX
from tunewright.train.loss import chunked_cross_entropy, sequence_log_probs
from tunewright.train.model_setup import body_hidden_states, causal_lm_of

# a mean log-prob of exactly 0 (the model certain of every answer token) has infinite log odds
_MAX_MEAN_LOG_PROB = -1e-7


@dataclass(frozen=True)
class PairLoss:
    """Per pair: the loss, the rewards of both sides ([P, 2]) and, for ORPO, the log-odds ratio."""

    loss: torch.Tensor
    rewards: torch.Tensor
    log_odds_ratio: torch.Tensor | None = None


# (log-probs [P, 2] summed over each side's answer tokens, answer tokens [P, 2], reference
# log-probs [P, 2] or None, beta) -> PairLoss; column 0 is the chosen side, 1 the rejected
PairLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float], PairLoss]


def dpo_sigmoid(logps, tokens, reference, beta) -> PairLoss:
    """DPO: rewards β·(logπ - logπ_ref) on summed log-probs; loss -log σ(reward margin)."""
    rewards = beta * (logps - reference)
    return PairLoss(-F.logsigmoid(rewards[:, 0] - rewards[:, 1]), rewards)


def ipo(logps, tokens, reference, beta) -> PairLoss:
    """IPO: (h - 1/(2β))² with h the margin of log-ratios per answer token (IPO paper, TRL)."""
    ratios = (logps - reference) / tokens
    h = ratios[:, 0] - ratios[:, 1]
    return PairLoss((h - 1 / (2 * beta)) ** 2, beta * ratios)


def orpo(logps, tokens, reference, beta) -> PairLoss:
    """ORPO: the chosen answer's NLL per token plus β times the odds-ratio loss; no reference.
    Rewards β·(mean log-prob per token), as TRL reports them."""
    mean = (logps / tokens).clamp(max=_MAX_MEAN_LOG_PROB)
    log_odds = mean - torch.log(-torch.expm1(mean))
    ratio = log_odds[:, 0] - log_odds[:, 1]
    return PairLoss(-mean[:, 0] - beta * F.logsigmoid(ratio), beta * mean, ratio)


def pair_loss_of(tc: TrainConfig) -> PairLossFn:
    """The loss `train.objective` (and, for DPO, `train.dpo_loss`) names."""
    if tc.objective == "orpo":
        return orpo
    return {"sigmoid": dpo_sigmoid, "ipo": ipo}[tc.dpo_loss]


class PairStats:
    """Sums of the pairs' metrics since they were last taken, for metrics.jsonl."""

    def __init__(self, log_odds: bool):
        self.log_odds = log_odds  # ORPO: report the log-odds ratio too
        # pairs, reward margin, reward accuracy, chosen and rejected log-probs, log-odds ratio
        self.sums = torch.zeros(6, dtype=torch.float64)

    def add(self, result: PairLoss, logps: torch.Tensor) -> None:
        margin = (result.rewards[:, 0] - result.rewards[:, 1]).detach().double().cpu()
        logps = logps.detach().double().cpu()
        ratio = result.log_odds_ratio
        ratio_sum = 0.0 if ratio is None else float(ratio.detach().sum())
        self.sums += torch.tensor(
            [
                len(margin),
                float(margin.sum()),
                float((margin > 0).sum()),
                float(logps[:, 0].sum()),
                float(logps[:, 1].sum()),
                ratio_sum,
            ],
            dtype=torch.float64,
        )

    def take(self, accelerator: Accelerator) -> dict[str, float]:
        """The means over every process's pairs since the last call; resets the sums.
        Collective: every rank calls it."""
        sums = accelerator.reduce(self.sums.to(accelerator.device, copy=True), reduction="sum")
        sums = sums.cpu()
        self.sums.zero_()
        pairs = float(sums[0])
        if pairs == 0:
            return {}
        means = (sums[1:] / pairs).tolist()
        metrics = {
            "reward_margin": means[0],
            "reward_accuracy": means[1],
            "chosen_logp": means[2],  # summed over the answer's tokens
            "rejected_logp": means[3],
        }
        if self.log_odds:
            metrics["log_odds_ratio"] = means[4]
        return metrics


class PreferenceForward(nn.Module):
    """Model body + memory-lean preference loss as one module, so DDP/FSDP wrap the whole
    training forward (as `ChunkedLossForward` for SFT). Rows come in pairs, chosen then
    rejected; returns (summed pair losses, pairs) for the micro-batch."""

    def __init__(self, model: nn.Module, pair_loss: PairLossFn, beta: float, stats: PairStats):
        super().__init__()
        self.model = model
        self.pair_loss = pair_loss
        self.beta = beta
        self.stats = stats

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        position_ids=None,
        prefix_ids=None,
        reference_logps=None,  # [rows]: each row's answer's log-prob before training (DPO only)
    ):
        causal_lm = causal_lm_of(self.model)
        hidden = body_hidden_states(causal_lm, input_ids, attention_mask, position_ids, prefix_ids)
        head = causal_lm.lm_head.weight
        sums, tokens = sequence_log_probs(hidden.detach(), head, labels)  # pass (a)
        pairs = len(sums) // 2
        logps = sums.view(pairs, 2)
        reference = None if reference_logps is None else reference_logps.float().view(pairs, 2)
        training = torch.is_grad_enabled()
        logps.requires_grad_(training)  # a leaf: autograd over 2·pairs scalars gives each c_s
        with torch.autocast(hidden.device.type, enabled=False):
            result = self.pair_loss(logps, tokens.view(pairs, 2), reference, self.beta)
        total = result.loss.sum()
        self.stats.add(result, logps)
        count = torch.tensor(float(pairs))
        if not training:
            return total, count
        (slopes,) = torch.autograd.grad(total, logps)  # c_s = dL/dlogπ_s, per sequence
        weights = (-slopes).reshape(-1, 1) * (labels != IGNORE_INDEX)
        surrogate, _ = chunked_cross_entropy(hidden, head, labels, weights)  # pass (b)
        # the surrogate's gradient, the true loss's value
        return surrogate - surrogate.detach() + total.detach(), count


def preference_forward(
    model: nn.Module, tc: TrainConfig
) -> tuple[PreferenceForward, PairStats, str | None]:
    """The training forward of `train.objective` (dpo or orpo), the metrics it gathers, and a
    line for the console about a mode it turns off (None: none)."""
    stats = PairStats(log_odds=tc.objective == "orpo")
    forward = PreferenceForward(model, pair_loss_of(tc), tc.beta, stats)
    note = None
    if tc.method == "lora" and tc.lora_layers and tc.cache_frozen_layers:
        # the cache keeps the states of units that are single rows; a pair is two
        note = (
            f"train.cache_frozen_layers: off for train.objective {tc.objective!r}; every pass "
            "runs every layer"
        )
    return forward, stats, note
