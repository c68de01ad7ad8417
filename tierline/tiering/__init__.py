"""Tiering: which tier each job belongs to, and why."""
