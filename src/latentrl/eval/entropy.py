"""``latentrl analyze entropy``: the entropy of internal layer and module policies (BuPO, DESIGN §2.4).

For every layer l of the model and every generated token, the entropy of

- the residual read-out ``pi^l = softmax(H_l W_U)`` (HF's convention: ``H_l`` the raw output of block l
  for l < L, and ``H_L`` after the final norm, so layer L is the full policy; with ``final_norm`` every
  layer is read after the final norm, the logit lens),
- the attention read-out (block l's attention output ``A_l``) and the FFN read-out (its MLP output ``F_l``),

at the positions whose distribution produced each generated token (those the update's log-probs use),
and each module's entropy change ``dH = H(read-out of its output) - H(read-out of its input)``
(attention: the block's normed input; FFN: the normed post-attention state). In Coconut and soft
modes the same is reported per thinking step (the positions of the latent thoughts, or of the soft steps).

Shape legend: ``B`` rows, ``L`` sequence columns, ``D`` hidden size, ``V`` vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from latentrl.config import Config
from latentrl.models.readout import ban_never_sampled, final_norm, layer_logits, token_entropy, unembedding

TAPS = {"attn": ("attn", "self_attn", "self_attention", "attention"), "ffn": ("mlp", "feed_forward", "ffn"),
        "attn_in": ("ln_1", "input_layernorm"), "ffn_in": ("ln_2", "post_attention_layernorm")}  # fmt: skip


READOUTS = ("residual", "attn", "ffn", "attn_in", "ffn_in")


class EntropyConfig(Config):
    """Config of ``latentrl analyze entropy``."""

    checkpoint: str = Field(min_length=1, description="Checkpoint directory.")
    task: str | None = Field(None, description="Task name (synthetic) or file format.")
    data_path: str | None = Field(None, description="A data file (JSONL, or the format of task).")
    split: Literal["train", "validation", "test"] = Field("test", description="Split of a synthetic task.")
    n: int = Field(100, ge=1, description="Problems generated and analysed.")
    samples: int = Field(1, ge=1, description="Completions per problem (1: greedy).")
    temperature: float = Field(1.0, ge=0, description="Temperature of sampled completions (samples > 1).")
    max_new_tokens: int = Field(64, ge=1, description="Completion length cap.")
    final_norm: bool = Field(False, description="Read every layer after the final norm (the logit lens).")
    readouts: list[Literal[READOUTS]] = Field(  # type: ignore[valid-type]
        list(READOUTS), min_length=1,
        description="Read-outs computed; each is a [tokens, V] matmul per layer, so on a large vocabulary leave out "
                    "those not needed (residual is always computed; delta_* need a module's _in too).",
    )  # fmt: skip
    batch_size: int = Field(16, ge=1, description="Prompts per batch.")
    seed: int = Field(0, description="Seed of the task data and of sampling.")
    task_kwargs: dict[str, int | float | str] = Field({}, description="Generator knobs.")
    out: str = Field("runs/entropy", min_length=1, description="Output directory.")


class ModuleTaps:
    """Forward hooks keeping, per block, its output, its attention and FFN outputs and their normed inputs.

    Each model call appends its ``[B, S, D]`` pieces; the latent forward calls the model once per segment
    (prefix, each thought, the rest), so concatenating along positions gives the whole sequence.
    """

    def __init__(self, model: torch.nn.Module):
        from latentrl.exploration.dropout import decoder_blocks

        self.blocks = list(decoder_blocks(model))
        self.modules = []
        for i, block in enumerate(self.blocks):
            found = {"block": block}
            for kind, names in TAPS.items():
                module = next((getattr(block, n) for n in names if isinstance(getattr(block, n, None), torch.nn.Module)), None)
                if module is None:
                    raise ValueError(f"cannot read the {kind} of {type(model).__name__} block {i} ({type(block).__name__}); "
                                     "supported: GPT-2, Llama, Qwen2 and look-alikes")  # fmt: skip
                found[kind] = module
            self.modules.append(found)
        self.store: dict[tuple[int, str], list[torch.Tensor]] = {}
        self.handles = []

    def __enter__(self) -> ModuleTaps:
        for i, found in enumerate(self.modules):
            for kind, module in found.items():
                self.handles.append(module.register_forward_hook(self._hook(i, kind)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, layer: int, kind: str):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            self.store.setdefault((layer, kind), []).append(x.detach())

        return hook

    def get(self, layer: int, kind: str) -> torch.Tensor:  # [B, L, D]
        return torch.cat(self.store[(layer, kind)], dim=1)


@dataclass
class EntropyTable:
    """Sums of entropies over the analysed positions, per layer and read-out."""

    layers: int
    sums: dict[str, list[float]] = field(default_factory=dict)  # read-out -> per layer
    count: int = 0
    steps: dict[str, list[list[float]]] = field(default_factory=dict)  # read-out -> [layer][thinking step]
    step_counts: list[int] = field(default_factory=list)

    def add(self, name: str, layer: int, entropy: torch.Tensor, mask: torch.Tensor, step_of: torch.Tensor | None) -> None:
        """``entropy [B, L]`` at the positions of ``mask [B, L]``; ``step_of [B, L]`` (-1: none) the thinking step."""
        row = self.sums.setdefault(name, [0.0] * self.layers)
        row[layer] += float(entropy[mask].sum())
        if step_of is not None and (step_of >= 0).any():
            n = int(step_of.max()) + 1
            grid = self.steps.setdefault(name, [[] for _ in range(self.layers)])
            while len(grid[layer]) < n:
                grid[layer].append(0.0)
            for s in range(n):
                grid[layer][s] += float(entropy[step_of == s].sum())
            if name == "residual" and layer == 0:
                while len(self.step_counts) < n:
                    self.step_counts.append(0)
                for s in range(n):
                    self.step_counts[s] += int((step_of == s).sum())

    def result(self) -> dict:
        means = {k: [v / max(1, self.count) for v in row] for k, row in self.sums.items()}
        out = {"layers": self.layers, "tokens": self.count, **means}
        for module in ("attn", "ffn"):
            if module in means and f"{module}_in" in means:
                out[f"delta_{module}"] = [a - b for a, b in zip(means[module], means[f"{module}_in"])]
        if self.steps:
            out["per_thinking_step"] = {k: [[v / max(1, c) for v, c in zip(row, self.step_counts)] for row in grid]
                                        for k, grid in self.steps.items()}  # fmt: skip
            out["thinking_step_counts"] = self.step_counts
        return out


def thinking_step_index(record) -> torch.Tensor:
    """``[B, P+T]`` the thinking step of each sequence position (-1 elsewhere): the latent slots of a
    Coconut prompt, or the positions whose output chose each soft thinking step."""
    B, P = record.prompt_ids.shape
    T = record.completion_ids.shape[1]
    step = torch.full((B, P + T), -1, dtype=torch.long, device=record.prompt_ids.device)
    if getattr(record, "soft", None) is not None:
        soft = record.soft.soft_mask
        step[:, P - 1 : P - 1 + T] = torch.where(soft, soft.long().cumsum(1) - 1, -1)
    elif record.latent_mask.any():
        latent = record.latent_mask
        step[:, :P] = torch.where(latent, latent.long().cumsum(1) - 1, -1)
    return step


@torch.no_grad()
def analyze_batch(model, record, table: EntropyTable, use_final_norm: bool, readouts=READOUTS) -> None:
    """Add one generated batch's entropies to ``table``: one teacher-forced forward under the taps."""
    from latentrl.models.latent import latent_forward
    from latentrl.models.thinking.soft import soft_completion_logits

    P, T = record.prompt_ids.shape[1], record.completion_ids.shape[1]
    with ModuleTaps(model) as taps:
        if getattr(record, "soft", None) is not None:
            soft_completion_logits(model, record.prompt_ids, record.prompt_mask, record.completion_ids,
                                   record.completion_mask, record.soft)  # fmt: skip
        else:
            ids = torch.cat([record.prompt_ids, record.completion_ids], dim=1)
            mask = torch.cat([record.prompt_mask, record.completion_mask], dim=1)
            latent = torch.cat([record.latent_mask, torch.zeros_like(record.completion_mask, dtype=torch.bool)], dim=1)
            latent_forward(model, ids, mask, latent)
    scored = torch.zeros((record.prompt_ids.shape[0], P + T), dtype=torch.bool, device=record.prompt_ids.device)
    scored[:, P - 1 : P - 1 + T] = record.completion_mask.bool()  # the positions that chose each generated token
    steps = thinking_step_index(record)
    used = scored | (steps >= 0)  # read out only where something is averaged: [N] positions, not [B, P+T]
    W, norm, last = unembedding(model), final_norm(model), len(taps.modules) - 1
    for layer in range(len(taps.modules)):
        for name in ["residual"] + [r for r in READOUTS[1:] if r in readouts]:
            x = taps.get(layer, "block" if name == "residual" else name)[:, : P + T][used]  # [N, D]
            normed = use_final_norm or (name == "residual" and layer == last)  # HF: hidden_states[L] is normed
            entropy = torch.zeros(used.shape, device=x.device)
            entropy[used] = token_entropy(ban_never_sampled(model, layer_logits(x[None], W, norm if normed else None)))[0]
            table.add(name, layer, entropy, scored, steps)
    table.count += int(scored.sum())


