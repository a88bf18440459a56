"""Argument types and the flags several commands share: one spelling and one check for each.

A type raises ``argparse.ArgumentTypeError``, which argparse prints as one line naming the flag
(exit 2).
"""

from __future__ import annotations

import argparse
import math
import sys

from par_export.artifact.budget import parse_budget
from par_export.backends.onnxruntime import PROVIDERS
from par_export.errors import ParExportError

OVERWRITE = "replace --out if it exists (only a folder par-export wrote, or an empty one)"
ARTIFACT = "a `par-export build` folder"
UNVERIFIED = "use an artifact whose verification failed or never ran (refused by default)"
PAR_GRAPH = "unset options keep PARConfig's defaults (docs/par.md); all are recorded in the graph's metadata"
PAR_QUERY = ("only rewrite and template (the prompt rewrite, before the query encoder): the artifact's graph fixed "
             "the other options at export")


def budget(text: str) -> int | str:
    """``--budget``: :func:`~par_export.artifact.budget.parse_budget`'s rule (``auto`` or an int K >= 1)."""
    try:
        return parse_budget(text)
    except ParExportError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def budgets(text: str) -> list:
    """``--budgets``: comma-separated K values and/or ``auto``, at least one."""
    values = [budget(b.strip()) for b in text.split(",") if b.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated K values and/or 'auto', got {text!r}")
    return values


def finite(text: str) -> float:
    """A finite float >= 0 (NaN or a negative bound would pass every comparison)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def at_least(low: int, high: int | None = None):
    """An int >= ``low`` (and <= ``high``): one rule for every count, size and index flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


POSITIVE, NON_NEGATIVE, PORT = at_least(1), at_least(0), at_least(1, 65535)


def triple(text: str) -> tuple[int, int, int]:
    """``a:b`` (opt = b) or ``a:b:c`` -> (min, opt, max), 1 <= min <= opt <= max."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX or MIN:OPT:MAX integers, got {text!r}") from None
    if len(values) == 2:
        values = [values[0], values[1], values[1]]
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= OPT <= MAX, got {text!r}")
    return tuple(values)


def pool_limit(text: str) -> int:
    """Polygraphy's ``--pool-limit workspace:SIZE`` (SIZE in bytes, or with K/M/G) -> MiB."""
    pool, _, size = text.partition(":")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        scale = units.get(size[-1:].upper(), 1)
        value = int(float(size[:-1] if size[-1:].upper() in units else size) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected workspace:SIZE (e.g. workspace:4G), got {text!r}") from None
    if pool != "workspace" or value < 1 << 20:
        raise argparse.ArgumentTypeError(f"expected workspace:SIZE of at least 1M, got {text!r}")
    return value >> 20


def add_par(parser: argparse.ArgumentParser, note: str) -> None:
    """``--par NAME=VALUE`` (repeatable), one spelling for every subcommand that reduces."""
    parser.add_argument("--par", action="append", default=[], metavar="NAME=VALUE",
                        help=f"PAR option to override (repeatable), e.g. --par alpha=0.5 --par tau=1.0; {note}")


def add_tolerances(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--atol", type=finite, help="verification: absolute error bound (default: the precision's)")
    parser.add_argument("--rtol", type=finite, help="verification: error bound relative to the largest reference "
                        "output (default: the precision's)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=list(PROVIDERS), default="cpu",
                        help="ONNX Runtime execution provider for ONNX Runtime artifacts: CPU, CUDA or TensorRT "
                        "(cuda/tensorrt need par-export[gpu])")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an argument's help where X is a real value the help does not state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is one ``--help`` away) and defaults in help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # for error(): the flags it was given
        unknown = self.unknown_flags() if self._subparsers is not None else []
        if unknown:  # before the command: argparse would hand them on and complain about the command's arguments
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_known_args(args, namespace)

    def unknown_flags(self) -> list[str]:
        """The flags given to this parser that it does not know (before a subcommand, for the top one)."""
        given = self._argv
        if self._subparsers is not None:  # flags after the command name are the subcommand's
            given = given[:next((i for i, a in enumerate(given) if not a.startswith("-")), len(given))]
        known = list(self._option_string_actions)
        return [a for a in given if a.startswith("-") and len(a) > 1 and not a.lstrip("-").replace(".", "").isdigit()
                and not any(option.startswith(a.split("=", 1)[0]) for option in known)]

    def error(self, message: str):
        unknown = self.unknown_flags() if message.startswith("the following arguments are required") else []
        if unknown:  # argparse checks required arguments first: name the flag the user mistyped instead
            message = f"unrecognized arguments: {' '.join(unknown)}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
