"""The latent forward pass and batched generation for every thinking mode.

Shape legend: ``B`` rows (prompts x rollouts), ``L`` sequence columns, ``P`` prompt columns,
``T`` completion tokens, ``D`` hidden size, ``V`` vocabulary, ``K`` latent columns.

At a ``<|latent|>`` slot the input embedding is replaced by the last-layer hidden state of the
previous position (HF ``hidden_states[-1]``, after the final norm). The efficient form: one forward
over the prefix before the first latent column, one cached single-position forward per latent
column, then one forward over the rest. Rows whose latents sit in different columns share a batch:
at a latent column, a row without a latent there just feeds its token embedding.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from latentrl.errors import FiniteWatch
from latentrl.exploration import Exploration, NoExploration
from latentrl.models.reserved_cache import ReservedLayer, reserved_cache
from latentrl.models.sampling import draw_table, sample_next, sampling_keys
from latentrl.models.thinking.logprobs import selected_logps
from latentrl.models.thinking.soft import SoftTrace  # noqa: F401  (the Generation field's type)


# The forward's KV-cache argument: transformers 5.24 renamed ``past_key_values=`` to ``cache=`` (the old
# name warns and is removed in 5.40); older releases only know ``past_key_values=``. The cache object is
# filled in place either way, so nothing reads it back from the output.
CACHE_KWARG = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: ``[B, L]`` -> ``[B, L]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class LatentOutput:
    logits: torch.Tensor | None  # [B, L - logits_from, V], or [B, 1, V] with last_only; None with hidden_only
    past_key_values: DynamicCache
    thoughts: torch.Tensor | None  # [B, K, D] the states fed back at the latent columns (zeros where a row had none)
    latent_columns: torch.Tensor | None  # [K] column index of each latent step
    hidden: torch.Tensor | None = None  # hidden_only: [B, L - logits_from, D] last-layer states in place of logits


SHAREABLE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer, ReservedLayer)  # layers whose rows batch_select_indices copies whole
SHARE_AT_LEAST = 0.1  # a shared prefill must save this fraction of the forward's positions
STATIC_BUCKET = 64  # static cache widths are multiples of this, so that a compiled step is reused across batches
# graphs one compiled forward may keep (torch's default, 8, is per code object, which every model of a class
# shares): a Coconut + dropout GRPO run compiling decoding and update needed 19 (grad on / off, calls of one
# position, which torch specialises, or of many, hooks on / off, a first call filling an empty cache, the
# reference model, a batch of one row); past the limit torch runs the rest eagerly, after one warning. Our
# compiled calls run under max(the user's limit, this); a lower limit a user set holds everywhere else
RECOMPILE_LIMIT = 64
# the limit's name: recompile_limit from torch 2.7, cache_size_limit before
_LIMIT_NAME = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def _step(model, embeds, attention_mask, position_ids, cache, keep: int | None):
    """One cached model call; ``keep``: the logits of only its last ``keep`` positions (None: all)."""
    return model(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **{CACHE_KWARG: cache},
        use_cache=True,
        output_hidden_states=True,
        logits_to_keep=0 if keep is None else keep,  # HF: 0 keeps every position
    )


class _Logits:
    """Collects the logits of positions ``[start, L)`` from the segments of one latent forward, asking each
    call only for the positions it needs (the LM head never runs on the rest: ``[B, L, V]`` is the largest
    tensor of a forward over a real vocabulary). ``hidden_only``: the last-layer hidden states of those
    positions instead, and the head runs on one position per call (HF's least)."""

    def __init__(self, start: int, hidden_only: bool = False):
        self.start, self.hidden_only, self.parts = start, hidden_only, []

    def keep(self, lo: int, hi: int) -> int | None:
        """``logits_to_keep`` for a segment covering positions ``[lo, hi)``."""
        need = hi - max(lo, self.start)
        return 1 if self.hidden_only else None if need >= hi - lo else max(need, 1)

    def wanted(self, out, lo: int, hi: int) -> torch.Tensor | None:
        """A call's logits (or hidden states) of the positions in ``[lo, hi)`` asked for: its last ``hi - max(lo, start)``."""
        if hi <= self.start:
            return None
        return (out.hidden_states[-1] if self.hidden_only else out.logits)[:, max(lo, self.start) - hi :]

    def add(self, part: torch.Tensor | None) -> None:
        if part is not None:
            self.parts.append(part)

    def run(self, model, embeds, mask, positions, cache, lo: int, hi: int):
        out = _step(model, embeds, mask, positions, cache, self.keep(lo, hi))
        self.add(self.wanted(out, lo, hi))
        return out

    def collected(self) -> torch.Tensor:  # [B, L - start, V] (or D)
        return self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts, dim=1)

    def output(self, cache, thoughts=None, columns=None) -> LatentOutput:
        part = self.collected()
        return LatentOutput(None if self.hidden_only else part, cache, thoughts, columns, part if self.hidden_only else None)


