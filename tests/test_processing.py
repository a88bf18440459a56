"""Inputs come from the checkpoint's own processor and chat template (issue: real checkpoints)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from par_export.cli import main
from par_export.engine.build import BuildOptions, build
from par_export.engine.run import run_image
from par_export.export import export_model
from par_export.models.families import family_for
from par_export.models.llava import ReducedLlava
from par_export.processing import InputError, ModelInputs
from par_export.reduce import PARConfig

SIZES = [(500, 300), (300, 500)]  # width x height: landscape and portrait
PROMPT = "what color is the circle ?"


def picture(path, size, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    rgb[: size[1] // 3] = (230, 20, 20)  # a band, so a crop and a stretch see different pixels
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def artifact(tiny_folders, tmp_path_factory):
    """An fp32 ONNX Runtime build of the tiny LLaVA (CLIP-style processor: shortest edge + center crop)."""
    llava_dir, clip_dir = tiny_folders
    root = tmp_path_factory.mktemp("processing")
    export_model(llava_dir, root / "onnx", budget=16, clip_path=clip_dir, progress=False)
    build(root / "onnx", root / "art", BuildOptions(precision="fp32", backend="onnxruntime"), progress=False)
    images = [picture(root / f"{w}x{h}.png", (w, h), i) for i, (w, h) in enumerate(SIZES)]
    return root / "art", images


def test_artifact_processor_gives_the_checkpoint_processors_pixels(tiny_folders, artifact):
    from transformers import AutoProcessor, LlavaProcessor

    llava_dir, _ = tiny_folders
    folder, images = artifact
    stock = LlavaProcessor.from_pretrained(llava_dir, local_files_only=True)
    rebuilt = AutoProcessor.from_pretrained(folder / "processor", local_files_only=True)  # what an app would do
    ours = ModelInputs.from_folder(folder / "processor")
    size = stock.image_processor.crop_size["height"]
    for path in images:
        image = Image.open(path).convert("RGB")
        expected = stock(images=[image], text=["<image>"], return_tensors="np")["pixel_values"]
        assert np.abs(ours.pixel_values([image]) - expected).max() <= 1e-6
        assert np.abs(rebuilt.image_processor(images=[image], return_tensors="np")["pixel_values"] - expected).max() <= 1e-6
        # a hand-written square stretch (what run did before) sees other pixels: the check can fail
        stretched = np.asarray(image.resize((size, size), Image.BICUBIC), np.float32) / 255.0
        mean, std = np.asarray(stock.image_processor.image_mean), np.asarray(stock.image_processor.image_std)
        assert np.abs(((stretched - mean) / std).transpose(2, 0, 1)[None] - expected).max() > 0.1


def test_run_equals_reduced_llava_fed_by_llava_processor(tiny_folders, artifact, capsys):
    from transformers import LlavaProcessor

    llava_dir, clip_dir = tiny_folders
    folder, images = artifact
    processor = LlavaProcessor.from_pretrained(llava_dir, local_files_only=True)
    reference = ReducedLlava.from_pretrained(llava_dir, "par", PARConfig(), clip_path=clip_dir)
    for path in images:
        image = Image.open(path).convert("RGB")
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
            add_generation_prompt=True)
        enc = processor(images=[image], text=[text], return_tensors="pt")
        batch = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                         prompts=[PROMPT], budget=16)
        k = int(batch.reduction.num_kept[0])
        expected_index = batch.reduction.keep_index[0, :k].tolist()

        result = run_image(folder, path, PROMPT, budget=16)
        assert result["keep_index"] == expected_index
        np.testing.assert_allclose(result["image_embeds"], batch.image_features[0].numpy(), atol=1e-4, rtol=1e-4)

        assert main(["run", str(folder), "--image", str(path), "--prompt", PROMPT, "--budget", "16",
                     "--heatmap", str(folder.parent / "kept.png")]) == 0
        out = capsys.readouterr().out
        assert f"kept {k}/64 tokens" in out and f"first kept indices {expected_index[:12]}" in out


def test_chat_prompt_uses_the_chat_template_and_warns_without_one(tiny_folders, tmp_path):
    llava_dir, _ = tiny_folders
    inputs = ModelInputs.from_folder(llava_dir)
    assert inputs.chat_prompt(PROMPT) == f"USER: <image>\n{PROMPT} ASSISTANT:"
    assert inputs.chat_prompt("<image> raw") == "<image> raw"  # a full prompt is taken as written
    with pytest.raises(InputError, match="2 '<image>' placeholders"):
        inputs.chat_prompt("<image> <image> two images")

    bare = tmp_path / "no-template"
    shutil.copytree(llava_dir, bare)
    (bare / "chat_template.jinja").unlink()
    no_template = ModelInputs.from_folder(bare, fallback_template="Q: <image> {prompt} A:")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert no_template.chat_prompt(PROMPT) == f"Q: <image> {PROMPT} A:"
    assert any("no chat template" in str(w.message) for w in caught)


def test_tokenizer_is_loaded_once_per_pipeline(artifact, monkeypatch):
    """The run-time query tokenizer is loaded when the artifact opens, not per prompt."""
    from transformers import AutoTokenizer

    from par_export.artifact import Artifact

    folder, _ = artifact
    art = Artifact.open(folder)
    calls = []
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: calls.append(a))
    with art:
        first, _ = art.embed_prompt(PROMPT)
        second, _ = art.embed_prompt("is there a red square ?")
    assert calls == [] and first.shape == second.shape and not np.allclose(first, second)


def _folder_without(tiny_folders, tmp_path, names):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_folders[0], folder)
    for name in names:
        (folder / name).unlink()
    return folder


@pytest.mark.parametrize("missing, message", [
    (["processor_config.json"], "no image processor config"),
    (["tokenizer.json", "tokenizer_config.json"], "no tokenizer"),
])
def test_export_of_a_folder_without_processor_or_tokenizer_is_one_line(tiny_folders, tmp_path, capsys, missing,
                                                                       message):
    folder = _folder_without(tiny_folders, tmp_path, missing)
    out = tmp_path / "out"
    assert main(["export", "--model", str(folder), "--out", str(out), "--budget", "8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and err[0].startswith("par-export export: error: ") and message in err[0]
    assert str(folder) in err[0] and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_unsupported_model_type_lists_the_supported_ones(tiny_folders, tmp_path, capsys):
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_folders[0], folder)
    config = (folder / "config.json").read_text().replace('"model_type": "llava"', '"model_type": "idefics3"', 1)
    (folder / "config.json").write_text(config)
    with pytest.raises(ValueError, match="model_type is 'idefics3'.*supported: llava"):
        family_for(folder)
    assert main(["export", "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "supported: llava" in err and "config.json" in err and not (tmp_path / "out").exists()


def test_bad_images_and_prompts_are_one_line_errors(artifact, tmp_path, capsys):
    folder, images = artifact
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for image, message in ((tmp_path / "broken.png", "not a readable image"), (tmp_path / "gone.png", "no such image")):
        assert main(["run", str(folder), "--image", str(image), "--prompt", PROMPT]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and str(image) in err and len(err.splitlines()) == 1
    assert main(["chat", "--model", "tiny", "--artifact", str(folder), "--image", str(images[0]),
                 "--prompt", "<image> and <image>"]) == 2
    assert "placeholders" in capsys.readouterr().err


def test_reduced_llava_rejects_unexpanded_image_tokens(tiny_folders):
    """Input ids whose <image> is not expanded to the patch count name the fix."""
    llava_dir, clip_dir = tiny_folders
    reference = ReducedLlava.from_pretrained(llava_dir, "par", clip_path=clip_dir)
    ids = torch.tensor([[1, 5, 4, 6, 7]])
    with pytest.raises(ValueError, match="expected 64 per image"):
        reference.prepare_inputs(ids, None, torch.zeros(1, 3, 32, 32), prompts=["x"], budget=8)


def test_a_chat_template_that_drops_the_image_is_refused(tiny_folders, tmp_path):
    folder = tmp_path / "text-only-template"
    shutil.copytree(tiny_folders[0], folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
        "{% endif %}{% endfor %}{% endfor %}")
    with pytest.raises(InputError, match="the chat template gave 0 '<image>' placeholders"):
        ModelInputs.from_folder(folder).chat_prompt(PROMPT)
