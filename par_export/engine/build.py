"""``par-export build``: exported graphs -> a TensorRT engine or an optimized ONNX Runtime model,
with a manifest, then verified."""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import transformers
from tqdm.auto import tqdm

import par_export
from par_export.artifact.manifest import FORMAT, PRECISIONS, GraphEntry, Manifest, seal, sha256
from par_export.artifact.metadata import ExportMetadata
from par_export.artifact.query import TOKENIZER_DIR
from par_export.backends.base import BackendUnavailable
from par_export.backends.tensorrt import build_engine, gpu_info, import_tensorrt
from par_export.engine.presets import load_preset
from par_export.engine.verify import verification_record, verify
from par_export.errors import ParExportError
from par_export.export import export_model
from par_export.export.custom_op import DOMAIN
from par_export.export.fp16 import to_fp16
from par_export.export.metadata import read_metadata
from par_export.export.onnx_io import EXTERNAL_DATA_BYTES, data_file, onnx_files, save_onnx
from par_export.files import atomic_folder
from par_export.plugins import plugin_path
from par_export.processing import PROCESSOR_DIR, ModelInputs, load_pretrained, open_image
from par_export.reduce import PARConfig

GRAPHS = ("vision_par", "query_encoder")
logger = logging.getLogger(__name__)
RUNTIME_FILES = ("processor", "tokenizer", "report.json")


class BuildError(ParExportError):
    """A build that could not be done; nothing was written."""


@dataclass
class BuildOptions:
    precision: str = "fp16"
    backend: str = "auto"  # auto | tensorrt | onnxruntime
    target: str | None = None
    batch: tuple[int, int, int] | None = None  # min, opt, max (default: preset or 1, 1, export batch_max)
    budget: tuple[int, int, int] | None = None  # --budget-range: a budget input, exported with the middle K
    export_budget: int | str | None = None  # --budget auto|K from a model folder (default: auto, or the range's K)
    workspace_mib: int | None = None
    timing_cache: str | None = None
    version_compatible: bool = False
    dla_core: int | None = None
    plugin: bool = False
    calib_images: str | list | None = None  # int8/fp8 calibration (TensorRT): a folder, or PIL images
    clip: str | None = None  # CLIP folder for space=clip when exporting from a model folder
    atol: float | None = None  # verification bounds (default: the precision's)
    rtol: float | None = None
    par: tuple[str, ...] = ()  # PARConfig overrides (NAME=VALUE) when exporting from a model folder


# Lowest compute capability with hardware support for each reduced precision.
MIN_COMPUTE_CAPABILITY = {"bf16": (8, 0), "int8": (6, 1), "fp8": (8, 9)}


def apply_preset(options: BuildOptions) -> None:
    """Fill the options left unset from ``options.target``'s preset; refuse a precision it lacks."""
    if not options.target:
        return
    preset = load_preset(options.target)
    if options.precision not in preset.precisions:
        raise BuildError(f"target {preset.name} supports {preset.precisions}, not {options.precision}")
    options.batch = options.batch or preset.batch
    options.budget = options.budget or preset.budget
    options.workspace_mib = options.workspace_mib or preset.workspace_mib
    options.dla_core = options.dla_core if options.dla_core is not None else preset.dla_core


def check_precision_supported(precision: str, compute_capability: str | None) -> None:
    """Refuse a precision the GPU lacks (fp8 before Ada/Hopper, bf16 before Ampere)."""
    needed = MIN_COMPUTE_CAPABILITY.get(precision)
    if needed is None or compute_capability is None:
        return
    have = tuple(int(x) for x in compute_capability.split("."))
    if have < needed:
        raise BuildError(f"{precision} needs compute capability {needed[0]}.{needed[1]} or newer; this GPU is "
                         f"{compute_capability}: use fp16 (or int8)")


def resolve_backend(requested: str) -> str:
    if requested not in ("auto", "tensorrt", "onnxruntime"):
        raise BuildError(f"--backend must be auto, tensorrt or onnxruntime, got {requested!r}")
    if requested == "onnxruntime":
        return requested
    try:
        import_tensorrt()
        return "tensorrt"
    except BackendUnavailable as err:
        if requested == "tensorrt":
            raise BuildError(f"--backend tensorrt: {err}") from None
        return "onnxruntime"


