"""Moved: answer parsers to evalkit.generators.parsers, intervals to evalkit.stats.intervals,
summary rows to evalkit.results.summary; this name stays while the layout moves."""
from evalkit.generators.parsers import *  # noqa: F403
from evalkit.results.summary import *  # noqa: F403
from evalkit.stats.intervals import *  # noqa: F403
