"""Moved to evalkit.prompts.counters; this name stays while the layout moves."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("evalkit.prompts.counters")
