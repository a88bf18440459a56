"""The manifest written beside every built artifact (one typed :class:`Manifest`), and the checks
made before loading one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from par_export.artifact.metadata import ExportMetadata, MetadataError
from par_export.errors import ParExportError
from par_export.files import atomic_output

MANIFEST = "manifest.json"
# 2: every file of the folder hashed ("files"), the build's verification recorded
FORMAT = 2
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
_REQUIRED = {"format": int, "backend": str, "backend_version": str, "precision": str, "build": dict, "graphs": dict,
             "metadata": dict, "files": dict}
_GRAPH_REQUIRED = {"file": str, "sha256": str, "source": str, "inputs": list, "outputs": list}


class ArtifactError(ParExportError):
    """An artifact that cannot be loaded here: corrupt, tampered with, unverified, or built for another
    GPU/runtime/plugin."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_files(folder: str | Path) -> list[str]:
    """Every file under ``folder`` but the manifest, as sorted relative POSIX paths; symbolic
    links are listed too (the seal refuses them)."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() != MANIFEST)


def seal(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of the folder but the manifest (``files``)."""
    return {name: sha256(Path(folder) / name) for name in folder_files(folder)}


@dataclass
class GraphEntry:
    """One built graph: its ``file`` (engine or optimized ONNX) and ``sha256``, the fp32 ``source``
    graph it was built from, its ``inputs``/``outputs`` (``[{name, dtype, shape}]``), the TensorRT
    ``profiles`` and external ``data_files``."""

    file: str
    sha256: str
    source: str
    inputs: list
    outputs: list
    source_sha256: str = ""
    data_files: dict = field(default_factory=dict)
    profiles: dict = field(default_factory=dict)

    @property
    def input_dtypes(self) -> dict:
        """``{input name: numpy dtype name}`` (fp16 artifacts take fp16)."""
        return {i["name"]: i["dtype"] for i in self.inputs}


