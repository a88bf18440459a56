"""``par-export verify``: an artifact against the PyTorch reference and the fp32 ONNX source."""

from __future__ import annotations

import contextlib
import datetime
import tempfile
from pathlib import Path

import numpy as np
from polygraphy.comparator import Comparator

from par_export.artifact import Artifact, ExportMetadata
from par_export.artifact.manifest import inside, read_manifest
from par_export.backends.base import quiet_polygraphy
from par_export.backends.onnxruntime import OnnxRuntimeRunner
from par_export.backends.torch import TorchRunner, feed_metadata
from par_export.export.validate import TOLERANCES, case_verdict, compare_outputs, condensed, error_limit, token_rows
from par_export.models.families import export_config, family_for
from par_export.models.graphs import reference_scores
from par_export.models.names import resolve_model
from par_export.reduce import PARConfig


def verification_feeds(metadata: ExportMetadata, count: int, seed: int = 0) -> list[tuple[str, dict]]:
    """``count`` feeds from the family's validation cases (LLaVA-1.5: batch sizes 1, 2, 4 capped at
    the export's batch_max; LLaVA-NeXT: images of several sizes), at the artifact's budget."""
    cases = export_config(metadata).vision_cases(metadata.to_json(), metadata.query_dim,
                                                 [metadata.budget_rule.validation_value], seed)
    return [(cases[i % len(cases)].name, cases[i % len(cases)].feed) for i in range(count)]


def torch_reference(metadata: ExportMetadata, workdir: Path):
    """The PyTorch module the graph came from, rebuilt from the metadata, or ``(None, reason)``."""
    model, clip = metadata.model, metadata.clip
    if model.startswith("tiny"):
        model, clip = resolve_model("tiny", workdir)
    elif not Path(model).is_dir():
        return None, f"model folder {model} is not on this machine"
    adapter = family_for(model).adapter
    llava = adapter.from_pretrained(model, metadata.method, PARConfig.from_dict(metadata.config), clip_path=clip)
    return export_config(metadata).vision_module(llava, metadata.budget_rule.traced), None


def verify(folder: str | Path, count: int = 3, allow_unverified: bool = True, atol: float | None = None,
           rtol: float | None = None) -> tuple[list[dict], bool, str]:
    """Rows of ``{reference, case, max_abs_error, mean_abs_error, index_agreement, ...}``, the
    verdict against the artifact precision's tolerance, and the precision. ``atol`` / ``rtol``
    (relative to the largest reference output) replace the precision's error bound when given;
    with both, their sum applies (``atol + rtol * |ref| max``, as ``numpy.isclose``)."""
    artifact = Artifact.open(folder, allow_unverified=allow_unverified)
    manifest, runners = artifact.manifest, artifact.runners
    metadata = manifest.metadata
    precision = manifest.precision
    cases = verification_feeds(metadata, count)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(quiet_polygraphy())
        source = inside(Path(folder), manifest.graphs["vision_par"].source)  # sealed with the artifact
        references = [OnnxRuntimeRunner(source, name="onnx-fp32")]
        module, reason = torch_reference(metadata, Path(tmp))
        if module is not None:
            outputs = stack.enter_context(reference_scores(module, list(export_config(metadata).vision_par.outputs)))
            references.append(TorchRunner(module, outputs, feed_metadata(cases[0][1]), name="torch"))
        else:
            rows.append({"reference": "torch", "skipped": reason})
        # Polygraphy runs every runner on the same feeds (cast to each one's input dtypes)
        results = Comparator.run([runners["vision_par"], *references], data_loader=[feed for _, feed in cases])
        iterations = [its for _, its in results.items()]
        if module is not None:  # the fp32 graph's kept sets are judged against torch's scores too
            for source_it, torch_it in zip(iterations[1], iterations[2]):
                source_it["scores"] = torch_it["scores"]
        scale = max(float(np.abs(token_rows(it)).max()) for its in iterations[1:] for it in its)
        limit = error_limit(precision, scale)
        if atol is not None or rtol is not None:
            limit = (atol or 0.0) + (rtol or 0.0) * scale
        labels = {id(it): (name, case) for name, its in list(results.items())[1:]
                  for (case, _), it in zip(cases, its)}
        compare = KeptTokensCompare(limit, TOLERANCES[precision], labels, rows)
        accuracy = Comparator.compare_accuracy(results, compare_func=compare,
                                               comparisons=[(0, i) for i in range(1, len(results))])
    order = {name: i for i, name in enumerate(["onnx-fp32", "torch"])}
    rows.sort(key=lambda r: order.get(r["reference"], len(order)))  # reference by reference, cases in order
    return rows, bool(accuracy), precision


class KeptTokensCompare:
    """Polygraphy compare function (artifact iteration, reference iteration) -> ``{output: passed}``,
    by :func:`par_export.export.validate.case_verdict` (``limit``: max-abs bound on the shared kept
    tokens' embeddings; ``bounds``: the precision's :data:`TOLERANCES` entry, whose ``tie`` tells
    near-ties from errors where the reference iteration carries ``scores``). Each comparison's
    figures are appended to ``rows`` as ``{reference, case, max_abs_error, ...}``, labelled by
    ``labels`` (``{id(reference iteration result): (reference name, case name)}``)."""

    def __init__(self, limit: float, bounds: dict, labels: dict[int, tuple[str, str]], rows: list[dict]):
        self.limit, self.bounds, self.labels, self.rows = limit, bounds, labels, rows

    def __call__(self, artifact_result, reference_result) -> dict[str, bool]:
        reference, case = self.labels[id(reference_result)]
        figures = condensed(compare_outputs(dict(reference_result), dict(artifact_result), self.bounds["tie"]),
                            self.limit, self.bounds)
        verdict = case_verdict(figures, self.limit, self.bounds)
        self.rows.append({"reference": reference, "case": case, **figures, "passed": all(verdict.values())})
        return verdict


def verification_record(rows: list[dict], passed: bool, precision: str) -> dict:
    """What the manifest keeps of a verification: the verdict, the precision and the rows."""
    return {"passed": bool(passed), "precision": precision, "rows": rows,
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def record_verification(folder: str | Path, record: dict) -> None:
    """Write ``record`` into the artifact's manifest (atomically: the manifest is never half written)."""
    manifest = read_manifest(folder)
    manifest.verification = record
    manifest.write(folder)
