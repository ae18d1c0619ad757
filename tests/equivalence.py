"""Assertions shared by the equivalence tests of two computations of the same log-probs."""

import torch


def assert_same_logps_and_grads(ours, ref) -> None:
    """``ours`` and ``ref``: ``(LogProbs, {parameter name: gradient})`` of two computations that must agree:
    log-probs and every parameter's gradient within 1e-5 (+ 1e-4 relative), entropies within 1e-4."""
    (lp, grads), (ref_lp, ref_grads) = ours, ref
    torch.testing.assert_close(lp.logps, ref_lp.logps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lp.entropy, ref_lp.entropy, atol=1e-4, rtol=1e-4)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
