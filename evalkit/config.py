"""Moved to evalkit.runner.config; this name stays while the layout moves."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("evalkit.runner.config")
