"""Declarative description of what is exported (in the spirit of Optimum's OnnxConfig): graph specs,
the base export config every family's config extends, and the validation :class:`Case`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Opset 17: the first with a native LayerNormalization, parsed by TensorRT 8.6+ and
# 10.x (which reads opsets 9-20+), and the TorchScript exporter's well-trodden range.
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class GraphSpec:
    """Names and dynamic axes of one exported graph."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


@dataclass
class Case:
    """One parity case: a named feed for ONNX Runtime and the same inputs for torch."""

    name: str
    feed: dict[str, np.ndarray]


@dataclass(frozen=True)
class VisionParOnnxConfig:
    """The two graphs of a model whose vision graph takes ``pixel_values [B, 3, H, W]``.

    A family subclasses it in its module with the dummy inputs and validation cases of
    its own geometry (see ``LlavaOnnxConfig`` in :mod:`par_export.models.llava`).

    Attributes:
        budget_input: the vision graph takes ``budget`` (0-d int64, K <= k_max) as an
            input; ``False`` for adaptive K (``"auto"``) or a reducer whose K is fixed
            at trace time (``pool``).
        opset: ONNX opset.
        batch_max: largest batch the graphs are validated and bounded for.
        fp16: weights and activations in float16 (the reducer's scores stay fp32).
    """

    validation_batches = (1, 2, 4)  # of images, where the vision graph takes a batch
    validation_budgets = (16, 64, 192)
    query_batches = (1, 2, 4)  # of prompts, for query_encoder
    validation_prompts = ("USER: <image>\nWhat color is the circle? Answer the question using a single word or phrase.",
                          "Is there a red square on the left?", "", "how many stars are there")
    dynamic_tokens = False  # True: N differs per image (the token axis of the reducer is dynamic)

    budget_input: bool
    opset: int = DEFAULT_OPSET
    batch_max: int = 8
    fp16: bool = False

    @property
    def vision_par(self) -> GraphSpec:
        inputs = ("pixel_values", "query_embeds") + (("budget",) if self.budget_input else ())
        batch = {0: "batch"}
        return GraphSpec(
            name="vision_par",
            inputs=inputs,
            outputs=("image_embeds", "num_kept", "keep_index"),
            dynamic_axes={"pixel_values": batch, "query_embeds": batch, "image_embeds": batch,
                          "num_kept": batch, "keep_index": batch},
        )

    @property
    def query_encoder(self) -> GraphSpec:
        text = {0: "batch", 1: "sequence"}
        return GraphSpec(
            name="query_encoder",
            inputs=("input_ids", "attention_mask"),
            outputs=("query_embeds",),
            dynamic_axes={"input_ids": text, "attention_mask": text, "query_embeds": {0: "batch"}},
        )

    def case(self, name: str, feed: dict, budget):
        """A validation case: ``feed`` plus the ``budget`` input where the graph takes one."""
        if self.budget_input:
            feed["budget"] = np.array(budget, dtype=np.int64)
        return Case(f"{name} budget={budget}", feed)

    def query_cases(self, adapter, batch_max: int | None = None) -> list:
        """Tokenized validation prompts for ``query_encoder`` (``adapter.query_encoder``), one case per batch size."""
        encoder, cases = adapter.query_encoder, []
        for batch in [b for b in self.query_batches if b <= (batch_max or self.batch_max)]:
            prompts = [self.validation_prompts[i % len(self.validation_prompts)] for i in range(batch)]
            ids, mask = encoder.tokenize([q or "." for q in encoder.queries(prompts)], encoder.add_special_tokens)
            cases.append(Case(f"batch={batch}", {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}))
        return cases

    def shape_bounds(self, max_sequence: int, geometry: dict | None = None) -> dict[str, dict[str, list[int]]]:
        """``{input: {axis: [min, max]}}`` for every dynamic input axis (TensorRT profiles);
        ``geometry``: the export metadata, for families whose bounds depend on the model."""
        batch = {"0": [1, self.batch_max]}
        return {
            "pixel_values": batch,
            "query_embeds": batch,
            "input_ids": {"0": [1, self.batch_max], "1": [1, max_sequence]},
            "attention_mask": {"0": [1, self.batch_max], "1": [1, max_sequence]},
        }
