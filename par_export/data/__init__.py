"""Procedural VQA data for the embedded demo model."""
