"""Thin entry points: ``blt <command>`` and ``python -m jobs.<command>`` (what ``ray job submit`` runs)."""