@dataclass
class Manifest:
    """``manifest.json``: how an artifact was built (``backend``, ``precision``, ``build`` options,
    ``gpu``, ``plugin``), its ``graphs``, the export's :class:`ExportMetadata`, the seal (``files``:
    ``{relative path: sha256}``) and the build's ``verification`` record."""

    backend: str
    backend_version: str
    precision: str
    build: dict
    graphs: dict[str, GraphEntry]
    metadata: ExportMetadata
    files: dict[str, str]
    format: int = FORMAT
    created: str = ""
    par_export: str = ""
    gpu: dict | None = None
    target: str | None = None
    plugin: dict | None = None
    verification: dict | None = None

    @classmethod
    def from_json(cls, data, path: str | Path = MANIFEST) -> Manifest:
        """Check the schema (version, required fields and their types, the metadata) and type it."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ArtifactError(f"{path}: manifest format {data.get('format')!r}, this par-export reads {FORMAT}: "
                                "rebuild the artifact with this version")
        _check_schema(data, Path(path))
        try:
            metadata = ExportMetadata.from_json(data["metadata"], str(path))
        except MetadataError as err:
            raise ArtifactError(str(err)) from None
        graphs = {name: GraphEntry(**{k: v for k, v in g.items() if k in GraphEntry.__dataclass_fields__})
                  for name, g in data["graphs"].items()}
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in ("graphs", "metadata")}
        return cls(**known, graphs=graphs, metadata=metadata)

    def to_json(self) -> dict:
        data = asdict(self)
        data["metadata"] = self.metadata.to_json()
        return data

    def write(self, folder: str | Path) -> None:
        """``folder/manifest.json``, replaced atomically (never half written)."""
        with atomic_output(Path(folder) / MANIFEST) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2))

    @property
    def row_width(self):
        """Width D of the ``image_embeds`` rows the vision graph gives (the LLM's hidden size)."""
        return self.graphs["vision_par"].outputs[0]["shape"][-1]

    @property
    def verified(self) -> bool:
        return bool(self.verification and self.verification.get("passed") is True)


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest, after its schema (version, required fields and their types) is checked and
    before any other file of the folder is read."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST}; build the artifact with `par-export build`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    return Manifest.from_json(data, path)


def _check_schema(manifest: dict, path: Path) -> None:
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{path}: field {key!r} must be a {kind.__name__}, got {manifest.get(key)!r:.60}")
    if manifest["backend"] not in BACKENDS:
        raise ArtifactError(f"{path}: backend {manifest['backend']!r} is not one of {', '.join(BACKENDS)}")
    if manifest["precision"] not in PRECISIONS:
        raise ArtifactError(f"{path}: precision {manifest['precision']!r} is not one of {', '.join(PRECISIONS)}")
    if "vision_par" not in manifest["graphs"]:
        raise ArtifactError(f"{path}: no graphs.vision_par")
    for name, graph in manifest["graphs"].items():
        for key, kind in _GRAPH_REQUIRED.items():
            if not isinstance(graph, dict) or not isinstance(graph.get(key), kind):
                raise ArtifactError(f"{path}: graphs.{name}.{key} must be a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in manifest["files"].items()):
        raise ArtifactError(f"{path}: files must map relative paths to sha256 strings")


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` for a relative path that stays inside ``folder``, else :class:`ArtifactError`."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ArtifactError(f"{folder}/{MANIFEST}: path {name!r} must be relative and inside the artifact")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ArtifactError(f"{folder}/{MANIFEST}: path {name!r} leads outside the artifact")
    return path


def check_seal(folder: str | Path, manifest: Manifest) -> None:
    """Every file the manifest names is inside the folder, a plain file, with its sha256; every
    file of the folder is named (so external data files too); every graph and its source are among them."""
    folder = Path(folder)
    files = manifest.files
    for name, digest in files.items():
        path = inside(folder, name)
        if path.is_symlink() or not path.is_file():
            raise ArtifactError(f"{path}: missing or not a plain file (listed in {MANIFEST})")
        if sha256(path) != digest:
            raise ArtifactError(f"{path}: sha256 differs from {MANIFEST}: the file is corrupt, truncated or edited")
    extra = sorted(set(folder_files(folder)) - set(files))
    if extra:
        raise ArtifactError(f"{folder}: {len(extra)} file(s) not in {MANIFEST} ({', '.join(extra[:3])}): the artifact "
                            "was changed after it was built; rebuild it")
    for name, graph in manifest.graphs.items():  # (their external data files are files of the folder)
        for item in (graph.file, graph.source):
            inside(folder, item)
            if item not in files:
                raise ArtifactError(f"{folder}/{MANIFEST}: graphs.{name} names {item!r}, which is not sealed")


def check_verified(folder: str | Path, manifest: Manifest) -> None:
    """Refuse an artifact whose verification failed or never ran (``--allow-unverified`` skips this)."""
    result = manifest.verification or {}
    if result.get("passed") is True:
        return
    why = "failed" if result.get("passed") is False else "was not run"
    raise ArtifactError(f"{folder}: verification {why} for this artifact; run `par-export verify {folder}`, rebuild "
                        "it, or pass --allow-unverified to use it anyway")


def check_manifest(folder: str | Path, manifest: Manifest, runtime_version: str | None,
                   compute_capability: str | None, plugin_file: Path | None) -> None:
    """Refuse, with the reason, an artifact this machine cannot run as built.

    Checks the seal (:func:`check_seal`: every file hashed, paths inside the folder), the
    runtime version and GPU compute capability for TensorRT engines, and the plugin
    library's presence and sha256.
    """
    folder = Path(folder)
    check_seal(folder, manifest)
    for graph in manifest.graphs.values():
        if manifest.files[graph.file] != graph.sha256:
            raise ArtifactError(f"{folder / graph.file}: sha256 differs between files and graphs in {MANIFEST}")
    if manifest.backend == "tensorrt":
        built = manifest.backend_version
        same_minor = runtime_version is None or built.split(".")[:2] == runtime_version.split(".")[:2]
        if not same_minor and not manifest.build.get("version_compatible"):
            raise ArtifactError(f"engine built with TensorRT {built}, this machine has {runtime_version}: "
                                "rebuild it here, or build with --version-compatible")
        gpu = manifest.gpu or {}
        if compute_capability is not None and gpu.get("compute_capability") not in (None, compute_capability):
            raise ArtifactError(f"engine built for compute capability {gpu.get('compute_capability')} "
                                f"({gpu.get('name')}), this GPU is {compute_capability}: rebuild it on this GPU")
    plugin = manifest.plugin
    if plugin:
        if plugin_file is None or not Path(plugin_file).is_file():
            raise ArtifactError(f"artifact needs the plugin library {plugin['file']} (par::TopKCluster): build it "
                                "with `par-export plugin build` or pass its path")
        if manifest.backend == "tensorrt" and sha256(plugin_file) != plugin["sha256"]:
            raise ArtifactError(f"plugin library {plugin_file} differs from the one the engine was built with "
                                f"(sha256 {plugin['sha256'][:12]}...): rebuild the engine or use that library")
