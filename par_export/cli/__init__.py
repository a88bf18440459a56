"""``par-export`` command line: one module per command group, each a few lines per command calling
the library (:mod:`.reducers`, :mod:`.export`, :mod:`.engine`, :mod:`.llm`, :mod:`.serving`);
:mod:`.args` holds the argument types and shared flags."""

from __future__ import annotations

import argparse
import logging
import sys

from par_export import __version__
from par_export.backends.onnxruntime import set_device
from par_export.cli import engine, export, llm, reducers, serving
from par_export.cli.args import Parser
from par_export.errors import ParExportError

GROUPS = (reducers, export, engine, llm, serving)
"""Each registers its commands (``register(subparsers)``), in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="par-export", description="PAR (Prompt-Aware Token Reduction) for vision-language "
                    "models: export, build, verify, run, evaluate and serve a reduced visual context.")
    parser.add_argument("--version", action="version", version=f"par-export {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Library messages (logger ``par_export``) to stderr: INFO by default, DEBUG with -v, WARNING with -q;
    Python warnings are shown (through logging)."""
    class StderrHandler(logging.StreamHandler):
        """Writes to ``sys.stderr`` as it is when a message comes (tests and embedding code swap it)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, _):
            pass

    logger = logging.getLogger("par_export")
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logging.captureWarnings(True)


# Optional dependencies and the extra that installs each.
EXTRAS = {"onnxruntime": "cpu] or [gpu", "onnxruntime_genai": "cpu] or [gpu", "tensorrt": "tensorrt",
          "tritonclient": "test"}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that bad input causes: ours (:class:`~par_export.errors.ParExportError`: ExportError,
    BuildError, ArtifactError, InputError, ...), OS errors, and those the libraries that read the
    user's files raise for a corrupt one (ONNX Runtime, protobuf, the ONNX checker, safetensors, PIL),
    where already imported. Anything else is a programming error."""
    errors: list[type[BaseException]] = [ParExportError, OSError]
    modules = {"onnxruntime.capi.onnxruntime_pybind11_state": ("Fail", "InvalidArgument", "NoSuchFile", "NoModel",
                                                               "InvalidProtobuf", "InvalidGraph", "RuntimeException",
                                                               "EngineError", "NotImplemented", "EPFail"),
               "google.protobuf.message": ("Error",), "onnx.checker": ("ValidationError",),
               "safetensors": ("SafetensorError",), "PIL.Image": ("DecompressionBombError",)}
    for module, names in modules.items():
        if module in sys.modules:
            errors += [getattr(sys.modules[module], n) for n in names if hasattr(sys.modules[module], n)]
    return tuple(errors)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:600] + " ..."


def main(argv: list[str] | None = None) -> int:
    """The ``par-export`` command: exit 0 on success, 1 when a verification fails, 2 with one line
    ``par-export CMD: error: ...`` for bad input (argparse's own errors too), 3 for an internal
    error (one line; ``--debug`` shows its traceback), 130 when interrupted."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        set_device(getattr(args, "device", "cpu"))  # every call starts from its own --device
        return args.func(args)
    except KeyboardInterrupt:
        print(f"par-export {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, ModuleNotFoundError) and err.name and err.name.split(".")[0] in EXTRAS:
            extra = EXTRAS[err.name.split(".")[0]]
            print(f"par-export {args.command}: error: {err.name} is not installed; install it with "
                  f"pip install 'par-export[{extra}]'", file=sys.stderr)
            return 2
        if isinstance(err, user_errors()):
            print(f"par-export {args.command}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        print(f"par-export {args.command}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with "
              "--debug for the traceback, and please report it)", file=sys.stderr)
        return 3