def latent_forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor,  # [B, L]
    latent_mask: torch.Tensor,  # [B, L] bool, True at <|latent|> slots
    exploration: Exploration | None = None,
    last_only: bool = False,
    prompt_len: int | None = None,
    logits_from: int = 0,
    cache=None,
    share_prefill: bool = False,
    hidden_only: bool = False,
    inputs_embeds: torch.Tensor | None = None,  # [B, L, D] in place of the ids' embeddings (soft thinking's)
    thought_step=None,
    forward=None,
) -> LatentOutput:
    """Forward with continuous thoughts; gradients flow through every thought. ``logits`` covers the
    positions ``[logits_from, L)`` (``last_only``: the last position only).

    The loop passes each part's phase to the exploration source: ``prefill`` before the first latent
    column, ``latent`` at each latent column, ``answer`` after the last. Without latent columns and
    with ``prompt_len`` (the completion follows the prompt), the prompt is the prefill and the rest
    the answer; the two run as two cached forwards only when a source is active, so that a plain
    forward stays one call. ``cache``: the KV cache to fill (default a new ``DynamicCache``; generation
    passes a ``reserved_cache`` or a ``StaticCache``).

    ``share_prefill``: rows whose prefill part is identical (a prompt and its G rollouts) run it once,
    and their KV cache rows are copies (autograd sums their gradients): the same result within float
    rounding, for a G-th of the prefill's cost. The caller promises that no hook reads per-row
    activations of the prefill (BuPO's tap does); it is skipped when ``exploration`` perturbs the prefill
    or the cache is not an empty ``DynamicCache``. ``hidden_only``: ``hidden`` holds the last-layer hidden
    states of those positions and ``logits`` is None (for a caller that applies the head itself, in chunks).
    ``inputs_embeds``: the inputs, where they are not the ids' embeddings (soft thinking's mixtures); the ids
    still decide which rows share a prefill, so there they must be the ids' embeddings. ``forward``: what runs
    the model calls in place of ``model`` (the update's compiled forward, :func:`compiled_step`); ``thought_step``
    (default ``forward``): what runs the single-position thought steps (generation's compiled decoding step).
    """
    exploration = exploration or NoExploration()
    call = forward or model
    embeds = model.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, D]
    positions = position_ids_from_mask(attention_mask)
    cache = DynamicCache(config=model.config) if cache is None else cache
    columns = latent_mask.any(0).nonzero().flatten()  # [K]
    L = input_ids.shape[1]
    logits = _Logits(L - 1 if last_only else logits_from, hidden_only)
    if len(columns) == 0:
        split = prompt_len if prompt_len is not None and 0 < prompt_len < L else L
        shared = _shared_rows(input_ids, attention_mask, split, exploration, cache) if share_prefill else None
        if shared is None and isinstance(exploration, NoExploration):
            split = L  # nothing differs between the phases: one call
        exploration.set_phase("prefill")
        _prefill(call, logits, embeds, attention_mask, positions, cache, split, shared)
        if split < L:
            exploration.set_phase("answer")
            logits.run(call, embeds[:, split:], attention_mask, positions[:, split:], cache, split, L)
        return logits.output(cache)
    first, last = int(columns[0]), int(columns[-1])
    if first == 0:
        raise ValueError("a latent slot cannot be the first column: it needs a previous hidden state")

    exploration.set_phase("prefill")
    shared = _shared_rows(input_ids, attention_mask, first, exploration, cache) if share_prefill else None
    h = _prefill(call, logits, embeds, attention_mask, positions, cache, first, shared)  # [B, D]
    thoughts = []
    for step, col in enumerate(range(first, last + 1)):
        exploration.set_phase("latent", step)
        is_latent = latent_mask[:, col, None]  # [B, 1]
        thought = exploration.thought(h, step)
        thoughts.append(torch.where(is_latent, thought, torch.zeros_like(thought)))
        x = torch.where(is_latent, thought, embeds[:, col])  # [B, D]
        out = logits.run(thought_step or call, x[:, None], attention_mask[:, : col + 1], positions[:, col : col + 1],
                         cache, col, col + 1)  # fmt: skip
        h = out.hidden_states[-1][:, -1]
    exploration.set_phase("answer")
    if last + 1 < L:
        logits.run(call, embeds[:, last + 1 :], attention_mask, positions[:, last + 1 :], cache, last + 1, L)
    return logits.output(cache, torch.stack(thoughts, dim=1), torch.arange(first, last + 1))


