"""What a server does with each request: prompt (or query token ids) + image (or pixels) [+ budget]
in; the artifact's reduced rows, K and kept indices out.

Independent of Triton: Triton's Python backend (:mod:`par_export.serving.triton_model`) hands it
the requests of one dynamic batch; tests and ``tools/load_test.py`` call it offline. A malformed
request gets a :class:`RequestError` (one line naming the problem) in its own slot and the rest of
the batch is answered: one bad request never fails the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from par_export.artifact import Artifact, Reduced
from par_export.artifact.query import check_prompt
from par_export.errors import ParExportError
from par_export.processing import InputError, decode_image


class RequestError(ParExportError):
    """A malformed request; the message (one line) goes back to the client."""


@dataclass
class ReduceRequest:
    """One image and its prompt. Give ``prompt`` or ``input_ids`` (the rewritten query's token ids,
    as the artifact's ``tokenizer/`` gives them), and ``image`` (encoded file bytes) or
    ``pixel_values [3, H, W]`` (the artifact's ``processor/`` output for one image, LLaVA-1.5 family)."""

    prompt: str | None = None
    input_ids: np.ndarray | None = None
    image: bytes | None = None
    pixel_values: np.ndarray | None = None
    budget: int | None = None


@dataclass
class _Prepared:
    feed: dict  # the vision graph's image inputs for this image, batch 1
    layout: object
    query: np.ndarray  # [1, Dq]
    budget: np.ndarray | None


class ReductionService:
    """One artifact's query encoder and vision+PAR graph, answering batches of requests.

    Constructing it checks the artifact (manifest, seal, verification, processor) without loading
    a graph; :meth:`open` (or ``with``) loads the sessions, :meth:`close` releases them.

    Args:
        artifact: a ``par-export build`` folder (refused unless its verification passed, as ``run``).
        allow_unverified: serve an artifact whose verification failed (``run --allow-unverified``).
    """

    def __init__(self, artifact: str | Path, allow_unverified: bool = False):
        self.artifact = Artifact.open(Path(artifact), allow_unverified)
        self.meta = self.artifact.metadata
        self.query = self.artifact.query
        # families whose N is fixed stack images into one call; the others run one image per call
        self.batch_max = self.artifact.batch_max
        self.embed_dim = self.artifact.row_width

    def open(self) -> ReductionService:
        self.artifact.activate()
        return self

    def close(self) -> None:
        self.artifact.close()

    def __enter__(self) -> ReductionService:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # one request -> graph inputs ---------------------------------------------------------------
    def _query(self, request: ReduceRequest) -> np.ndarray:
        if self.query is None:
            if request.input_ids is not None:
                raise RequestError("input_ids: this artifact's method takes no prompt (it has no query encoder)")
            return self.artifact.embed_prompt("")[0]
        if request.prompt is not None and request.input_ids is not None:
            raise RequestError("send either 'prompt' or 'input_ids', not both")
        if request.input_ids is not None:
            ids = np.asarray(request.input_ids)
            limit = self.query.settings.max_length
            vocab = len(self.query.tokenizer)
            if ids.ndim != 1 or not 1 <= ids.size <= limit:
                raise RequestError(f"input_ids must hold 1 to {limit} token ids, got shape {list(ids.shape)}")
            if ids.min() < 0 or ids.max() >= vocab:
                raise RequestError(f"input_ids must be in [0, {vocab}) (the artifact's tokenizer/), "
                                   f"got {int(ids.min())}..{int(ids.max())}")
            return self.query.embed_ids(ids, self.artifact.runners["query_encoder"])
        if request.prompt is None:
            raise RequestError("missing 'prompt' (the user's question) or 'input_ids'")
        try:
            check_prompt(request.prompt)
        except ParExportError as err:
            raise RequestError(str(err)) from None
        return self.artifact.embed_prompt(request.prompt)[0]

    def _image(self, request: ReduceRequest) -> tuple[dict, object]:
        if (request.image is None) == (request.pixel_values is None):
            raise RequestError("send exactly one of 'image' (encoded image bytes) and 'pixel_values'")
        if request.image is not None:
            return self.artifact.image_inputs([decode_image(request.image)])
        if self.artifact.contract.dynamic_tokens:
            raise RequestError(f"pixel_values: a {self.meta.family} image also needs the processor's other "
                               "outputs (its size or grid); send 'image' instead")
        pixels = np.asarray(request.pixel_values)
        size = self.meta.image_size
        if pixels.ndim == 4 and pixels.shape[0] == 1:
            pixels = pixels[0]
        if pixels.shape != (3, size, size):
            raise RequestError(f"pixel_values must be [3, {size}, {size}] (the artifact's processor/ output for "
                               f"one image), got {list(pixels.shape)}")
        if not np.isfinite(pixels).all():
            raise RequestError("pixel_values holds NaN or Inf")
        return self.artifact.pixel_inputs(pixels[None])

    def prepare(self, request: ReduceRequest) -> _Prepared:
        """Validate one request and compute its query; :class:`RequestError` says what is wrong."""
        try:
            budget = self.artifact.budget.feed(request.budget)
        except ParExportError as err:
            raise RequestError(str(err)) from None
        try:
            feed, layout = self._image(request)
            query = self._query(request)
        except InputError as err:
            raise RequestError(str(err)) from None
        return _Prepared(feed, layout, query, budget)

    # a batch of requests ----------------------------------------------------------------------
    def infer(self, requests: list[ReduceRequest]) -> list[Reduced | RequestError]:
        """One result per request, in order: :class:`Reduced`, or the :class:`RequestError` of a
        request that could not be served. Images that fit one call (same budget, same input
        shapes, at most ``batch_max``) run through the vision graph together."""
        results: list[Reduced | RequestError | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, _Prepared]]] = {}
        for i, request in enumerate(requests):
            try:
                prepared = self.prepare(request)
            except RequestError as err:
                results[i] = err
                continue
            key = (None if prepared.budget is None else int(prepared.budget),
                   tuple((name, value.shape) for name, value in sorted(prepared.feed.items())))
            if self.batch_max == 1:
                key = (i,)
            groups.setdefault(key, []).append((i, prepared))
        for members in groups.values():
            for start in range(0, len(members), self.batch_max):
                chunk = members[start:start + self.batch_max]
                try:
                    outputs = self._run_vision([p for _, p in chunk])
                except Exception as err:  # noqa: BLE001 - an engine failure fails this call's requests, not the server
                    for i, _ in chunk:
                        results[i] = RequestError(f"vision graph failed: {type(err).__name__}: {err}")
                    continue
                for j, (i, prepared) in enumerate(chunk):
                    one = outputs if len(chunk) == 1 else {k: v[j:j + 1] for k, v in outputs.items()}
                    results[i] = self.artifact.rows(one, prepared.layout)
        return results

    def _run_vision(self, chunk: list[_Prepared]) -> dict:
        feed = {name: np.concatenate([p.feed[name] for p in chunk]) for name in chunk[0].feed}
        budget = None if chunk[0].budget is None else int(chunk[0].budget)
        return self.artifact.infer_vision(feed, np.concatenate([p.query for p in chunk]), budget)
