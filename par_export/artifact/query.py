"""The prompt side of an artifact: PAR's prompt rewrite and the artifact's query tokenizer."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import transformers

from par_export.artifact.metadata import QuerySettings
from par_export.errors import UsageError
from par_export.processing import load_pretrained
from par_export.reduce import PARConfig
from par_export.reduce.prompt import rewrite_prompt

QUERY_OPTIONS = ("rewrite", "template")
"""The PAR options applied outside an artifact's graphs (to the prompt, before the query encoder);
every other option is traced into ``vision_par.onnx`` at export."""

TOKENIZER_DIR = "tokenizer"

# A retrieval query is a question, not a document; the query encoder truncates at its
# max_length tokens anyway. The cap keeps a 100k-character body from tying up the tokenizer.
MAX_PROMPT_CHARS = 16_384


def check_prompt(prompt: str, label: str = "prompt") -> str:
    """``prompt`` if it holds a question of at most :data:`MAX_PROMPT_CHARS` characters; one line
    otherwise (the same rule for ``run``, ``chat`` and the server)."""
    if not prompt.strip():
        raise UsageError(f"{label} is empty: send the user's question")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UsageError(f"{label} has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    return prompt


def query_settings(settings: QuerySettings | None, par: list[str] | tuple = ()) -> QuerySettings | None:
    """``settings`` with ``--par NAME=VALUE`` overrides of :data:`QUERY_OPTIONS` applied; an override of
    an option the graph fixed at export, or any override for an artifact without a query encoder
    (``settings`` ``None``), is refused in one line naming it."""
    if not par:
        return settings
    PARConfig().with_overrides(par)  # unknown names and bad values: PARConfig's own message
    baked = sorted({item.split("=", 1)[0].strip() for item in par} - set(QUERY_OPTIONS))
    if baked:
        raise UsageError(f"--par {', '.join(baked)}: fixed in this artifact's graph when it was exported (see its "
                         f"manifest's metadata.config); export or build again with --par, or change only "
                         f"{' / '.join(QUERY_OPTIONS)} here")
    if settings is None:
        raise UsageError("--par: this artifact has no query encoder (a prompt-agnostic method); it takes no PAR option")
    config = PARConfig(rewrite=settings.rewrite, template=settings.template).with_overrides(par)
    return replace(settings, rewrite=config.rewrite, template=config.template)


class QueryInputs:
    """The artifact's query tokenizer (``tokenizer/``) and PAR's prompt rewrite, loaded once.

    Args:
        folder: the artifact folder.
        settings: the export's :class:`~par_export.artifact.metadata.QuerySettings`.
        dim: width of ``query_embeds`` (zeros are returned when the rewrite leaves nothing).
    """

    CACHE_SIZE = 1024
    """Query embeddings kept, keyed by the rewritten prompt (least recently used dropped first): a
    server asked the same question about many images encodes it once."""

    def __init__(self, folder: Path, settings: QuerySettings, dim: int):
        self.settings = settings
        self.dim = dim
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.tokenizer = load_pretrained(transformers.AutoTokenizer, Path(folder) / TOKENIZER_DIR)

    def rewrite(self, prompt: str) -> str:
        """PAR step 1: the query text the encoder sees."""
        return rewrite_prompt(prompt, self.settings.template, self.settings.rewrite)

    def embed(self, prompt: str, runner) -> tuple[np.ndarray, str]:
        """``query_embeds [1, Dq]`` float32 for one prompt, and the rewritten query."""
        query = self.rewrite(prompt)
        if not query:
            return np.zeros((1, self.dim), np.float32), query
        if query in self._cache:
            self._cache.move_to_end(query)
            return self._cache[query].copy(), query
        batch = self.tokenizer([query], add_special_tokens=self.settings.add_special_tokens, truncation=True,
                               max_length=self.settings.max_length, return_tensors="np")
        embedding = self.embed_ids(batch["input_ids"][0], runner)
        self._cache[query] = embedding.copy()
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return embedding, query

    def embed_ids(self, ids: np.ndarray, runner) -> np.ndarray:
        """``query_embeds [1, Dq]`` float32 of one tokenized query ``ids [P]``."""
        ids = np.asarray(ids, np.int64)[None]
        out = runner.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return out["query_embeds"].astype(np.float32)
