"""The `evalkit` command: a thin shell over the Python API (same names).

    app.py      the command group, exit codes, one line for any failure
    run.py      run (and its dry run), tasks
    results.py  show, report, compare, gate, merge
    model.py    convert-gguf

Bad input is one line on stderr and exit code 2; a run that ends with errored samples
exits 3; Ctrl-C, SIGTERM and SIGHUP keep every answer that arrived and say how to resume
(exit 128 + the signal: 130, 143, 129).
"""

# the commands join the app as their modules are imported, and list in that order
from evalkit.cli import run  # noqa: F401

# isort: split
from evalkit.cli import results  # noqa: F401

# isort: split
from evalkit.cli import model  # noqa: F401
from evalkit.cli.app import EXIT_BAD_INPUT, EXIT_PARTIAL, app, main

__all__ = ["EXIT_BAD_INPUT", "EXIT_PARTIAL", "app", "main"]