def export_source(source: str | Path, workdir: Path, options: BuildOptions, progress: bool) -> Path:
    """The folder holding ``vision_par.onnx``: ``source`` itself, the folder of a given
    ``.onnx``, or a fresh export of a model folder / ``tiny``."""
    path = Path(source)
    exported = path.is_dir() and (path / "vision_par.onnx").is_file()
    for flag, given in (("--par", options.par), ("--budget", options.export_budget is not None)):
        if (exported or path.suffix == ".onnx") and given:
            raise BuildError(f"{flag}: {path} was exported already, with the options its metadata records; pass "
                             f"{flag} to `par-export export`, or build with --model")
    if exported:
        return path
    if path.suffix == ".onnx":
        if not path.is_file():
            raise BuildError(f"{path}: no such ONNX file")
        if path.name != "vision_par.onnx":
            raise BuildError(f"{path}: expected an export's vision_par.onnx (with query_encoder.onnx beside it)")
        return path.parent

    out = workdir / "onnx"
    # --budget; else a budget input exported with the range's (or the target preset's) middle K; else
    # PAR's adaptive K ("auto"), which the paper's figures use and the tuned defaults aim at ~10%
    budget = options.export_budget or (options.budget[1] if options.budget else "auto")
    export_model(source, out, budget=budget, plugin=options.plugin, clip_path=options.clip,
                 config=PARConfig().with_overrides(list(options.par)), progress=progress)
    return out


def check_export_folder(src: Path, metadata: ExportMetadata) -> None:
    """Refuse an export folder that lacks, or cannot read, a file its metadata needs: ``processor/``
    (every run preprocesses through it), ``report.json`` (the export's validation record: an
    export folder without it was never validated) and, when the graph takes ``query_embeds``,
    ``query_encoder.onnx`` and ``tokenizer/`` (without them every prompt would be ignored)."""

    ModelInputs.from_folder(src / PROCESSOR_DIR)
    try:
        json.loads((src / "report.json").read_text())
    except (OSError, ValueError) as err:
        reason = "missing" if isinstance(err, FileNotFoundError) else "unreadable"
        raise BuildError(f"{src / 'report.json'}: {reason} (the export's validation record); export the model "
                         "again into a new folder") from None
    if metadata.query is not None:
        if not (src / "query_encoder.onnx").is_file():
            raise BuildError(f"{src}: its graph takes a prompt but query_encoder.onnx is missing; export the model "
                             "again into a new folder")
        load_pretrained(transformers.AutoTokenizer, src / TOKENIZER_DIR)


def _profiles(metadata: dict, options: BuildOptions, graph: onnx.ModelProto) -> dict:
    """``{input: (min, opt, max) shape}`` for each input with a dynamic axis: ``batch`` from the
    options (or 1..batch_max), ``sequence`` 1/16/max, any other axis (LLaVA-NeXT's crops and
    tokens) from the export's recorded bounds, optimized for the largest."""
    batch = options.batch or (1, 1, metadata["export"]["batch_max"])
    bounds = metadata["shape_bounds"]
    sequence = bounds.get("input_ids", {}).get("1", [1, 77])[1]
    profiles = {}
    for value in graph.graph.input:
        dims = [(d.dim_value, None) if d.HasField("dim_value") else (None, d.dim_param)
                for d in value.type.tensor_type.shape.dim]
        if all(size is not None for size, _ in dims):
            continue
        shapes = []
        for step in range(3):
            shape = []
            for axis, (size, param) in enumerate(dims):
                if size is not None:
                    shape.append(size)
                elif param == "batch":
                    shape.append(batch[step])
                elif param == "sequence":
                    shape.append((1, min(16, sequence), sequence)[step])
                else:
                    low, high = bounds.get(value.name, {}).get(str(axis), [1, 1])
                    shape.append((low, high, high)[step])
            shapes.append(tuple(shape))
        profiles[value.name] = tuple(shapes)
    return profiles


def _quantize_int8_ort(src: Path, dst: Path) -> None:
    # optional: onnxruntime (par-export[cpu] or [gpu])
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    model = onnx.load(str(src))
    excluded = [n.name for n in model.graph.node if n.name.startswith("/reducer/")]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     nodes_to_exclude=excluded, use_external_data_format=model.ByteSize() > EXTERNAL_DATA_BYTES)


def calibration_data(metadata: dict, images: str | list | None, processor_dir: Path, count: int = 32) -> dict:
    """ModelOpt calibration feeds for ``vision_par``: ``images`` is a folder of image files, a list of
    ``PIL.Image`` (what the caller picked, e.g. the demo's scenes), or ``None`` (random pixels, with a
    warning); images go through the export's own processor."""

    size = metadata["image_size"]
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            raise BuildError(f"--calib-images {images}: not a folder (expected a folder of .png/.jpg/.bmp images)")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        if not files:
            raise BuildError(f"--calib-images {images}: no .png/.jpg/.bmp images there")
        images = [open_image(f) for f in files[:count]]
    if images:
        pixels = ModelInputs.from_folder(processor_dir).pixel_values(list(images)[:count])
    else:
        logger.warning("no --calib-images: calibrating int8/fp8 on random pixels (pass a folder of real images)")
        pixels = np.random.default_rng(0).standard_normal((count, 3, size, size)).astype(np.float32)
    query = np.random.default_rng(1).standard_normal((len(pixels), metadata["query_dim"])).astype(np.float32)
    return {"pixel_values": pixels, "query_embeds": query}


