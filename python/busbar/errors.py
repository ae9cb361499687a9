"""Busbar's exceptions: one class per stable error code.

Every failure, from the server or from checks this package makes before
sending anything, raises a subclass of :class:`BusbarError` with ``.code``
(the stable code name, e.g. ``"NOT_FOUND"``), ``.message`` (what went wrong
and what to do) and ``.trace_id`` (to find the call in the server log, when
the server answered).
"""

from __future__ import annotations

from typing import Dict, Optional, Type


class BusbarError(Exception):
    """Root of every Busbar error."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, code: Optional[str] = None,
                 trace_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.trace_id = trace_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(BusbarError, ValueError):
    """The request is malformed: fix it (nothing was changed)."""
    code = "INVALID_ARGUMENT"


class NotFound(BusbarError):
    """The named resource, identity or method does not exist."""
    code = "NOT_FOUND"


class AlreadyExists(BusbarError):
    """Something with that name exists: pick another name or delete it first."""
    code = "ALREADY_EXISTS"


class PermissionDenied(BusbarError):
    """The caller lacks the right: ask an admin of the resource for it."""
    code = "PERMISSION_DENIED"


class AuthenticationError(BusbarError):
    """Credentials are missing, wrong, revoked or expired (UNAUTHENTICATED)."""
    code = "UNAUTHENTICATED"


class SlowConsumer(BusbarError):
    """A stream fell behind its bounded queue and was cut by the server."""
    code = "SLOW_CONSUMER"


class Timeout(BusbarError, TimeoutError):
    """The call's deadline (``timeout=``) passed before it finished."""
    code = "TIMEOUT"


class Unavailable(BusbarError):
    """The node cannot be reached or is shutting down: retry."""
    code = "UNAVAILABLE"


class Conflict(BusbarError):
    """A concurrent change got there first: re-read and retry."""
    code = "CONFLICT"


class FailedPrecondition(BusbarError):
    """The state does not allow this (a non-empty folder, a closed connection)."""
    code = "FAILED_PRECONDITION"


class ResourceExhausted(BusbarError):
    """A limit was hit (message size, queue, quota)."""
    code = "RESOURCE_EXHAUSTED"


class Unimplemented(BusbarError):
    """Unknown method, or not supported by this node."""
    code = "UNIMPLEMENTED"


class Cancelled(BusbarError):
    """The call was cancelled (by this client or the peer)."""
    code = "CANCELLED"


class InternalError(BusbarError):
    """A server bug or storage failure: see the server log by trace id."""
    code = "INTERNAL"


_BY_CODE: Dict[str, Type[BusbarError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, PermissionDenied,
                AuthenticationError, SlowConsumer, Timeout, Unavailable, Conflict,
                FailedPrecondition, ResourceExhausted, Unimplemented, Cancelled,
                InternalError)
}


def _from_code(code: str, message: str, trace_id: Optional[str]) -> BusbarError:
    """The exception for a stable code (used by the Rust core)."""
    return _BY_CODE.get(code, InternalError)(message, code=code, trace_id=trace_id)


__all__ = ["BusbarError"] + [cls.__name__ for cls in _BY_CODE.values()]
