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


# Every stable code: class name, code, what it means, extra built-in bases.
_CODES = (
    ("InvalidArgument", "INVALID_ARGUMENT",
     "The request is malformed: fix it (nothing was changed).", (ValueError,)),
    ("NotFound", "NOT_FOUND", "The named resource, identity or method does not exist.", ()),
    ("AlreadyExists", "ALREADY_EXISTS",
     "Something with that name exists: pick another or delete it.", ()),
    ("PermissionDenied", "PERMISSION_DENIED",
     "The caller lacks the right: ask an admin of the resource.", ()),
    ("AuthenticationError", "UNAUTHENTICATED",
     "Credentials are missing, wrong, revoked or expired.", ()),
    ("SlowConsumer", "SLOW_CONSUMER",
     "A stream fell behind its bounded queue and was cut by the server.", ()),
    ("Timeout", "TIMEOUT",
     "The call's deadline (timeout=) passed before it finished.", (TimeoutError,)),
    ("Unavailable", "UNAVAILABLE", "The node cannot be reached or is shutting down: retry.", ()),
    ("Conflict", "CONFLICT", "A concurrent change got there first: re-read and retry.", ()),
    ("FailedPrecondition", "FAILED_PRECONDITION",
     "The state does not allow this (a non-empty folder, a closed connection).", ()),
    ("ResourceExhausted", "RESOURCE_EXHAUSTED", "A limit was hit (message size, queue, quota).", ()),
    ("Unimplemented", "UNIMPLEMENTED", "Unknown method, or not supported by this node.", ()),
    ("Cancelled", "CANCELLED", "The call was cancelled (by this client or the peer).", ()),
    ("InternalError", "INTERNAL",
     "A server bug or storage failure: see the server log by trace id.", ()),
)

_BY_CODE: Dict[str, Type[BusbarError]] = {}
for _name, _code, _doc, _extra in _CODES:
    _BY_CODE[_code] = type(_name, (BusbarError, *_extra),
                           {"code": _code, "__doc__": _doc, "__module__": __name__})
    globals()[_name] = _BY_CODE[_code]


class SessionReleased(FailedPrecondition):  # type: ignore[misc,valid-type,name-defined]  # noqa: F821
    """The transport session was released (or its resource deleted) while
    a pop waited on it. Raised by a transport session's pops for every
    FAILED_PRECONDITION the node answers them (the code, not the message,
    decides): a pop of a session fails so only when it was released."""


def _from_code(code: str, message: str, trace_id: Optional[str]) -> BusbarError:
    """The exception for a stable code (used by the Rust core)."""
    return _BY_CODE.get(code, InternalError)(message, code=code, trace_id=trace_id)


__all__ = ["BusbarError"] + [name for name, *_ in _CODES] + ["SessionReleased"]
