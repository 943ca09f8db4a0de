"""Verdict types, one file per critic, and a plain dict registry (see DESIGN.md)."""