def _quantize_for_tensorrt(src: Path, dst: Path, precision: str, metadata: dict, images: str | None,
                           processor_dir: Path) -> None:
    """Explicit Q/DQ quantization with NVIDIA ModelOpt; the reducer subgraph stays unquantized."""
    try:
        # optional: NVIDIA ModelOpt, for TensorRT int8/fp8 only
        from modelopt.onnx.quantization import quantize  # noqa: PLC0415
    except ImportError:
        raise BuildError(f"{precision} engines need NVIDIA ModelOpt for Q/DQ quantization: "
                         "pip install 'nvidia-modelopt[onnx]'") from None
    quantize(onnx_path=str(src), quantize_mode=precision, calibration_data=calibration_data(metadata, images, processor_dir),
             calibration_eps=["cpu"], nodes_to_exclude=["/reducer/.*"], output_path=str(dst))


def _build_onnxruntime(src: Path, dst: Path, precision: str, work: Path) -> None:
    """Precision conversion, then ONNX Runtime's graph optimizations saved to ``dst`` (weights of a
    large graph in ``dst``'s external-data file, as the source had them)."""
    # optional: onnxruntime (par-export[cpu] or [gpu])
    import onnxruntime as ort  # noqa: PLC0415

    model = onnx.load(str(src))  # with its external data, if any
    stage = work / f"{src.stem}.{precision}.onnx"
    if precision == "fp16":
        save_onnx(to_fp16(model), stage)
    elif precision == "int8":
        _quantize_int8_ort(src, stage)
    elif precision == "fp32":
        save_onnx(model, stage)
    else:
        raise BuildError(f"precision {precision} needs TensorRT (ONNX Runtime's CPU provider has no {precision} "
                         "kernels); use fp32, fp16 or int8 with --backend onnxruntime")
    if any(node.domain == DOMAIN for node in model.graph.node):
        save_onnx(onnx.load(str(stage)), dst)  # custom-op graphs are optimized when a session with the op loads them
        return
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    if data_file(stage).is_file():  # keep the optimized weights outside the protobuf too
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         data_file(dst).name)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(stage), options, providers=["CPUExecutionProvider"])


