"""Config of ``latentrl grpo`` (TRL's ``GRPOConfig`` names where one exists)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GRPOConfig:
    """GRPO post-training of a thinking model; the exploration fields select Dropout-GRPO."""

    output_dir: str = field(default="runs/grpo", metadata={"help": "Where checkpoints and logs go."})
    model_name_or_path: str = field(default="", metadata={"help": "SFT checkpoint (dir or hub id) to start from."})
    task: str = field(default="arith", metadata={"help": "Task of the training prompts."})
    data_path: str | None = field(default=None, metadata={"help": "Prompt file for file formats."})
    task_kwargs: dict[str, int | float | str] = field(default_factory=dict, metadata={"help": "Task knobs."})
    num_train_examples: int | None = field(default=2000, metadata={"help": "Prompt pool size."})
    data_seed: int = field(default=1, metadata={"help": "Seed of the prompt pool (differs from the SFT data)."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["latentrl.rewards:answer_match"],
        metadata={"help": "Reward functions as module:function, TRL signature."},
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward (default 1)."})
    num_generations: int = field(default=8, metadata={"help": "G, rollouts per prompt."})
    generation_batch_size: int = field(default=64, metadata={"help": "Rollouts per step (prompts x G)."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Rollouts per micro-batch of the update."})
    num_iterations: int = field(default=1, metadata={"help": "mu, updates per generation batch."})
    max_steps: int = field(default=100, metadata={"help": "RL steps (generation batches)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    warmup_steps: int = field(default=0, metadata={"help": "Scheduler warm-up steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    beta: float = field(default=0.0, metadata={"help": "k3 KL weight to the frozen reference (0: no reference)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip range (None: epsilon)."})
    loss_type: str = field(default="dapo", metadata={"help": "grpo, bnpo, dr_grpo or dapo."})
    scale_rewards: str = field(default="none", metadata={"help": "group, batch or none (Dropout-GRPO: none)."})
    importance_sampling_level: str = field(default="token", metadata={"help": "token or sequence."})
    temperature: float = field(default=1.0, metadata={"help": "Answer sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Answer nucleus."})
    max_completion_length: int = field(default=32, metadata={"help": "Completion length cap."})
    mask_truncated_completions: bool = field(default=False, metadata={"help": "Drop completions without eos."})
    skip_zero_std_groups: bool = field(default=False, metadata={"help": "Drop groups whose rewards are all equal."})
    exploration: str = field(default="dropout", metadata={"help": "none, dropout or gaussian."})
    dropout_p: float = field(default=0.1, metadata={"help": "Drop probability of the masks."})
    dropout_scope: str = field(default="rollout", metadata={"help": "rollout (shared mask) or step (per step)."})
    dropout_sites: list[str] = field(default_factory=lambda: ["thought"], metadata={"help": "thought, mlp, attn, block."})
    dropout_cover_prefill: bool = field(default=False, metadata={"help": "Masks also act on the prompt prefill."})
    dropout_cover_answer: bool = field(default=False, metadata={"help": "Masks also act on answer decoding."})
    gaussian_sigma: float = field(default=0.1, metadata={"help": "Std of Gaussian thought noise."})
    eval_steps: int = field(default=0, metadata={"help": "Greedy validation accuracy every N steps (0: off)."})
    eval_n: int = field(default=200, metadata={"help": "Validation problems of the periodic evaluation."})
    eval_data_path: str | None = field(default=None, metadata={"help": "Validation file for file formats."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (0: end only)."})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoint-* dirs kept."})
    report_to: list[str] = field(default_factory=lambda: ["jsonl"], metadata={"help": "jsonl, tensorboard."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and noise."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self) -> None:
        choices = {"loss_type": ("grpo", "bnpo", "dr_grpo", "dapo"), "scale_rewards": ("group", "batch", "none"),
                   "importance_sampling_level": ("token", "sequence"), "exploration": ("none", "dropout", "gaussian"),
                   "dropout_scope": ("rollout", "step")}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.generation_batch_size % self.num_generations:
            raise ValueError("generation_batch_size must be a multiple of num_generations")
        if self.generation_batch_size % self.per_device_train_batch_size:
            raise ValueError("generation_batch_size must be a multiple of per_device_train_batch_size")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError("reward_weights needs one weight per reward function")

    def exploration_kwargs(self) -> dict:
        if self.exploration == "dropout":
            return dict(p=self.dropout_p, scope=self.dropout_scope, sites=tuple(self.dropout_sites),
                        cover_prefill=self.dropout_cover_prefill, cover_answer=self.dropout_cover_answer)  # fmt: skip
        if self.exploration == "gaussian":
            return dict(sigma=self.gaussian_sigma, scope=self.dropout_scope)
        return {}
