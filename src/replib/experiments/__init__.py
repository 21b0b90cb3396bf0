"""Experiment runners shared across a chapter's claims (training runs, not library layers)."""
