"""Query encoder + vision/PAR artifact on any backend, reduced embeddings spliced into the
prompt, generation by the LLM of Hugging Face transformers (``inputs_embeds``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from par_export.artifact import Artifact
from par_export.errors import ParExportError
from par_export.models.families import family_named
from par_export.processing import image_layout
from par_export.reduce import PARConfig

IMAGE = "<image>"


class PromptError(ParExportError):
    """A prompt the pipeline cannot place the image into; the message says why."""


class StepTimes:
    """A transformers streamer that records ``time.perf_counter()`` as each new token arrives
    (``generate`` first hands it the prompt, which is skipped)."""

    def __init__(self, times: list):
        self.times, self._prompt = times, True

    def put(self, value) -> None:
        if self._prompt:
            self._prompt = False
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generate_placed(model, adapter, model_inputs: dict, max_new_tokens: int, llm=None, min_new_tokens: int = 0,
                    step_times: list | None = None, pad_token_id: int | None = None) -> torch.Tensor:
    """Greedy generation from inputs whose rows (and M-RoPE positions) a family's adapter placed:
    the exported LLM over ONNX Runtime (``llm``, from ``adapter.prompt_embeds``) or transformers'
    ``generate``. Returns the prompt's ids and the new ones ``[B, T + new]``, as ``generate`` does;
    ``step_times`` gets the time each new token was chosen."""
    if llm is not None:
        embeds, mask, positions = adapter.prompt_embeds(model_inputs)
        new = llm.generate(embeds, mask, max_new_tokens, min_new_tokens, step_times, position_ids=positions)
        return torch.cat([model_inputs["input_ids"], torch.from_numpy(new)], dim=1)
    model.model.rope_deltas = None  # positions of this call (its position_ids), not of the previous one
    return model.generate(**model_inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                          do_sample=False, pad_token_id=pad_token_id,
                          streamer=None if step_times is None else StepTimes(step_times))


class VisionLanguagePipeline:
    """``pipe.generate(pixel_values [B, 3, H, W], prompts, budget=None)`` -> texts and timings
    (LLaVA-1.5), ``pipe.answer(images, questions, budget=None)`` (every family it serves).

    LLaVA-1.5: each prompt holds exactly one ``<image>``; it is replaced by that image's K reduced
    embeddings (K differs per image with an adaptive budget), the batch is left padded,
    and the LLM generates from ``inputs_embeds``.

    M-RoPE families (Qwen2.5-VL, Qwen3-VL: ``ModelFamily.places_rows``): each image (any size) is reduced by
    its own graph call, the family's adapter shrinks its run of image tokens in the processor's
    prompt to K and gives the kept rows their stock (t, h, w) positions
    (:meth:`reduced_inputs`); the LLM (transformers, or the exported one over ONNX Runtime)
    generates from those ids, rows and positions.

    Args:
        artifact: a ``par-export build`` folder (ONNX Runtime or TensorRT).
        model, tokenizer: the ``LlavaForConditionalGeneration`` whose language model answers
            (its input embeddings splice the prompt), and its tokenizer.
        llm: an :class:`~par_export.runtime.llm_onnx.OnnxRuntimeLLM` (batched loop over ONNX
            Runtime) or a :class:`~par_export.runtime.llm_genai.GenaiLLM` (onnxruntime-genai) to
            generate with instead of transformers.
    """

    def __init__(self, artifact: str | Path, model, tokenizer, llm=None, allow_unverified: bool = False,
                 par: list[str] | tuple = ()):
        self.folder = Path(artifact)
        self.artifact = Artifact.open(self.folder, allow_unverified, par)  # par: prompt-rewrite overrides
        self.manifest = self.artifact.manifest
        family = family_named(self.manifest.metadata.family)
        if not (family.pipeline or family.places_rows):
            raise PromptError(f"{self.folder}: a {family.name} artifact; the LLM pipeline (chat, emit, eval) serves "
                              "LLaVA-1.5 and M-RoPE families only so far (`par-export run` serves it)")
        self.family = family
        self.image_token = IMAGE if family.pipeline else family.image_token
        self._check_model(model, tokenizer)
        self.artifact.activate()
        self.inputs = self.artifact.inputs  # the checkpoint's processor
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.embed = model.get_input_embeddings()
        self.context = model.config.text_config.max_position_embeddings
        self.llm = llm
        # M-RoPE families: the adapter places rows and positions (its reducer is not used)
        self.adapter = None if family.pipeline else family.adapter(model, "par", PARConfig(space="llm"), tokenizer)

    def close(self) -> None:
        """Release the artifact's sessions (Polygraphy runners are activated for the pipeline's life)."""
        self.artifact.close()

    def __enter__(self) -> VisionLanguagePipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_model(self, model, tokenizer) -> None:
        """Refuse, before any output, a model the artifact was not exported from: the LLM width must
        be the rows' width and the image token the same id in the model, tokenizer and artifact."""
        meta = self.manifest.metadata
        width = self.manifest.row_width
        hidden = model.config.text_config.hidden_size
        if isinstance(width, int) and width != hidden:
            raise PromptError(f"{self.folder}: the artifact's rows are {width} wide, the model's LLM takes {hidden}: "
                              f"pass the model it was exported from ({meta.model})")
        ids = {"artifact": meta.image_token_id, "model config": getattr(model.config, "image_token_id", None),
               "tokenizer": tokenizer.convert_tokens_to_ids(self.image_token)}
        if len(set(ids.values())) != 1:
            raise PromptError(f"{self.folder}: image token ids differ ({ids}): pass the model it was exported from "
                              f"({meta.model})")

    def reduced_inputs(self, images: list, questions: list[str], budget: int | str | None = None) -> tuple[dict, list]:
        """M-RoPE families: the processor's prompts for ``images`` (``PIL.Image``, any sizes) and
        ``questions``, each image reduced by the artifact, as ``generate`` inputs (left padded,
        ``position_ids [4, B, T]``), and K per image."""
        if self.adapter is None:
            raise PromptError(f"{self.folder}: a {self.family.name} artifact splices pixel_values (generate)")
        reduced = self.artifact.reduce(images, questions, budget)
        encoded = self.inputs.encode(questions, images)
        rows = [torch.from_numpy(r.image_embeds).to(self.embed.weight.dtype) for r in reduced]
        model_inputs = self.adapter.inputs_from_rows(encoded["input_ids"], encoded["attention_mask"],
                                                     image_layout(encoded), rows,
                                                     [torch.from_numpy(r.keep_index) for r in reduced])
        return model_inputs, [r.num_kept for r in reduced]

    @torch.no_grad()
    def answer(self, images: list, questions: list[str], budget: int | str | None = None,
               max_new_tokens: int = 16) -> tuple[list[str], dict]:
        """Greedy answers to ``questions`` about ``images`` (``PIL.Image``) through the checkpoint's
        processor and chat template, the artifact's reduction and the LLM; and timings."""
        if len(images) != len(questions):
            raise PromptError(f"{len(images)} images for {len(questions)} questions: one image per question")
        if self.adapter is None:
            prompts = [self.inputs.chat_prompt(q) for q in questions]
            return self.generate(self.inputs.pixel_values(images), prompts, budget, max_new_tokens)
        start = time.perf_counter()
        model_inputs, kept = self.reduced_inputs(images, questions, budget)
        reduce_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        out = generate_placed(self.model, self.adapter, model_inputs, max_new_tokens, self.llm,
                              pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, model_inputs["input_ids"].shape[1]:]
        generate_ms = (time.perf_counter() - start) * 1e3
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return texts, {"vision_reduce_ms": reduce_ms, "generate_ms": generate_ms, "num_kept": kept,
                       "context_tokens": model_inputs["attention_mask"].sum(dim=1).tolist(),
                       "new_tokens": int(new.shape[1])}

    def reduce(self, pixel_values: np.ndarray, prompts: list[str], budget: int | None = None):
        """Reduced embeddings ``[B, W, D]`` and K ``[B]`` for images and their prompts."""
        queries = np.concatenate([self.artifact.embed_prompt(prompt.replace(IMAGE, " "))[0] for prompt in prompts])
        image_feed, _ = self.artifact.pixel_inputs(pixel_values.astype(np.float32))
        out = self.artifact.infer_vision(image_feed, queries, budget)
        return out["image_embeds"], out["num_kept"]

    def split_prompts(self, prompts: list[str], num_kept: np.ndarray) -> list[tuple[list[int], list[int]]]:
        """``(ids before, ids after)`` the image of each prompt, checked: one ``<image>`` per prompt,
        and the prompt with its K image tokens within the LLM's context."""
        parts = []
        for b, prompt in enumerate(prompts):
            if prompt.count(IMAGE) != 1:
                raise PromptError(f"prompt {b} holds {prompt.count(IMAGE)} '{IMAGE}' placeholders; exactly one "
                                  "per prompt (one image each) is expected")
            before, after = prompt.split(IMAGE)
            ids_before = self.tokenizer(before)["input_ids"]
            ids_after = self.tokenizer(after, add_special_tokens=False)["input_ids"]
            k = int(num_kept[b])
            if len(ids_before) + k + len(ids_after) > self.context:
                raise PromptError(f"prompt {b} needs {len(ids_before) + k + len(ids_after)} positions, more than "
                                  f"the LLM's context of {self.context}")
            parts.append((ids_before, ids_after))
        return parts

    def splice(self, prompts: list[str], image_embeds: np.ndarray, num_kept: np.ndarray):
        """``inputs_embeds [B, T, D]`` and ``attention_mask [B, T]``, left padded."""
        rows = []
        for b, (ids_before, ids_after) in enumerate(self.split_prompts(prompts, num_kept)):
            k = int(num_kept[b])
            with torch.no_grad():
                parts = [self.embed(torch.tensor(ids_before)),
                         torch.from_numpy(image_embeds[b, :k].astype(np.float32)).to(self.embed.weight.dtype),
                         self.embed(torch.tensor(ids_after, dtype=torch.long))]
            rows.append(torch.cat(parts))
        length = max(len(r) for r in rows)
        embeds = torch.zeros(len(rows), length, rows[0].shape[-1], dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for b, row in enumerate(rows):
            embeds[b, length - len(row):] = row
            mask[b, length - len(row):] = 1
        return embeds, mask

    def onnx_generate(self, prompts: list[str], image_embeds: np.ndarray, num_kept: np.ndarray, embeds: torch.Tensor,
                      mask: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0,
                      step_times: list | None = None) -> np.ndarray:
        """New token ids ``[B, new]`` from ``self.llm``: onnxruntime-genai takes the prompt ids with K
        image tokens and the K rows of each image (it splices them itself); the ONNX Runtime loop
        takes the spliced ``embeds`` and ``mask``."""
        if getattr(self.llm, "takes_ids", False):
            image_id = self.model.config.image_token_id
            ids = [before + [image_id] * int(k) + after
                   for (before, after), k in zip(self.split_prompts(prompts, num_kept), num_kept)]
            rows = [image_embeds[b, :int(k)].astype(np.float32) for b, k in enumerate(num_kept)]
            return self.llm.generate(ids, rows, max_new_tokens, min_new_tokens, step_times)
        return self.llm.generate(embeds.float().numpy(), mask.numpy(), max_new_tokens, min_new_tokens, step_times)

    @torch.no_grad()
    def generate(self, pixel_values: np.ndarray, prompts: list[str], budget: int | None = None,
                 max_new_tokens: int = 16, **generate_kwargs) -> tuple[list[str], dict]:
        if len(prompts) != len(pixel_values):
            raise PromptError(f"{len(pixel_values)} images for {len(prompts)} prompts: one image per prompt")
        start = time.perf_counter()
        image_embeds, num_kept = self.reduce(pixel_values, prompts, budget)
        reduce_ms = (time.perf_counter() - start) * 1e3
        embeds, mask = self.splice(prompts, image_embeds, num_kept)
        start = time.perf_counter()
        if self.llm is not None:
            new = torch.from_numpy(self.onnx_generate(prompts, image_embeds, num_kept, embeds, mask, max_new_tokens,
                                                      generate_kwargs.get("min_new_tokens", 0)))
        else:
            new = self.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id, **generate_kwargs)
        generate_ms = (time.perf_counter() - start) * 1e3
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return texts, {"vision_reduce_ms": reduce_ms, "generate_ms": generate_ms, "num_kept": num_kept.tolist(),
                       "context_tokens": mask.sum(dim=1).tolist(), "new_tokens": int(new.shape[1])}
