"""Fidelity of reduced-context answers against full tokens: ``par-export eval``."""
