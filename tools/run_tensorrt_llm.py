#!/usr/bin/env python3
"""Generate with a TensorRT-LLM engine from the files `par-export emit --runtime tensorrt-llm` wrote.

    par-export emit out/demo-fp16 --model demo --image scene.png --runtime tensorrt-llm \\
        --prompt "USER : <image> what shape is the red object ? ASSISTANT :" --out out/emit-trtllm
    python tools/run_tensorrt_llm.py out/emit-trtllm --engine-dir ENGINE_DIR --tokenizer par_export/assets/demo/llava

The engine is the LLM alone (a Llama checkpoint converted with TensorRT-LLM's
`convert_checkpoint.py`, then `trtllm-build --max_prompt_embedding_table_size N`, N >= the
largest K times the batch). Written against the legacy engine flow's
`tensorrt_llm.runtime.ModelRunner.generate(batch_input_ids, prompt_table=..., ...)` of
TensorRT-LLM v0.12-v0.16, the call its multimodal runner makes; not run on this project's machines
(no GPU, no TensorRT-LLM wheel). See docs/llm_runtimes.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("emitted", help="folder written by `par-export emit --runtime tensorrt-llm`")
    parser.add_argument("--engine-dir", required=True, help="TensorRT-LLM engine folder of the LLM")
    parser.add_argument("--tokenizer", required=True, help="folder holding the LLM's tokenizer")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    folder = Path(args.emitted)
    meta = json.loads((folder / "inputs.json").read_text())
    if meta.get("runtime") != "tensorrt-llm":
        print(f"{folder}: emitted for {meta.get('runtime')!r}, not tensorrt-llm", file=sys.stderr)
        return 2
    try:
        from tensorrt_llm.runtime import ModelRunner
    except ImportError as err:
        print(f"TensorRT-LLM is not importable here ({err}); install it on a machine with an NVIDIA GPU",
              file=sys.stderr)
        return 2
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    inputs = load_file(str(folder / "inputs.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    runner = ModelRunner.from_dir(args.engine_dir)
    output = runner.generate(
        [inputs["input_ids"]],
        prompt_table=inputs["prompt_embedding_table"].unsqueeze(0).cuda(),  # [1, sum K, hidden]
        prompt_tasks="0",
        max_new_tokens=args.max_new_tokens,
        end_id=meta["eos_token_id"],
        pad_id=meta["pad_token_id"],
        return_dict=False,
        output_sequence_lengths=False,
    )
    new = output[0, 0, len(inputs["input_ids"]):]
    print(f"K = {meta['num_kept']} visual rows; answer: {tokenizer.decode(new, skip_special_tokens=True)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
