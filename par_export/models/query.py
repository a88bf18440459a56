"""Prompt -> query embedding for PAR's retrieval step, in CLIP or LLM space (docs/par.md, step 2)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import transformers
from torch import nn

from par_export.models.loading import check_model_folder, load_matching, pretrained_kwargs
from par_export.reduce.prompt import rewrite_prompt


class QueryEncoder(nn.Module):
    """Shared text handling: rewrite the prompts, tokenize with truncation, warn once.

    Subclasses give ``embed(input_ids, attention_mask) -> ([B, P, Dq], [B, P])`` and
    ``visual_projection``: the module mapping visual tokens ``[B, N, Dv]`` into the
    same space, which the reducer applies before the cosine.
    """

    visual_projection: nn.Module

    def __init__(self, tokenizer, max_length: int, rewrite: str = "template", template: str = "a photo of {rest}"):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.rewrite = rewrite
        self.template = template

    def queries(self, prompts: list[str]) -> list[str]:
        """The retrieval query of each prompt (``""`` when nothing is left)."""
        return [rewrite_prompt(p, self.template, self.rewrite) for p in prompts]

    def tokenize(self, texts: list[str], add_special_tokens: bool) -> tuple[torch.Tensor, torch.Tensor]:
        full = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        too_long = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        if too_long:
            warnings.warn(
                f"prompt(s) {too_long} exceed the query encoder's {self.max_length} tokens and were truncated",
                stacklevel=3,
            )
        batch = self.tokenizer(
            texts,
            add_special_tokens=add_special_tokens,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``prompt_embedding [B, P, Dq]`` and ``prompt_mask [B, P]``.

        An empty query (no prompt, or only boilerplate) gets an all-zero mask, so the
        reducer falls back to prompt-agnostic relevance for that image.
        """
        texts = self.queries(prompts)
        has_text = torch.tensor([bool(t) for t in texts])
        input_ids, attention_mask = self.tokenize([t if t else "." for t in texts], self.add_special_tokens)
        device = self.device()
        embedding, mask = self.embed(input_ids.to(device), attention_mask.to(device))
        return embedding, mask * has_text.to(device).unsqueeze(-1).to(mask.dtype)

    def device(self) -> torch.device:
        return next(self.parameters()).device


class ClipQueryEncoder(QueryEncoder):
    """``space=clip``: CLIP text tower + text projection, one joint-space vector per prompt.

    Visual tokens reach the joint space through the CLIP vision tower's
    ``post_layernorm`` and ``visual_projection``.
    """

    add_special_tokens = True

    def __init__(self, clip_model, tokenizer, rewrite: str = "template", template: str = "a photo of {rest}"):
        super().__init__(tokenizer, clip_model.config.text_config.max_position_embeddings, rewrite, template)
        self.text_model = clip_model.text_model
        self.text_projection = clip_model.text_projection
        self.visual_projection = nn.Sequential(clip_model.vision_model.post_layernorm, clip_model.visual_projection)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        query = self.text_projection(pooled).unsqueeze(1)  # [B, 1, Dj]
        return query, torch.ones(query.shape[:2], dtype=torch.long, device=query.device)

    @classmethod
    def from_pretrained(cls, path: str | Path, rewrite: str = "template", template: str = "a photo of {rest}", dtype=None):
        """Load a local CLIP checkpoint folder (``transformers.CLIPModel`` + its tokenizer)."""

        check_model_folder(path, ("clip",))
        clip = load_matching(transformers.CLIPModel, path, dtype=dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **pretrained_kwargs())
        return cls(clip.eval(), tokenizer, rewrite, template)


class LlmQueryEncoder(QueryEncoder):
    """``space=llm``: the LLM's input embeddings of the prompt tokens (mean-pooled by the
    reducer) against the visual tokens as the LLM receives them.

    The adapter projects the visual tokens once, before reducing (``space=llm`` reduces the
    projector's output), so they reach the reducer already in this space.
    """

    add_special_tokens = False

    def __init__(self, input_embeddings: nn.Module, tokenizer, max_length: int,
                 rewrite: str = "template", template: str = "a photo of {rest}"):
        super().__init__(tokenizer, max_length, rewrite, template)
        self.input_embeddings = input_embeddings
        self.visual_projection = nn.Identity()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_embeddings(input_ids), attention_mask
