"""``par-export verify``: an artifact against the PyTorch reference and the fp32 ONNX source."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from par_export.backends.base import quiet_polygraphy
from par_export.backends.onnxruntime import OnnxRuntimeRunner
from par_export.backends.torch import TorchRunner, feed_metadata
from par_export.engine.load import artifact_runners
from par_export.engine.manifest import inside
from par_export.export.validate import TOLERANCES, compare_outputs, error_limit

OUTPUTS = ["image_embeds", "num_kept", "keep_index"]


def verification_feeds(metadata: dict, count: int, seed: int = 0) -> list[tuple[str, dict]]:
    """``count`` feeds from the family's validation cases (LLaVA-1.5: batch sizes 1, 2, 4 capped at
    the export's batch_max; LLaVA-NeXT: images of several sizes), at the artifact's budget."""
    from par_export.models.families import export_config

    cfg = export_config(metadata)
    budget = min(int(metadata["budget"]), metadata["width"]) if metadata["budget_input"] else metadata["budget"]
    cases = cfg.vision_cases(metadata, metadata["query_dim"], [budget], seed)
    return [(cases[i % len(cases)].name, cases[i % len(cases)].feed) for i in range(count)]


def torch_reference(metadata: dict, workdir: Path):
    """The PyTorch module the graph came from, rebuilt from the metadata, or ``(None, reason)``."""
    from par_export.export.exporter import resolve_model
    from par_export.models.families import export_config, family_for
    from par_export.reduce import PARConfig

    model, clip = metadata["model"], metadata.get("clip")
    if model.startswith("tiny"):
        model, clip = resolve_model("tiny", workdir)
    elif not Path(model).is_dir():
        return None, f"model folder {model} is not on this machine"
    adapter = family_for(model).adapter
    llava = adapter.from_pretrained(model, metadata["method"], PARConfig.from_dict(metadata["config"]), clip_path=clip)
    budget = "input" if metadata["budget_input"] else ("auto" if metadata["budget"] == "auto" else metadata["width"])
    return export_config(metadata).vision_module(llava, budget), None


def cast_feed(feed: dict, graph: dict) -> dict:
    """Inputs in the dtypes the manifest records for ``graph`` (fp16 artifacts take fp16)."""
    dtypes = {i["name"]: np.dtype(i["dtype"]) for i in graph["inputs"]}
    return {k: v.astype(dtypes[k]) if k in dtypes else v for k, v in feed.items()}


def verify(folder: str | Path, count: int = 3, allow_unverified: bool = True, atol: float | None = None,
           rtol: float | None = None) -> tuple[list[dict], bool, str]:
    """Rows of ``{reference, case, max_abs_error, mean_abs_error, index_agreement, ...}``, the
    verdict against the artifact precision's tolerance, and the precision. ``atol`` / ``rtol``
    (relative to the largest reference output) replace the precision's error bound when given;
    with both, their sum applies (``atol + rtol * |ref| max``, as ``numpy.isclose``)."""
    from polygraphy.comparator import Comparator

    manifest, runners = artifact_runners(folder, allow_unverified=allow_unverified)
    metadata = manifest["metadata"]
    precision = manifest["precision"]
    cases = verification_feeds(metadata, count)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, quiet_polygraphy():
        source = inside(Path(folder), manifest["graphs"]["vision_par"]["source"])  # sealed with the artifact
        references = [OnnxRuntimeRunner(source, name="onnx-fp32")]
        module, reason = torch_reference(metadata, Path(tmp))
        if module is not None:
            references.append(TorchRunner(module, OUTPUTS, feed_metadata(cases[0][1]), name="torch"))
        else:
            rows.append({"reference": "torch", "skipped": reason})
        # Polygraphy runs every runner on the same feeds (cast to each one's input dtypes)
        results = Comparator.run([runners["vision_par"], *references], data_loader=[feed for _, feed in cases])
        scale = max(float(np.abs(it["image_embeds"]).max()) for _, its in list(results.items())[1:] for it in its)
        limit = error_limit(precision, scale)
        if atol is not None or rtol is not None:
            limit = (atol or 0.0) + (rtol or 0.0) * scale
        labels = {id(it): (name, case) for name, its in list(results.items())[1:]
                  for (case, _), it in zip(cases, its)}
        compare = KeptTokensCompare(limit, TOLERANCES[precision]["index_agreement"], labels, rows)
        accuracy = Comparator.compare_accuracy(results, compare_func=compare,
                                               comparisons=[(0, i) for i in range(1, len(results))])
    order = {name: i for i, name in enumerate(["onnx-fp32", "torch"])}
    rows.sort(key=lambda r: order.get(r["reference"], len(order)))  # reference by reference, cases in order
    return rows, bool(accuracy), precision


class KeptTokensCompare:
    """Polygraphy compare function (artifact iteration, reference iteration) -> ``{output: passed}``:
    ``image_embeds`` within ``limit`` (max abs error), ``keep_index`` agreeing on at least
    ``agreement`` of the kept slots, ``num_kept`` equal. Each comparison's figures are appended to
    ``rows`` as ``{reference, case, max_abs_error, ...}``, labelled by ``labels`` (``{id(reference
    iteration result): (reference name, case name)}``)."""

    def __init__(self, limit: float, agreement: float, labels: dict[int, tuple[str, str]], rows: list[dict]):
        self.limit, self.agreement, self.labels, self.rows = limit, agreement, labels, rows

    def __call__(self, artifact_result, reference_result) -> dict[str, bool]:
        reference, case = self.labels[id(reference_result)]
        figures = compare_outputs(dict(reference_result), dict(artifact_result))
        self.rows.append({"reference": reference, "case": case, **figures})
        return {"image_embeds": figures["max_abs_error"] <= self.limit,
                "keep_index": figures["index_agreement"] >= self.agreement, "num_kept": figures["num_kept_equal"]}


def verification_record(rows: list[dict], passed: bool, precision: str) -> dict:
    """What the manifest keeps of a verification: the verdict, the precision and the rows."""
    import datetime

    return {"passed": bool(passed), "precision": precision, "rows": rows,
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def record_verification(folder: str | Path, record: dict) -> None:
    """Write ``record`` into the artifact's manifest (atomically: the manifest is never half written)."""
    import json

    from par_export.engine.manifest import MANIFEST, read_manifest
    from par_export.files import atomic_output

    manifest = read_manifest(folder)
    manifest["verification"] = record
    with atomic_output(Path(folder) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))


def format_rows(rows: list[dict]) -> str:
    width = max([9] + [len(r.get("case", "")) for r in rows])
    lines = [f"{'reference':<10} {'case':<{width}} {'max abs err':>11} {'mean abs err':>12} {'|ref| max':>9} "
             f"{'kept idx agree':>14} {'K equal':>7}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['reference']:<10} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['reference']:<10} {r['case']:<{width}} {r['max_abs_error']:>11.2e} {r['mean_abs_error']:>12.2e} "
                     f"{r['reference_max_abs']:>9.2e} {r['index_agreement']:>14.2%} {str(r['num_kept_equal']):>7}")
    return "\n".join(lines)