def _shared_rows(ids: torch.Tensor, mask: torch.Tensor, hi: int, exploration, cache):
    """Rows whose first ``hi`` ids and mask agree: ``(first [n], group [B])``, row ``first[j]`` standing
    for group ``j`` and row ``b`` in group ``group[b]``; None when sharing is unsafe or would save less than
    ``SHARE_AT_LEAST`` of the positions of ``ids``."""
    if getattr(exploration, "perturbs_prefill", True) or type(cache) is not DynamicCache or cache.get_seq_length() > 0:
        return None
    if any(type(layer) not in SHAREABLE_LAYERS for layer in cache.layers):  # e.g. linear attention's states
        return None
    distinct, group = torch.unique(torch.cat([ids[:, :hi], mask[:, :hi].to(ids.dtype)], 1), dim=0, return_inverse=True)
    (B, L), n = ids.shape, distinct.shape[0]
    if (B - n) * hi < SHARE_AT_LEAST * B * L:  # too little saved for a second call and the cache's copies
        return None
    rows = torch.arange(B, device=ids.device)
    first = torch.full((n,), B, device=ids.device).scatter_reduce(0, group, rows, "amin")
    return first, group


def _prefill(model, logits: _Logits, embeds, mask, positions, cache, hi: int, shared) -> torch.Tensor:
    """Positions ``[0, hi)`` as one call (over one row per group when ``shared``, then copied to every row
    of its group); returns the last hidden state ``[B, D]``."""
    if shared is None:
        return logits.run(model, embeds[:, :hi], mask[:, :hi], positions[:, :hi], cache, 0, hi).hidden_states[-1][:, -1]
    first, group = shared
    out = _step(model, embeds[first, :hi], mask[first, :hi], positions[first, :hi], cache, logits.keep(0, hi))
    cache.batch_select_indices(group)  # [n, ...] -> [B, ...]
    part = logits.wanted(out, 0, hi)
    logits.add(None if part is None else part[group])
    return out.hidden_states[-1][:, -1][group]


