"""Evaluation helpers shared by the scoring tools (per-token prediction diagnostics)."""