def run_entropy(cfg: EntropyConfig) -> dict:
    """Generate in the checkpoint's thinking mode, analyse, write ``entropy.json``, ``tokens.jsonl``, PNGs."""
    from latentrl.exploration import NoExploration
    from latentrl.fsutil import atomic_write_text, check_output_dir
    from latentrl.models import load_checkpoint
    from latentrl.models.layout import encode_prompt
    from latentrl.models.thinking import thinking_mode
    from latentrl.tasks import load_examples

    if cfg.task is None and cfg.data_path is None:
        raise ValueError("give --task NAME or --data FILE")
    out = Path(cfg.out)
    check_output_dir(out, what="out")
    examples = load_examples(cfg.task or "jsonl", cfg.split, cfg.n, cfg.seed, cfg.data_path, **cfg.task_kwargs)
    model, tokenizer, thinking = load_checkpoint(cfg.checkpoint)
    model.eval()
    mode, table, rows = thinking_mode(thinking.thinking_mode), EntropyTable(len(ModuleTaps(model).modules)), []
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    prompts = [encode_prompt(tokenizer, ex.question, thinking) for ex in examples]
    for i in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[i : i + cfg.batch_size]
        gen = mode.generate(model, chunk, thinking, exploration=NoExploration(), eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, num_generations=cfg.samples,
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature if cfg.samples > 1 else 0.0,
                            generator=generator)  # fmt: skip
        analyze_batch(model, gen, table, cfg.final_norm, cfg.readouts)
        rows += [{"prompt_ids": p, "completion_ids": c} for p, c in zip([p for p in chunk for _ in range(cfg.samples)],
                                                                         gen.completion_lists())]  # fmt: skip
    result = {"checkpoint": cfg.checkpoint, "thinking_mode": thinking.thinking_mode, "final_norm": cfg.final_norm,
              "n": len(examples), "samples": cfg.samples, **table.result()}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "entropy.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "tokens.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    plot_entropy(result, out)
    return result


def plot_entropy(result: dict, out: Path) -> None:
    """``entropy_by_layer.png`` (each read-out), and ``thinking_heatmap.png`` (layer x thinking step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(1, result["layers"] + 1))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in (n for n in ("residual", "attn", "ffn") if n in result):
        ax.plot(layers, result[name], marker="o", label=name)
    ax.set(xlabel="layer", ylabel="mean entropy (nats)", title=f"read-outs{' (final norm)' if result['final_norm'] else ''}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "entropy_by_layer.png", dpi=120)
    plt.close(fig)
    grid = result.get("per_thinking_step", {}).get("residual")
    if grid and grid[0]:
        fig, ax = plt.subplots(figsize=(6, 4))
        image = ax.imshow(grid, aspect="auto", origin="lower", extent=(0.5, len(grid[0]) + 0.5, 0.5, len(grid) + 0.5))
        ax.set(xlabel="thinking step", ylabel="layer", title="residual read-out entropy")
        fig.colorbar(image, ax=ax, label="nats")
        fig.tight_layout()
        fig.savefig(out / "thinking_heatmap.png", dpi=120)
        plt.close(fig)
