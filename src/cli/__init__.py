"""Command-line entry points (`python -m src.cli.<name>`)."""
