"""Moved to evalkit.model.files; this name stays while the layout moves."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("evalkit.model.files")