def _io(graph: onnx.ModelProto) -> dict:
    def describe(values):
        return [{"name": v.name,
                 "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)),
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]
    return {"inputs": describe(graph.graph.input), "outputs": describe(graph.graph.output)}


def build(source: str | Path, out: str | Path, options: BuildOptions, overwrite: bool = False,
          progress: bool = True) -> dict:
    """Build ``out/`` (artifacts, runtime files, ``manifest.json``); returns the manifest."""
    out = Path(out)
    if options.precision not in PRECISIONS:
        raise BuildError(f"--precision must be one of {PRECISIONS}, got {options.precision!r}")
    apply_preset(options)
    backend = resolve_backend(options.backend)
    if backend == "tensorrt":
        check_precision_supported(options.precision, (gpu_info() or {}).get("compute_capability"))
    if backend == "onnxruntime" and options.backend == "auto":
        logger.info("TensorRT not found: building the ONNX Runtime form (CPU provider). Install TensorRT for engines.")

    with atomic_folder(out, overwrite, BuildError, inputs=[source]) as (final, work):
        # closed on any exit, so an error line is never drawn over by the bar
        with tqdm(total=len(GRAPHS) + 2, desc=f"build {backend} {options.precision}", disable=not progress) as steps:
            src = export_source(source, work, options, progress)
            steps.update()
            metadata = read_metadata(src / "vision_par.onnx")
            try:
                typed = ExportMetadata.from_json(metadata, str(src / "vision_par.onnx"))
            except ParExportError as err:
                raise BuildError(str(err)) from None
            check_export_folder(src, typed)
            plugin_needed = bool(typed.plugin)
            graphs = {}
            for name in GRAPHS:
                onnx_path = src / f"{name}.onnx"
                if not onnx_path.is_file():
                    continue
                graph = onnx.load(str(onnx_path), load_external_data=False)
                profiles = _profiles(metadata, options, graph)
                if backend == "tensorrt":
                    artifact = final / f"{name}.engine"
                    engine_source = onnx_path
                    if options.precision in ("int8", "fp8") and name == "vision_par":
                        engine_source = work / f"{name}.qdq.onnx"
                        _quantize_for_tensorrt(onnx_path, engine_source, options.precision, metadata,
                                               options.calib_images, src / "processor")
                    build_engine(engine_source, artifact, options.precision, profiles, options.workspace_mib or 4096,
                                 Path(options.timing_cache) if options.timing_cache else None,
                                 options.version_compatible, options.dla_core, plugin_path() if plugin_needed else None)
                    io = _io(graph)
                else:
                    artifact = final / f"{name}.ort.onnx"
                    _build_onnxruntime(onnx_path, artifact, options.precision, work)
                    io = _io(onnx.load(str(artifact), load_external_data=False))
                # source: the fp32 graph copied into onnx/ below (verify's second reference); the
                # hashes are filled from the seal, so every file is read once
                graphs[name] = {"file": artifact.name, "source": f"onnx/{onnx_path.name}",
                                "data_files": [p.name for p in onnx_files(artifact)[1:]],
                                "profiles": {k: [list(s) for s in v] for k, v in profiles.items()}, **io}
                steps.update()
            (final / "onnx").mkdir()  # the fp32 source graphs: verify's second reference
            for item in src.iterdir():
                if item.name.endswith((".onnx", ".onnx.data")):
                    shutil.copy(item, final / "onnx" / item.name)
            for item in RUNTIME_FILES:
                if (src / item).is_dir():
                    shutil.copytree(src / item, final / item)
                elif (src / item).is_file():
                    shutil.copy(src / item, final / item)
            files = seal(final)
            for graph in graphs.values():
                graph.update(sha256=files[graph["file"]], source_sha256=files[graph["source"]],
                             data_files={d: files[d] for d in graph["data_files"]})
            manifest = Manifest(
                format=FORMAT,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                par_export=par_export.__version__,
                backend=backend,
                backend_version=_backend_version(backend),
                precision=options.precision,
                gpu=gpu_info(),
                target=options.target,
                build=_build_record(options),
                plugin=_plugin_entry() if plugin_needed else None,
                graphs={name: GraphEntry(**graph) for name, graph in graphs.items()},
                metadata=typed,
                files=files,
            )
            manifest.write(final)
            steps.update()
        # verified before it is put in place; a failed verification is recorded, and `run` refuses it
        manifest.verification = verification_record(*verify(final, count=3, allow_unverified=True,
                                                            atol=options.atol, rtol=options.rtol))
        manifest.write(final)
    return manifest


def export_and_build(model: str | Path, out: str | Path, method: str = "par", budget: int | str = "auto",
                     config=None, clip: str | Path | None = None, precision: str = "fp32",
                     backend: str = "onnxruntime") -> Path:
    """Export a model folder with ``method`` at ``budget`` (:func:`~par_export.export.export_model`, PAR
    options ``config``) and build the export into ``out`` (ONNX Runtime fp32 by default): the artifact
    ``chat`` and ``eval`` run through when the user gives none. Returns ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, Path(tmp) / "onnx", method=method, budget=budget, config=config, clip_path=clip,
                     progress=False)
        build(Path(tmp) / "onnx", out, BuildOptions(precision=precision, backend=backend), progress=False)
    return Path(out)


def _build_record(options: BuildOptions) -> dict:
    """The options a manifest records (calibration images given as objects: their count)."""
    record = {k: v for k, v in asdict(options).items() if k not in ("precision", "backend", "target", "calib_images")}
    images = options.calib_images
    record["calib_images"] = images if images is None or isinstance(images, str) else f"{len(images)} images"
    return record


def _backend_version(backend: str) -> str:
    if backend == "tensorrt":
        return import_tensorrt().__version__
    # optional: onnxruntime (par-export[cpu] or [gpu])
    import onnxruntime  # noqa: PLC0415

    return onnxruntime.__version__


def _plugin_entry() -> dict:
    path = plugin_path()
    return {"file": path.name, "op": "par::TopKCluster", "sha256": sha256(path) if path.is_file() else None}


def trtexec_command(source_dir: Path, metadata: dict, options: BuildOptions, graph: str = "vision_par") -> str:
    """The ``trtexec`` line equivalent to a TensorRT build of ``graph`` with ``options``."""
    model = onnx.load(str(source_dir / f"{graph}.onnx"), load_external_data=False)
    profiles = _profiles(metadata, options, model)
    parts = [f"trtexec --onnx={source_dir / f'{graph}.onnx'}", f"--saveEngine={graph}.engine"]
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        shapes = ",".join(f"{name}:{'x'.join(map(str, shape[index]))}" for name, shape in profiles.items())
        if shapes:
            parts.append(f"{flag}={shapes}")
    parts += {"fp16": ["--fp16"], "bf16": ["--bf16"], "int8": ["--int8", "--fp16"], "fp8": ["--fp8", "--fp16"]}.get(
        options.precision, [])
    parts.append(f"--memPoolSize=workspace:{options.workspace_mib or 4096}M")
    if options.dla_core is not None:
        parts += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    if options.timing_cache:
        parts.append(f"--timingCacheFile={options.timing_cache}")
    if options.version_compatible:
        parts.append("--versionCompatible")
    if metadata.get("plugin"):
        parts.append(f"--dynamicPlugins={plugin_path()}")
    return " \\\n    ".join(parts)
