"""Experiments: method x seed sweeps, their statistics, tables and plots."""
