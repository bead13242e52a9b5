"""Evaluation helpers shared by the scoring tools: per-token prediction diagnostics
(:mod:`.diagnostics`) and a trained model's q_n on its test set (:mod:`.qn`)."""
