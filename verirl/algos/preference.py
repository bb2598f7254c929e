"""Preference losses as pure functions of sequence log-probabilities: DPO, its label-smoothed
(cDPO) form, IPO, and the Bradley–Terry reward-model loss they all start from.

Shapes: B preference pairs; every input is [B]. ``*_logratios`` are sequence log-ratios
log π_θ(y|x) − log π_ref(y|x), each the sum over the completion's tokens (prompt masked).

**Bradley–Terry → DPO** (Rafailov et al. 2023, arXiv:2305.18290, §4; seed 002 §3.1.5).
Bradley–Terry models a preference between two answers through a latent reward r:

    P(y_w ≻ y_l | x) = e^{r(x,y_w)} / (e^{r(x,y_w)} + e^{r(x,y_l)}) = σ(r(x,y_w) − r(x,y_l)),

so a reward model r_φ is fitted by L_RM = −log σ(r_φ(x,y_w) − r_φ(x,y_l)) (``bradley_terry_loss``).
The KL-regularised RL objective max_π E[r] − β KL(π ‖ π_ref) has the closed-form optimum
π*(y|x) = π_ref(y|x) e^{r(x,y)/β} / Z(x); solved for the reward,

    r(x, y) = β log π*(y|x)/π_ref(y|x) + β log Z(x).

Put into Bradley–Terry, β log Z(x) is the same for y_w and y_l and cancels:

    P(y_w ≻ y_l | x) = σ(β [log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)]) = σ(β h),

and the DPO loss is its negative log-likelihood, L = −log σ(β h): a Bradley–Terry fit of the
*implicit* reward β log π_θ/π_ref, with no reward model and no sampling. The implicit rewards
β·logratio are what TRL logs as ``rewards/chosen`` and ``rewards/rejected`` (``dpo_metrics``).

Checked against TRL 1.16's ``DPOTrainer._compute_loss`` on identical tensors in
tests/test_preference.py (TRL is Apache-2.0; its code is called there, not copied here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def dpo_sigmoid_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO per pair: L = −(1 − ε) log σ(β h) − ε log σ(−β h),  h = chosen − rejected log-ratio.

    ε = ``label_smoothing`` is the probability that a pair's label is flipped (conservative DPO,
    Mitchell 2023, "A note on DPO with noisy preferences"); ε = 0 is plain DPO. Written with
    ``logsigmoid`` so a large |β h| never overflows. Returns [B].

    >>> dpo_sigmoid_loss(torch.tensor([0.0]), torch.tensor([0.0]), beta=0.1).tolist()  # log 2
    [0.693...]
    >>> dpo_sigmoid_loss(torch.tensor([2.0]), torch.tensor([-3.0]), beta=0.1).tolist()  # −log σ(0.5)
    [0.474...]
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    logits = beta * (chosen_logratios - rejected_logratios)  # [B]
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """IPO per pair (Azar et al. 2023, arXiv:2310.12036, eq. 17): L = (h − 1/(2β))², with β the
    paper's τ. A squared loss regresses the log-ratio gap onto a fixed target instead of
    pushing it to infinity, which is DPO's overfitting mode on deterministic preferences.

    With ``chosen_tokens``/``rejected_tokens`` (completion lengths, [B]) each log-ratio is first
    divided by its length, as TRL does (the IPO authors' normalisation, so β does not depend on
    answer length); without them, the paper's unnormalised form. Returns [B].

    >>> ipo_loss(torch.tensor([1.0]), torch.tensor([0.0]), beta=0.5).tolist()  # (1 − 1)²
    [0.0]
    >>> ipo_loss(torch.tensor([4.0]), torch.tensor([2.0]), 0.25, torch.tensor([2.]), torch.tensor([1.]))
    tensor([4.])
    """
    if beta <= 0:
        raise ValueError(f"IPO needs beta > 0, got {beta}")
    if (chosen_tokens is None) != (rejected_tokens is None):
        raise ValueError("give both chosen_tokens and rejected_tokens, or neither")
    if chosen_tokens is not None and rejected_tokens is not None:
        chosen_logratios = chosen_logratios / chosen_tokens.clamp(min=1)
        rejected_logratios = rejected_logratios / rejected_tokens.clamp(min=1)
    return (chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)) ** 2


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: float = 0.0
) -> torch.Tensor:
    """Reward-model loss per pair: L = −log σ(r_φ(x, y_w) − r_φ(x, y_l) − m) (Ouyang et al. 2022,
    eq. 1; ``margin`` m as in Llama 2's RM, 0 for the plain Bradley–Terry fit). Returns [B].

    >>> bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0])).tolist()  # log 2
    [0.693...]
    """
    return -F.logsigmoid(chosen_scores - rejected_scores - margin)


# How a pair's loss is computed, by ``algo.loss_type`` name. Each takes (chosen_logratios,
# rejected_logratios, beta, label_smoothing, chosen_tokens, rejected_tokens) -> [B].
PreferenceLoss = Callable[
    [torch.Tensor, torch.Tensor, float, float, torch.Tensor, torch.Tensor], torch.Tensor
]
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": lambda c, r, beta, eps, nc, nr: dpo_sigmoid_loss(c, r, beta, eps),
    "ipo": lambda c, r, beta, eps, nc, nr: ipo_loss(c, r, beta, nc, nr),
}


def preference_loss(
    loss_type: str,
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean over pairs of ``PREFERENCE_LOSSES[loss_type]`` (a scalar).

    >>> preference_loss("sigmoid", torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), 0.1).item()
    0.693...
    """
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; one of {sorted(PREFERENCE_LOSSES)}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError("label_smoothing applies to loss_type 'sigmoid' only")
    ones = torch.ones_like(chosen_logratios)
    nc = chosen_tokens if chosen_tokens is not None else ones
    nr = rejected_tokens if rejected_tokens is not None else ones
    fn = PREFERENCE_LOSSES[loss_type]
    return fn(chosen_logratios, rejected_logratios, beta, label_smoothing, nc, nr).mean()


