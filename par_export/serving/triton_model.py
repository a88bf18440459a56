"""The Triton Python-backend model ``par reduce``: the repository ``par-export serve`` writes holds a
``par_reduce/1/model.py`` that imports :class:`TritonPythonModel` from here.

Triton's own Python backend (not PyTriton's ``bind``) because it answers each request of a dynamic
batch on its own: a malformed request gets an error response (``INVALID_ARG``, one line) while
the requests batched with it are answered. PyTriton 0.7 turns an exception into the same error
for every request of the batch.

Inputs (first axis: images of the request, ``max_batch_size > 0``), all optional as the service
checks: ``prompt`` BYTES ``[1]`` (UTF-8) or ``input_ids`` INT64 ``[-1]``; ``image`` BYTES ``[1]``
(an encoded image file) or ``pixel_values`` FP32 ``[3, H, W]``; ``budget`` INT64 ``[1]``.
Outputs: ``image_embeds`` FP32 ``[-1, D]`` (the rows the LLM receives; zero rows past an image's
own count when a request carries several images), ``num_kept`` INT64 ``[1]``, ``keep_index`` INT64
``[-1]`` (-1 past K).
"""

from __future__ import annotations

import json

import numpy as np

from par_export.artifact import Reduced
from par_export.serving.service import ReduceRequest, ReductionService, RequestError


def _text(value, name: str) -> str:
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise RequestError(f"{name} is not valid UTF-8") from None


def split_request(arrays: dict[str, np.ndarray]) -> list[ReduceRequest]:
    """One Triton request's inputs (``{name: [b, ...]}``, absent inputs left out) -> one
    :class:`ReduceRequest` per image."""
    sizes = {name: value.shape[0] for name, value in arrays.items()}
    if not sizes:
        raise RequestError("the request has no inputs; send 'prompt' (or 'input_ids') and 'image' "
                           "(or 'pixel_values')")
    count = next(iter(sizes.values()))
    out = []
    for b in range(count):
        request = ReduceRequest()
        if "prompt" in arrays:
            request.prompt = _text(arrays["prompt"][b].reshape(-1)[0], "prompt")
        if "input_ids" in arrays:
            request.input_ids = arrays["input_ids"][b]
        if "image" in arrays:
            data = arrays["image"][b].reshape(-1)[0]
            request.image = data if isinstance(data, bytes) else bytes(data)
        if "pixel_values" in arrays:
            request.pixel_values = arrays["pixel_values"][b]
        if "budget" in arrays:
            request.budget = int(arrays["budget"][b].reshape(-1)[0])
        out.append(request)
    return out


def stack_results(results: list[Reduced]) -> dict[str, np.ndarray]:
    """Per-image results -> the request's outputs, padded to its largest row and K counts."""
    rows = max(r.image_embeds.shape[0] for r in results)
    kept = max(r.num_kept for r in results)
    dim = results[0].image_embeds.shape[1]
    embeds = np.zeros((len(results), rows, dim), np.float32)
    index = np.full((len(results), kept), -1, np.int64)
    for b, r in enumerate(results):
        embeds[b, :r.image_embeds.shape[0]] = r.image_embeds
        index[b, :r.num_kept] = r.keep_index
    return {"image_embeds": embeds, "num_kept": np.array([[r.num_kept] for r in results], np.int64),
            "keep_index": index}


INPUTS = ("prompt", "input_ids", "image", "pixel_values", "budget")


class TritonPythonModel:
    """Triton calls ``initialize`` once per instance, ``execute`` with each dynamic batch."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.service = ReductionService(params["artifact"],
                                        allow_unverified=params.get("allow_unverified") == "1").open()

    def execute(self, requests: list) -> list:
        # exists only inside Triton's Python backend stub, which runs this file
        import triton_python_backend_utils as pb_utils  # noqa: PLC0415

        def error(message: str, code=None):
            code = pb_utils.TritonError.INVALID_ARG if code is None else code
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

        responses: list = [None] * len(requests)
        images: list[ReduceRequest] = []
        owners: list[tuple[int, int]] = []  # (request, count) in order
        for i, request in enumerate(requests):
            if request.is_cancelled():  # the client went away while it waited in the queue
                responses[i] = error("cancelled", pb_utils.TritonError.CANCELLED)
                continue
            arrays = {}
            for name in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    arrays[name] = tensor.as_numpy()
            try:
                split = split_request(arrays)
            except RequestError as err:
                responses[i] = error(str(err))
                continue
            images += split
            owners.append((i, len(split)))
        results = self.service.infer(images)
        cursor = 0
        for i, count in owners:
            mine, cursor = results[cursor:cursor + count], cursor + count
            failed = [(b, r) for b, r in enumerate(mine) if isinstance(r, RequestError)]
            if failed:
                b, err = failed[0]
                responses[i] = error(str(err) if count == 1 else f"image {b}: {err}")
                continue
            outputs = stack_results(mine)
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in outputs.items()])
        return responses

    def finalize(self) -> None:
        self.service.close()
