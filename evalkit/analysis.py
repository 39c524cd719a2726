"""Moved to evalkit.results.read; this name stays while the layout moves."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("evalkit.results.read")
