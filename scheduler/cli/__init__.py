"""The operator CLI (console script ``scheduler``): thin commands and their rendering."""

from scheduler.cli.commands import main

__all__ = ["main"]
