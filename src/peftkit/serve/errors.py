"""The HTTP form of a user-facing error: a PeftkitError with a status code (and headers such as Retry-After)."""

from __future__ import annotations

from peftkit.errors import PeftkitError


class ServeError(PeftkitError):
    """A refused request: `status` is the HTTP status, the message is the whole JSON body's `error` paragraph."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
