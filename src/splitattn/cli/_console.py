"""The rich console every command prints with."""

from __future__ import annotations


def make_console():
    """A rich Console; wide when output is not a terminal so tables are not cut to 80 columns."""
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=200)
