"""Step 1 of PAR: turn a chat prompt into a retrieval query (pure text)."""

from __future__ import annotations

import re

from par_export.errors import ParExportError

# Chat scaffolding of LLaVA-style templates: role tags and the image placeholder.
_SCAFFOLDING = re.compile(
    r"<image>|<\|[^|]*\|>|</?s>|\b(?:USER|ASSISTANT|SYSTEM|Human|Assistant|Gpt|GPT)\s*:",
    flags=re.IGNORECASE,
)
# Instruction boilerplate that says how to answer, not what to look at.
_BOILERPLATE = re.compile(
    r"answer the question using a single word or phrase\.?"
    r"|answer with the option'?s letter from the given choices directly\.?"
    r"|answer (?:the question )?(?:with|using|in) (?:a |one )?(?:single |short )?(?:word|phrase|sentence)s?\.?"
    r"|please answer (?:yes or no|briefly)\.?"
    r"|(?:be|keep it) (?:brief|short|concise)\.?",
    flags=re.IGNORECASE,
)
_LEADING_ARTICLE_OF_PHOTO = re.compile(r"^(?:a|an|the)\s+(?:photo|picture|image)\s+of\s+", re.IGNORECASE)


def strip_prompt(prompt: str) -> str:
    """The prompt without chat scaffolding and answer-format boilerplate."""
    text = _SCAFFOLDING.sub(" ", prompt)
    text = _BOILERPLATE.sub(" ", text)
    return " ".join(text.split())


def rewrite_prompt(prompt: str, template: str = "a photo of {rest}", mode: str = "template") -> str:
    """Retrieval query for ``prompt``; ``""`` when nothing is left to retrieve with.

    ``mode="template"`` strips scaffolding and boilerplate, then fills ``template``;
    ``mode="none"`` returns the stripped prompt unchanged. An empty result means
    "no prompt": the reducer then falls back to prompt-agnostic relevance.
    """
    if mode not in ("template", "none"):
        raise ParExportError(f"rewrite mode must be 'template' or 'none', got {mode!r}")
    rest = strip_prompt(prompt)
    if not rest:
        return ""
    if mode == "none":
        return rest
    rest = _LEADING_ARTICLE_OF_PHOTO.sub("", rest)
    return template.format(rest=rest)
