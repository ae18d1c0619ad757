"""Config of ``latentrl grpo`` (TRL's ``GRPOConfig`` names where one exists)."""

from __future__ import annotations

import importlib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from latentrl.config import with_defaults
from latentrl.exploration.args import ExplorationArgs
from latentrl.models.thinking.args import EngineArgs, ThinkingArgs
from latentrl.train.args import DataArgs, OptimizerArgs, RunArgs

def load_reward_func(spec: str):
    """``module:function`` -> the function (ValueError naming the spec when it cannot be imported).

    This imports ``module``, so its top-level code runs: name only modules you trust.
    """
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"reward function {spec!r} must be given as module:function")
    try:
        imported = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"cannot load reward function {spec!r}: {err}") from err
    except Exception as err:  # noqa: BLE001 - the module's own code failed: say where
        where = f" ({err.filename}:{err.lineno})" if isinstance(err, SyntaxError) else ""
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot load reward function {spec!r}: importing {module} raised "
                         f"{type(err).__name__}{where}: {first}") from err  # fmt: skip
    try:
        func = getattr(imported, name)
    except AttributeError as err:
        raise ValueError(f"cannot load reward function {spec!r}: {err}") from err
    if not callable(func):
        raise ValueError(f"reward function {spec!r} is a {type(func).__name__}, not a function")
    return func


class GRPOConfig(ThinkingArgs, EngineArgs, ExplorationArgs, DataArgs, OptimizerArgs, RunArgs):
    """GRPO post-training of a thinking model; the exploration fields select Dropout-GRPO."""

    model_name_or_path: str = Field(min_length=1, description="SFT checkpoint (dir or hub id) to start from.")
    reward_funcs: list[str] = Field(
        ["latentrl.rewards:answer_match"], min_length=1,
        description="Reward functions as module:function, TRL signature (the module is imported: its code runs).",
    )  # fmt: skip
    reward_weights: list[float] | None = Field(None, description="One weight per reward (default 1).")
    num_generations: int = Field(8, ge=2, description="G, rollouts per prompt.")
    generation_batch_size: int = Field(64, ge=2, description="Rollouts per step (prompts x G).")
    per_device_train_batch_size: int = Field(64, ge=1, description="Rollouts per micro-batch of the update.")
    num_iterations: int = Field(1, ge=1, description="mu, updates per generation batch.")
    max_steps: int = Field(100, ge=1, description="RL steps (generation batches).")
    beta: float = Field(0.0, ge=0, description="k3 KL weight to the frozen reference (0: no reference).")
    epsilon: float = Field(0.2, gt=0, description="Lower clip range.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (None: epsilon).")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field("dapo", description="How per-token losses are averaged.")
    scale_rewards: Literal["group", "batch", "none"] = Field("none", description="Advantage scaling (Dropout-GRPO: none).")
    importance_sampling_level: Literal["token", "sequence"] = Field("token", description="Ratio per token or per sequence.")
    temperature: float = Field(1.0, ge=0, description="Answer sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Answer nucleus.")
    max_completion_length: int = Field(32, ge=1, description="Completion length cap.")
    mask_truncated_completions: bool = Field(False, description="Drop completions without eos.")
    torch_compile_update: bool = Field(
        False, description="Run the update's log-prob forward and its backward through torch.compile (dynamic shapes; "
                           "the first step compiles: seconds to minutes on a CPU, which needs a C++ compiler). "
                           "torch_compile covers decoding.",
    )  # fmt: skip
    skip_zero_std_groups: bool = Field(False, description="Drop groups whose rewards are all equal.")
    eval_steps: int = Field(0, ge=0, description="Greedy validation accuracy every N steps (0: off).")
    bupo_layer: int | None = Field(
        None, ge=1, description="BuPO: for the first bupo_steps steps optimise layer l's internal policy (1..L, the "
                                "output of block l); None: off.",
    )  # fmt: skip
    bupo_steps: int = Field(0, ge=0, description="BuPO: steps of phase 1 (on the internal policy), then ordinary GRPO.")
    bupo_module: Literal["residual", "attn", "ffn"] = Field(
        "residual", description="BuPO: read the internal policy from the residual stream, the attention or the FFN output."
    )
    bupo_final_norm: bool = Field(False, description="BuPO: apply the final norm before the read-out (the logit lens).")

    @field_validator("reward_funcs")
    @classmethod
    def _importable(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            load_reward_func(spec)
        return specs

    @model_validator(mode="after")
    def _consistent(self):
        if self.generation_batch_size % self.num_generations:
            raise ValueError(f"generation_batch_size={self.generation_batch_size} must be a multiple of "
                             f"num_generations={self.num_generations}")  # fmt: skip
        if self.generation_batch_size % self.per_device_train_batch_size:
            raise ValueError(f"generation_batch_size={self.generation_batch_size} must be a multiple of "
                             f"per_device_train_batch_size={self.per_device_train_batch_size}")  # fmt: skip
        self.check_source_fits_mode(self.thinking_mode)
        if self.bupo_steps > self.max_steps:
            raise ValueError(f"bupo_steps={self.bupo_steps} is larger than max_steps={self.max_steps}")
        if self.bupo_steps and self.bupo_layer is None:
            raise ValueError("bupo_steps needs bupo_layer (the layer whose internal policy phase 1 optimises)")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} weights for {len(self.reward_funcs)} reward functions")
        return self


    def policy_head(self, step: int):
        """The policy step ``step`` (0-based) optimises: layer ``bupo_layer``'s during BuPO's phase 1, else the full one."""
        from latentrl.models.readout import FULL_POLICY, PolicyHead

        if self.bupo_layer is not None and step < self.bupo_steps:
            return PolicyHead(self.bupo_layer, self.bupo_module, self.bupo_final_norm)
        return FULL_POLICY


with_defaults(GRPOConfig, output_dir="runs/grpo", exploration="dropout", learning_rate=1e-4, weight_decay=0.0, num_train_examples=2000,
              data_seed=1, eval_n=200, logging_steps=1, save_steps=50)  # fmt: skip

GRPO_FIXED_ON_RESUME = ("model_name_or_path", "thinking_mode")
