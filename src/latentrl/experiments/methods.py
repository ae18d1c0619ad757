"""The methods a sweep compares: each a small record of what it trains from what, and how it is evaluated.

| name | what it is |
|---|---|
| ``sft`` | the SFT checkpoint itself (the last run of the SFT chain, e.g. the Coconut curriculum) |
| ``sft_more`` | that checkpoint trained with more SFT for as long as ``dropout_grpo`` ran (equal-time control) |
| ``grpo_sampling`` | GRPO with answer sampling only (no latent exploration) |
| ``dropout_grpo`` | Dropout-GRPO: one mask per rollout, shared over all latent steps |
| ``dropout_step`` | ablation: a fresh mask per latent step |
| ``greedy_none`` | no exploration, greedy answers: every group collapses |
| ``cot`` | the chain-of-thought checkpoint (the first run of the SFT chain) |
| ``discrete_grpo`` | discrete-token GRPO from the CoT checkpoint |
| ``soft_grpo`` | SofT-GRPO from the CoT checkpoint: soft thinking with Gumbel noise |
| ``soft_thinking`` | the CoT checkpoint evaluated with soft thinking, no RL |
| ``discrete_grpo_soft`` | the ``discrete_grpo`` model evaluated with soft thinking |
| ``bupo_grpo`` | BuPO on ``discrete_grpo``: its first steps on layer l's internal policy (the sweep's ``bupo`` keys) |
| ``bupo_dropout`` | BuPO on ``dropout_grpo`` (Coconut + the shared dropout mask) |
| ``bupo_soft`` | BuPO on ``soft_grpo`` (SofT-GRPO) |

A BuPO method is its control's record with ``bupo=True``; the table pairs it with that control.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Method:
    """One arm of a sweep."""

    grpo: dict | None = None  # GRPOConfig overrides of its RL run (None: no RL)
    base: str = "last"  # the SFT chain's run it starts from: "first" (CoT) or "last"
    eval_keys: dict = field(default_factory=dict)  # EvalConfig keys of its test evaluation (e.g. thinking_mode=soft)
    model_of: str | None = None  # evaluate this other method's trained model instead of training
    bupo: bool = False  # add the sweep's ``bupo`` keys (bupo_layer, bupo_steps, ...) to its RL run
    control: str | None = None  # the method it differs from in one choice (paired in the table)


# Soft-mode evaluations: greedy soft thinking (no noise) for accuracy; the sampled runs (pass@k, maj@k) add
# SofT-GRPO's Gumbel noise to the thinking steps, so that soft samples differ in their thinking, as
# discrete samples do in their chains of thought, not only in the answer tokens after it.
SOFT_SAMPLES = {"exploration": "gumbel", "greedy_exploration": False}

METHODS: dict[str, Method] = {
    "sft": Method(),
    "sft_more": Method(),
    "grpo_sampling": Method({"exploration": "none", "temperature": 1.0}),
    "dropout_grpo": Method({"exploration": "dropout", "dropout_scope": "rollout"}),
    "dropout_step": Method({"exploration": "dropout", "dropout_scope": "step"}),
    "greedy_none": Method({"exploration": "none", "temperature": 0.0}),
    "cot": Method(base="first"),
    "discrete_grpo": Method({"exploration": "none", "temperature": 1.0}, base="first"),
    "soft_grpo": Method({"thinking_mode": "soft", "exploration": "gumbel"}, base="first",
                        eval_keys={"thinking_mode": "soft", **SOFT_SAMPLES}),
    "soft_thinking": Method(base="first", eval_keys={"thinking_mode": "soft", **SOFT_SAMPLES}),
    "discrete_grpo_soft": Method(base="first", eval_keys={"thinking_mode": "soft", **SOFT_SAMPLES}, model_of="discrete_grpo"),
}


def with_bupo(control: str) -> Method:
    """``control``'s record with BuPO's phase 1 added, paired with ``control`` in the table."""
    return replace(METHODS[control], bupo=True, control=control)


METHODS.update(bupo_grpo=with_bupo("discrete_grpo"), bupo_dropout=with_bupo("dropout_grpo"), bupo_soft=with_bupo("soft_grpo"))

GRPO_METHODS: dict[str, dict] = {name: m.grpo for name, m in METHODS.items() if m.grpo is not None}
CONTROL_METHODS = ("sft", "sft_more")
ALL_METHODS = tuple(METHODS)
DEFAULT_METHODS = tuple(m for m in METHODS if not METHODS[m].bupo)  # the BuPO arms need the sweep's bupo keys
