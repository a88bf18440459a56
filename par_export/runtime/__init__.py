"""Reduced visual context paired with an LLM: ``VisionLanguagePipeline``."""

from par_export.runtime.pipeline import PromptError, VisionLanguagePipeline

__all__ = ["PromptError", "VisionLanguagePipeline"]
