"""The one base of every error that bad input causes.

``par-export`` prints a :class:`ParExportError` as one line and exits 2; any other exception is a
programming error (rc 3, ``--debug`` shows its traceback). Each layer raises its own subclass
(``ExportError``, ``BuildError``, ``ArtifactError``, ``InputError``, ...), which names the input,
the value and what was expected.
"""


class ParExportError(ValueError):
    """Bad input (a flag, a file, a folder, a request): the message says what was wrong and what was
    expected. A ``ValueError`` so that callers that validate with ``except ValueError`` keep working."""


class UsageError(ParExportError):
    """A command-line value or option combination that cannot be used; the message names the flag."""


class ExportError(ParExportError):
    """An export that could not be completed or did not validate; nothing was written."""
