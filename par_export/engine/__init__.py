"""From an exported model to a verified artifact: build (TensorRT or ONNX Runtime),
manifests, target presets, verification and single-image runs."""