@torch.no_grad()
def dpo_metrics(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> dict[str, float]:
    """TRL's DPO metrics from the implicit rewards β·logratio: ``rewards/chosen``,
    ``rewards/rejected`` (means), ``rewards/margins`` (mean chosen − rejected) and
    ``rewards/accuracies`` (share of pairs whose chosen reward is strictly higher).

    >>> dpo_metrics(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0]), beta=0.5)
    {'rewards/chosen': 0.0, 'rewards/rejected': 0.0, 'rewards/margins': 0.0, 'rewards/accuracies': 0.5}
    """
    chosen, rejected = beta * chosen_logratios, beta * rejected_logratios
    return {
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/margins": float((chosen - rejected).mean()),
        "rewards/accuracies": float((chosen > rejected).float().mean()),
    }


def best_worst_pairs(
    rewards: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online DPO's pairs from verifiable rewards: in each group of G samples of one prompt,
    the best-scored sample is chosen and the worst rejected (seed 002 §3.1.4, "on-policy DPO";
    Guo et al. 2024, arXiv:2402.04792, with a verifier in place of the AI annotator).

    rewards, valid: [P, G] (valid = 0 for infra errors, which never enter a pair). Returns
    (best [P], worst [P] sample indices, has_pair [P] bool): a group whose valid rewards are all
    equal (or with fewer than two valid samples) has no pair and is skipped. Ties go to the
    first sample, so the choice is deterministic.

    >>> r = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 0.0, 0.0]])
    >>> v = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]])
    >>> [t.tolist() for t in best_worst_pairs(r, v)]
    [[1, 0, 0], [0, 0, 2], [True, False, True]]
    """
    ok = valid > 0
    hi = torch.where(ok, rewards, float("-inf")).float()
    lo = torch.where(ok, rewards, float("inf")).float()
    best, worst = hi.argmax(-1), lo.argmin(-1)
    has_pair = (hi.max(-1).values > lo.min(-1).values) & (ok.sum(-1) >= 2)
    return best, worst, has_pair
