"""Evaluation: pass@k, maj@k and confidence intervals (``metrics``), and the tools built on them."""
