"""The project's error type for bad input, kept free of imports so that CLI parsing and `--help` need no torch."""

from __future__ import annotations


class ShermanError(Exception):
    """An error caused by user input (bad file, bad flag, bad config). The CLI prints it as one line, exit 2."""
