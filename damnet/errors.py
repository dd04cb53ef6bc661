"""Errors a user can act on.

Every error names the file (or URI) and the problem, so the command line can print one
line instead of a stack trace.
"""

from __future__ import annotations

import re

#: ``scheme://user:password@host``: a URI's password, up to the last ``@`` before the path (a
#: password should be percent-encoded, but one with a raw ``@`` is still hidden whole)
_URI_PASSWORD = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*):[^\s/]+@")


def redact_secrets(text: str) -> str:
    """``text`` with the password of every URI in it as ``***`` (``http://u:pw@h`` ->
    ``http://u:***@h``): error messages of MLflow, SQLAlchemy and requests quote the URI they
    were given, credentials and all."""
    return _URI_PASSWORD.sub(r"\1:***@", text)


#: exit statuses of the ``damnet`` command (docs/pipeline.md, "Errors"): the input is wrong (no
#: retry helps), the promotion gate refused the candidate (a verdict, not a failure)
EXIT_BAD_INPUT = 2
EXIT_REJECTED = 3


class DamnetError(Exception):
    """Base class for errors that are the user's input, not a bug."""

    exit_code = EXIT_BAD_INPUT


class ImageryError(DamnetError):
    """One image (or image pair) cannot be used.

    Args:
        path: the file that is wrong.
        problem: what is wrong with it, in words a user understands.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ImageryErrors(DamnetError):
    """Several inputs of one folder or region are wrong; each listed on its own line."""

    def __init__(self, errors: list[ImageryError]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in the imagery:\n{lines}")


class UnknownTiles(DamnetError, KeyError):
    """Tile ids that the region's manifest does not have (e.g. it was re-ingested since)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StorageError(DamnetError):
    """A storage URI is malformed, missing or cannot be written."""


#: exit status of a fault that may pass: EX_TEMPFAIL of sysexits.h. Airflow retries it (a step
#: that exits 2 is not retried: its input is wrong), as a Kubernetes Job's backoff does.
EXIT_UNAVAILABLE = 75


class Unavailable(DamnetError):
    """A service the step needs (the S3 endpoint, the MLflow tracking server) did not answer in
    the time allowed: trying again later may succeed (exit status :data:`EXIT_UNAVAILABLE`)."""

    exit_code = EXIT_UNAVAILABLE


class StorageUnavailable(StorageError, Unavailable):
    """The store's S3 endpoint did not answer (or answered "try later": 500, 503, SlowDown)."""
