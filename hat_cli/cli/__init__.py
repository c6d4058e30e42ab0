"""Typer CLI (the only package that imports typer/rich)."""
