"""GPT-2's GELU as one fused op.

GPT-2 (``activation_function="gelu_new"``) and a few other families compute the tanh approximation of GELU,

    gelu(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))

in Python as seven element-wise ops (``NewGELUActivation``; ``FastGELUActivation`` writes the same function
another way). Autograd keeps the intermediates of each and runs as many ops again in the backward. torch has the
same function as one kernel, ``F.gelu(x, approximate="tanh")`` (HF's ``GELUTanh``, "gelu_pytorch_tanh"). On this
project's 2-core CPU it is 3.4x faster on a decoding step's ``[64, 512]`` activations (39 against 132 µs) and takes
the tiny GPT-2's update-sized forward and backward (64 × 40 positions) from 0.202 to 0.154 s
(``benchmarks/bench_kernels.py``).

:func:`use_fused_gelu` swaps the modules of a model that latentrl builds or loads. The result equals the
Python formula within float rounding (the tests hold both within 1e-6 of the formula in float64), so a sampled
token within rounding of its draw's boundary can flip. ``config.json`` keeps the model's own name, and a
checkpoint loads with plain ``transformers`` as before.
"""

from __future__ import annotations

from torch import nn
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

UNFUSED = (NewGELUActivation, FastGELUActivation)  # the tanh approximation written out in Python


def use_fused_gelu(model: nn.Module) -> int:
    """Replace every :data:`UNFUSED` submodule of ``model`` by ``GELUTanh`` (torch's fused kernel, in the module's
    train / eval mode); returns how many were replaced. Hooks on a replaced module would be lost, so a module that
    has any (torch's, or accelerate's ``_hf_hook`` of a dispatched model) is left as it is."""
    replaced = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) in UNFUSED and not _has_hooks(child):
                setattr(parent, name, GELUTanh().train(child.training))
                replaced += 1
    return replaced


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None) or hasattr(module, "_hf_hook"))  # fmt: skip
