"""The methods a sweep compares, each a set of ``GRPOConfig`` overrides (or an SFT control).

| name | what it is |
|---|---|
| ``sft`` | the SFT checkpoint itself (the baseline) |
| ``sft_more`` | the SFT checkpoint trained with more SFT for as long as ``dropout_grpo`` ran (equal-time control) |
| ``grpo_sampling`` | GRPO with answer sampling only (no latent exploration) |
| ``dropout_grpo`` | Dropout-GRPO: one mask per rollout, shared over all latent steps |
| ``dropout_step`` | ablation: a fresh mask per latent step |
| ``greedy_none`` | no exploration, greedy answers: every group collapses |
"""

from __future__ import annotations

GRPO_METHODS: dict[str, dict] = {
    "grpo_sampling": {"exploration": "none", "temperature": 1.0},
    "dropout_grpo": {"exploration": "dropout", "dropout_scope": "rollout"},
    "dropout_step": {"exploration": "dropout", "dropout_scope": "step"},
    "greedy_none": {"exploration": "none", "temperature": 0.0},
}
CONTROL_METHODS = ("sft", "sft_more")
ALL_METHODS = (*CONTROL_METHODS, *GRPO_METHODS)
