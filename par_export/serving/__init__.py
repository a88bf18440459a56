"""Serving at scale: a Triton Inference Server model repository for the exported graphs."""
