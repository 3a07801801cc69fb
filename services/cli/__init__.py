"""`nas`: the command line (`services.cli.main` assembles the sub-commands)."""

from services.cli.main import app, main

__all__ = ["app", "main"]
