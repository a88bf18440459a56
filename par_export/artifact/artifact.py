"""One built artifact folder, opened once: checks, runners, processor, query encoder, and reduce.

``run``, ``verify``, the LLM pipeline, the Triton service and eval all open an artifact through
:class:`Artifact`; none of them reads the manifest or builds a runner itself::

    with Artifact.open("engines/demo-fp16") as art:
        (reduced,) = art.reduce([Image.open("scene.png")], ["what shape is the red object?"], budget=16)
        reduced.image_embeds  # [K, D] rows for the LLM
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from par_export.artifact.budget import Budget
from par_export.artifact.manifest import (
    ArtifactError,
    GraphEntry,
    Manifest,
    check_manifest,
    check_verified,
    read_manifest,
)
from par_export.artifact.metadata import ExportMetadata
from par_export.artifact.query import QueryInputs, query_settings
from par_export.backends.base import Runner
from par_export.backends.onnxruntime import OnnxRuntimeRunner
from par_export.backends.tensorrt import TensorRTRunner, gpu_info, tensorrt_version
from par_export.models.layouts import layout_for
from par_export.plugins import plugin_path
from par_export.processing import PROCESSOR_DIR, ModelInputs


@dataclass
class Reduced:
    """One image's reduction: ``image_embeds [R, D]`` float32, the rows the LLM receives (R = K;
    LLaVA-NeXT adds its newline rows), ``num_kept`` K, ``keep_index [K]`` int64 (ascending token
    indices), ``num_tokens`` N, and ``query`` (the rewritten prompt the query encoder saw)."""

    image_embeds: np.ndarray
    num_kept: int
    keep_index: np.ndarray
    num_tokens: int = 0
    query: str = ""


def cast_feed(feed: dict, graph: GraphEntry) -> dict:
    """Inputs in the dtypes the manifest records for ``graph`` (fp16 artifacts take fp16)."""
    dtypes = graph.input_dtypes
    return {k: v.astype(np.dtype(dtypes[k])) if k in dtypes else v for k, v in feed.items()}


def open_runners(folder: Path, manifest: Manifest) -> dict[str, Runner]:
    """A runner per graph (not yet activated), after refusing what this machine cannot run: a broken
    seal, another TensorRT version or GPU, a missing or different plugin library."""
    plugin = plugin_path() if manifest.plugin else None
    if manifest.backend == "tensorrt":
        # TensorRT itself is imported by the runner, only for a TensorRT artifact
        gpu = gpu_info() or {}
        check_manifest(folder, manifest, tensorrt_version(), gpu.get("compute_capability"), plugin)
        return {name: TensorRTRunner(folder / g.file, plugin) for name, g in manifest.graphs.items()}
    # ONNX Runtime serves par::TopKCluster with its Python op: no plugin library needed.
    check_manifest(folder, replace(manifest, plugin=None), None, None, None)
    return {name: OnnxRuntimeRunner(folder / g.file) for name, g in manifest.graphs.items()}


class Artifact:
    """A ``par-export build`` folder: its typed :class:`Manifest` and :class:`ExportMetadata`, a runner
    per graph, the checkpoint's processor (``processor/``), the query tokenizer and the family's input
    and output contract.

    :meth:`open` checks the manifest's schema, the seal, the verification (unless
    ``allow_unverified``) and what this machine can run, and loads the processor; graphs load on
    :meth:`activate` (or ``with``), which :meth:`reduce` does on first use.

    Args:
        folder: the artifact folder.
        allow_unverified: open an artifact whose verification failed or never ran.
        par: ``--par NAME=VALUE`` overrides of the prompt rewrite (the other options are in the graph).
    """

    def __init__(self, folder: str | Path, allow_unverified: bool = False, par: list[str] | tuple = ()):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not allow_unverified:
            check_verified(self.folder, self.manifest)
        self.runners = open_runners(self.folder, self.manifest)
        self.metadata: ExportMetadata = self.manifest.metadata
        self.budget: Budget = self.metadata.budget_rule
        self.contract = layout_for(self.metadata.family)  # the family's graph inputs and outputs (numpy)
        self.geometry = self.metadata.to_json()  # what the family's layout reads
        self.inputs = ModelInputs.from_folder(self.folder / PROCESSOR_DIR)
        self.query = self._query_inputs(par)

    @classmethod
    def open(cls, folder: str | Path, allow_unverified: bool = False, par: list[str] | tuple = ()) -> Artifact:
        """Same as the constructor; reads as ``Artifact.open(folder)``."""
        return cls(folder, allow_unverified, par)

    def _query_inputs(self, par) -> QueryInputs | None:
        settings = self.metadata.query
        if settings is not None and "query_encoder" not in self.manifest.graphs:
            # a graph that takes query_embeds but no encoder for them: every prompt would be ignored
            raise ArtifactError(f"{self.folder}: the export's metadata declares a query encoder but the manifest "
                                "has no query_encoder graph; build the artifact again from its export")
        settings = query_settings(settings, par)
        return None if settings is None else QueryInputs(self.folder, settings, self.metadata.query_dim)

    # life of the sessions ----------------------------------------------------------------------
    def activate(self) -> Artifact:
        for runner in self.runners.values():
            if not runner.is_active:
                runner.activate()
        return self

    def close(self) -> None:
        """Deactivate the runners still active (sessions held for a pipeline's or server's life)."""
        for runner in self.runners.values():
            if runner.is_active:
                runner.deactivate()

    def __enter__(self) -> Artifact:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    # what the artifact is ------------------------------------------------------------------------
    @property
    def row_width(self) -> int:
        """D of the ``image_embeds`` rows (the LLM's hidden size)."""
        return int(self.manifest.row_width)

    @property
    def batch_max(self) -> int:
        """Images one vision call takes: 1 where N differs per image, else the export's ``batch_max``."""
        return 1 if self.contract.dynamic_tokens else self.metadata.export.batch_max

    # the steps ---------------------------------------------------------------------------------
    def image_inputs(self, images: list) -> tuple[dict, object]:
        """The vision graph's image inputs for ``images`` (``PIL.Image``, through the checkpoint's own
        processor) and the layout :meth:`rows` needs."""
        return self.contract.image_feed(self.geometry, self.inputs.image_features(images))

    def pixel_inputs(self, pixel_values: np.ndarray) -> tuple[dict, object]:
        """Image inputs from processed ``pixel_values [B, 3, S, S]`` (fixed-size families only)."""
        return self.contract.image_feed(self.geometry, {"pixel_values": pixel_values})

    def embed_prompt(self, prompt: str) -> tuple[np.ndarray, str]:
        """``query_embeds [1, Dq]`` and the rewritten query; zeros and ``""`` without a query encoder."""
        if self.query is None:
            return np.zeros((1, self.metadata.query_dim), np.float32), ""
        return self.query.embed(prompt, self._active("query_encoder"))

    def infer_vision(self, image_feed: dict, queries: np.ndarray, budget: int | str | None = None) -> dict:
        """The vision graph's outputs for one call: ``image_feed`` (:meth:`image_inputs`), ``queries
        [B, Dq]``, ``budget`` as :meth:`Budget.feed` takes it."""
        feed = {**image_feed, "query_embeds": queries}
        k = self.budget.feed(budget)
        if k is not None:
            feed["budget"] = k
        return self._active("vision_par").infer(cast_feed(feed, self.manifest.graphs["vision_par"]))

    def rows(self, outputs: dict, layout, query: str = "") -> Reduced:
        """The first image of ``outputs`` as the LLM receives it."""
        k = int(outputs["num_kept"][0])
        return Reduced(np.ascontiguousarray(self.contract.rows(outputs, layout), np.float32), k,
                       outputs["keep_index"][0, :k].astype(np.int64), self.contract.num_tokens(self.geometry, layout),
                       query)

    def reduce(self, images: list, prompts: list[str], budget: int | str | None = None) -> list[Reduced]:
        """Each image reduced for its prompt (one vision call per image): a :class:`Reduced` each."""
        if len(images) != len(prompts):
            raise ArtifactError(f"{len(images)} images for {len(prompts)} prompts: one prompt per image")
        results = []
        for image, prompt in zip(images, prompts):
            feed, layout = self.image_inputs([image])
            query, rewritten = self.embed_prompt(prompt)
            results.append(self.rows(self.infer_vision(feed, query, budget), layout, rewritten))
        return results

    def _active(self, name: str) -> Runner:
        runner = self.runners[name]
        if not runner.is_active:
            runner.activate()
        return runner
