"""Adapters: evalkit models seen through other harnesses' interfaces (lm-eval)."""
