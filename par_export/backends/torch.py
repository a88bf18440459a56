"""PyTorch runner: the reference every other backend is compared against."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from polygraphy.common import TensorMetadata

from par_export.backends.base import Runner
from par_export.errors import ParExportError


class TorchRunner(Runner):
    """Runs a traced module (``VisionParGraph``/``QueryGraph``) eagerly in fp32: the reference, as a
    Polygraphy runner (Polygraphy has none for PyTorch modules).

    Args:
        module: the ``nn.Module``.
        output_names: names of its outputs, in order.
        input_metadata: Polygraphy ``TensorMetadata`` of its inputs (:func:`feed_metadata`); needed
            only by ``Comparator.run``.
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, output_names: list[str], input_metadata=None, name: str | None = None):
        super().__init__(name)
        self.module = module.eval()
        self.output_names = output_names
        self.input_metadata = input_metadata
        self._inputs = [p for p in inspect.signature(module.forward).parameters]

    def get_input_metadata_impl(self) -> TensorMetadata:
        if self.input_metadata is None:
            raise ParExportError("TorchRunner: pass input_metadata (feed_metadata(feed)) to run it under Comparator")
        return self.input_metadata

    def input_names(self) -> list[str]:
        return self._inputs

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = []
        for name in self._inputs:
            if name not in feed:
                break
            value = torch.from_numpy(np.asarray(feed[name]))
            args.append(value.float() if value.is_floating_point() else value)
        with torch.no_grad():
            outputs = self.module(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {name: out.numpy() for name, out in zip(self.output_names, outputs)}


def feed_metadata(feed: dict) -> TensorMetadata:
    """Input names and dtypes of a feed (shapes left open: feeds of several sizes follow)."""
    metadata = TensorMetadata()
    for name, value in feed.items():
        metadata.add(name, dtype=np.asarray(value).dtype, shape=[-1] * np.ndim(value))
    return metadata