@dataclass
class Generation:
    """Output of :func:`generate`. Rows are grouped: rollouts of prompt i are rows ``i*G .. i*G+G-1``."""

    prompt_ids: torch.Tensor  # [B, P] left padded
    prompt_mask: torch.Tensor  # [B, P]
    latent_mask: torch.Tensor  # [B, P] bool
    completion_ids: torch.Tensor  # [B, T] right padded with pad id
    completion_mask: torch.Tensor  # [B, T] 1 up to and including eos
    sample_logps: torch.Tensor  # [B, T] log-prob of each sampled token under softmax(logits / T)
    truncated: torch.Tensor  # [B] bool, no eos within max_new_tokens
    thoughts: torch.Tensor | None  # [B, K, D]
    seeds: torch.Tensor  # [B] exploration seed of each row
    soft: "SoftTrace | None" = None  # soft thinking: what its thinking steps recorded (None in other modes)

    def thinking_steps(self) -> torch.Tensor:
        """``[B]`` thinking steps per row: latent thoughts, or soft steps."""
        if self.soft is not None:
            return self.soft.soft_mask.sum(1)
        return self.latent_mask.sum(1)

    def completion_lists(self) -> list[list[int]]:
        """Each row's completion ids, eos included, padding dropped."""
        return [ids[m.bool()].tolist() for ids, m in zip(self.completion_ids, self.completion_mask)]

    def decode(self, tokenizer) -> list[str]:
        """Each row's completion as text (special tokens skipped)."""
        return tokenizer.batch_decode(self.completion_lists(), skip_special_tokens=True)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` -> (ids ``[B, P]``, mask ``[B, P]``), right-aligned."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, P - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[b, P - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompts: list[list[int]],
    *,
    latent_token_id: int | None,
    eos_token_id: int,
    pad_token_id: int,
    num_generations: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    exploration: Exploration | None = None,
    seeds: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sync_every: int | None = None,
    compact_at: float = 0.25,
    cache_implementation: str = "dynamic",
    torch_compile: bool = False,
) -> Generation:
    """Batched generation: latent phase on the KV cache, then cached answer decoding.

    Row ``b`` carries ``seeds[b]`` (default ``b``): its exploration noise and, with one draw of
    ``generator``, its token draws (``latentrl.models.sampling``), so no row's tokens depend on the others
    (beyond rounding: the rows of one prompt share its prefill, whose batch is then the distinct prompts).
    The host reads which rows have finished every ``sync_every`` tokens (default: every token on the CPU,
    where the read is free; every 8 on an accelerator, where each read stalls the queue). When at least
    ``compact_at`` of the rows still in the batch have finished, they leave it: their KV cache, mask and
    noise rows are dropped (``compact_at=0``: never). Neither setting changes the result (beyond the rounding
    of a smaller batch's matmuls, which on a GPU's shape-dependent kernels can flip a draw that lies within
    rounding of a boundary); the columns decoded after the last row finished are cut off.

    The default (``"dynamic"``) KV cache reserves the prompt + ``max_new_tokens`` positions and attends over the
    filled ones (``reserved_cache``). ``cache_implementation="static"`` (HF's name): a ``StaticCache`` of those
    positions rounded up to a multiple of ``STATIC_BUCKET`` and a full-width attention mask, so every decoding
    step has the same shapes, and so do most batches of the same size (every row is prefilled and stays in the
    batch to the end). ``torch_compile``: the decoding step runs through ``torch.compile`` (shapes dynamic with
    the dynamic cache, the thought steps too; with the static cache static, and CUDA graphs on a GPU:
    ``mode="reduce-overhead"``; the thought steps, whose mask widths differ, then run eagerly).
    """
    exploration = exploration or NoExploration()
    device, static = model.device, cache_implementation == "static"
    prompt_ids, prompt_mask = (t.to(device) for t in left_pad([p for p in prompts for _ in range(num_generations)], pad_token_id))
    latent = prompt_ids == latent_token_id if latent_token_id is not None else torch.zeros_like(prompt_ids, dtype=torch.bool)
    latent &= prompt_mask.bool()
    B = prompt_ids.shape[0]
    seeds = torch.arange(B) if seeds is None else seeds
    keys = sampling_keys(seeds, generator).to(device) if temperature > 0 else None
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros((B, max_new_tokens), device=device)
    live, cache = _LiveRows.start(model, prompt_mask, keys, max_new_tokens, cache_implementation)
    decode_step = compiled_step(model, static) if torch_compile else model
    with exploration.session(model, seeds):
        out = latent_forward(model, prompt_ids, prompt_mask, latent, exploration, last_only=True, cache=cache,
                             share_prefill=True, thought_step=None if static else decode_step)  # fmt: skip
        cache, logits = out.past_key_values, out.logits[:, -1]
        finite = FiniteWatch(device)
        sync_every = sync_every or (1 if device.type == "cpu" else 8)
        if static or not hasattr(exploration, "select_rows"):  # a static batch keeps its rows; so does a source
            compact_at = 0.0  # that cannot drop them
        for t in range(max_new_tokens):
            exploration.set_phase("answer", t)  # the decoding steps are the answer phase
            logits = finite(logits)
            tok = torch.where(live.done, pad_token_id, sample_next(logits, temperature, top_p, live.draw(t)))
            tokens[live.rows, t] = tok
            logps[live.rows, t] = selected_logps(logits, tok, temperature)[0]
            live.done |= tok == eos_token_id
            if (t + 1) % sync_every == 0:
                finished = int(live.done.sum())
                if finished == len(live.rows):
                    break
                if compact_at > 0 and finished >= compact_at * len(live.rows):
                    tok = live.drop_finished(tok, cache, exploration)
            live.open_slot(t)
            kv = {CACHE_KWARG: cache}  # filled in place
            step = decode_step(input_ids=tok[:, None], attention_mask=live.mask, position_ids=live.next_pos, use_cache=True, **kv)
            logits, live.next_pos = step.logits[:, -1], live.next_pos + 1
    finite.check()
    return Generation(prompt_ids, prompt_mask, latent, *_cut_at_eos(tokens, logps, eos_token_id, pad_token_id),
                      out.thoughts, seeds)  # fmt: skip


def _cut_at_eos(tokens: torch.Tensor, logps: torch.Tensor, eos_token_id: int, pad_token_id: int):
    """Decoded ``tokens`` and ``logps [B, max_new]`` -> ``(completion [B, T], completion_mask, sample_logps,
    truncated [B])``: padding after each row's eos, the columns no row needed cut off."""
    is_eos = tokens == eos_token_id
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    T = int((~after_eos).any(0).sum())  # the columns some row still needed (a prefix)
    is_eos, after_eos = is_eos[:, :T], after_eos[:, :T]
    completion = tokens[:, :T].masked_fill(after_eos, pad_token_id)
    return completion, (~after_eos).long(), logps[:, :T].masked_fill(after_eos, 0.0), ~is_eos.any(1)


_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_STATIC_CACHES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def compiled_step(model: PreTrainedModel, static: bool):
    """The model's forward through ``torch.compile``, built once per model, device and cache kind (kept beside
    the model, not on it, so that a deep copy compiles its own): with a static cache the shapes never change,
    so on CUDA it records CUDA graphs (``reduce-overhead``); with the dynamic cache the length is marked
    dynamic. Hooks installed on the model (dropout sites, the layout-token ban) are traced with it. The
    dynamic one is also the update's forward (GRPO's ``torch_compile_update``): with gradients on, the same
    function compiles a graph of its own, forward and backward. Its calls may keep up to ``RECOMPILE_LIMIT``
    graphs (see there)."""
    steps = _COMPILED.setdefault(model, {})
    key = (static, model.device.type)
    if key not in steps:
        mode = "reduce-overhead" if static and model.device.type == "cuda" else None
        compiled = torch.compile(model.forward, mode=mode, dynamic=not static)

        def step(*args, **kwargs):
            config = torch._dynamo.config  # set and restored by hand: its patch() costs ~90 us a call, this ~3
            limit = getattr(config, _LIMIT_NAME)
            setattr(config, _LIMIT_NAME, max(limit, RECOMPILE_LIMIT))
            try:
                return compiled(*args, **kwargs)
            finally:
                setattr(config, _LIMIT_NAME, limit)

        step.__wrapped__ = compiled  # the compiled forward (tests read it)
        steps[key] = step
    return steps[key]


def static_cache(model: PreTrainedModel, batch: int, width: int) -> StaticCache:
    """A ``StaticCache`` of ``batch`` rows and ``width`` positions, the same object (reset) for every call of the
    same shape, so that a compiled step's CUDA graphs see the same cache addresses and replay."""
    caches = _STATIC_CACHES.setdefault(model, {})
    autocast = torch.get_autocast_dtype(model.device.type) if torch.is_autocast_enabled(model.device.type) else None
    key = (batch, width, model.device, model.dtype, autocast)  # the cache takes the dtype of its first keys
    if key in caches:
        caches[key].reset()
    else:
        caches[key] = StaticCache(config=model.config, max_cache_len=width)
    return caches[key]


DRAW_BLOCK = 64  # decoding steps whose token draws are hashed in one go (0.4 ms for 64 rows on a 2-core CPU)


@dataclass
class _LiveRows:
    """The rows still in the decoding batch: their index in the full batch and what their next step reads."""

    rows: torch.Tensor  # [b] row of the full batch
    mask: torch.Tensor  # [b, L] attention mask so far
    next_pos: torch.Tensor  # [b, 1] position of the next token
    keys: torch.Tensor | None  # [b] sampling keys (None: greedy)
    first_slot: int | None = None  # static cache: the mask column of the first decoded token (None: dynamic)
    done: torch.Tensor = None  # [b] bool, the row has emitted eos
    draws: torch.Tensor | None = None  # [b, DRAW_BLOCK] the token draws of steps draws_from.. (hashed a block at once)
    draws_from: int = 0

    def __post_init__(self):
        if self.done is None:
            self.done = torch.zeros_like(self.rows, dtype=torch.bool)

    @classmethod
    def start(cls, model, prompt_mask: torch.Tensor, keys, max_new_tokens: int, cache_implementation: str):
        """Every row, and the KV cache to prefill: a dynamic one with the prompt + new tokens' positions reserved
        (``reserved_cache``: no per-step concatenation), or the model's static cache of a width rounded up to
        ``STATIC_BUCKET`` (batches of other prompt lengths share its shapes) with a full-width mask."""
        if cache_implementation not in ("dynamic", "static"):
            raise ValueError(f"cache_implementation must be 'dynamic' or 'static', got {cache_implementation!r}")
        (B, P), device, static = prompt_mask.shape, prompt_mask.device, cache_implementation == "static"
        width = -(-(P + max_new_tokens) // STATIC_BUCKET) * STATIC_BUCKET
        mask = torch.cat([prompt_mask, torch.zeros_like(prompt_mask[:, :1]).expand(-1, width - P)], 1) if static else prompt_mask
        live = cls(torch.arange(B, device=device), mask, position_ids_from_mask(prompt_mask)[:, -1:] + 1, keys,
                   first_slot=P if static else None)  # fmt: skip
        return live, static_cache(model, B, width) if static else reserved_cache(model, P + max_new_tokens)

    def draw(self, t: int) -> torch.Tensor | None:
        """``[b]`` the live rows' token draws of decoding step ``t`` (None: greedy), from a table of
        ``DRAW_BLOCK`` steps hashed when the loop reaches it."""
        if self.keys is None:
            return None
        if self.draws is None or not self.draws_from <= t < self.draws_from + self.draws.shape[1]:
            self.draws, self.draws_from = draw_table(self.keys, DRAW_BLOCK, first=t), t
        return self.draws[:, t - self.draws_from]

    def open_slot(self, t: int) -> None:
        """The mask column of decoded token ``t`` opens: in place on the full-width mask of a static cache (the
        same tensor every step), else one more column."""
        if self.first_slot is not None:
            self.mask[:, self.first_slot + t] = 1
        else:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)

    def select(self, keep: torch.Tensor) -> None:
        """Only the rows ``keep [b']`` (indices into the current rows) stay."""
        self.rows, self.mask, self.next_pos, self.done = self.rows[keep], self.mask[keep], self.next_pos[keep], self.done[keep]
        self.keys = None if self.keys is None else self.keys[keep]
        self.draws = None if self.draws is None else self.draws[keep]

    def drop_finished(self, tok: torch.Tensor, cache: DynamicCache, exploration: Exploration) -> torch.Tensor:
        """Finished rows leave the batch (its KV cache and the exploration's rows too); returns ``tok``'s live rows."""
        keep = (~self.done).nonzero().flatten()  # [b']
        self.select(keep)
        cache.batch_select_indices(keep)
        exploration.select_rows(keep)
        return tok[keep]


@torch.no_grad()
def naive_generate(
    model: PreTrainedModel, prompt: list[int], *, latent_token_id: int | None, eos_token_id: int, max_new_tokens: int
) -> list[int]:
    """The definition, for tests and benchmarks: batch 1, no cache, the whole prefix recomputed at
    every thought and every answer token, greedy decoding."""
    embed = model.get_input_embeddings()
    seq = [embed.weight[t] for t in prompt]  # list of [D]
    for t, tok in enumerate(prompt):
        if tok == latent_token_id:
            hidden = model(inputs_embeds=torch.stack(seq[:t])[None], output_hidden_states=True).hidden_states[-1]
            seq[t] = hidden[0, -1]
    completion: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(inputs_embeds=torch.stack(seq)[None]).logits[0, -1]
        tok = int(logits.argmax())
        completion.append(tok)
        if tok == eos_token_id:
            break
        seq.append(embed.weight[tok])
    return completion
