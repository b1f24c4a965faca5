"""Argument types shared by the subcommands' parsers (argparse `type=` functions): a bad
value becomes argparse's one-line usage error with exit code 2."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1 (a count: connections, articles, files per batch)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
