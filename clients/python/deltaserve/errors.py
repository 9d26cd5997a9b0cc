"""Errors raised by the deltaserve clients.

Every failed call raises a :class:`DeltaserveError` (or one of its
subclasses) that carries the gRPC status code's name, e.g. ``"NOT_FOUND"``,
and the server's message. The server's codes follow one rule set:

* ``INVALID_ARGUMENT``   a malformed request (the message names the field)
* ``NOT_FOUND``          an unknown model
* ``RESOURCE_EXHAUSTED`` the server's queue or state memory is full
* ``UNAVAILABLE``        the server is unreachable or shutting down
* ``DEADLINE_EXCEEDED``  the call's timeout passed
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc

__all__ = [
    "DeltaserveError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnavailableError",
    "DeadlineExceededError",
    "CancelledError",
    "from_rpc_error",
]


class DeltaserveError(Exception):
    """A call to a deltaserve server failed.

    Attributes:
        code: Name of the gRPC status code, e.g. ``"INVALID_ARGUMENT"``.
        message: The server's (or gRPC's) description of the failure.
        status_code: The same code as a :class:`grpc.StatusCode`, or ``None``
            for failures that did not come from gRPC.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status_code: Optional[grpc.StatusCode] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status_code = status_code


class InvalidArgumentError(DeltaserveError):
    """The request was malformed (``INVALID_ARGUMENT``)."""


class NotFoundError(DeltaserveError):
    """The model (or service) asked for does not exist (``NOT_FOUND``)."""


class ResourceExhaustedError(DeltaserveError):
    """The server's queue or memory is full (``RESOURCE_EXHAUSTED``)."""


class UnavailableError(DeltaserveError):
    """The server cannot be reached or is shutting down (``UNAVAILABLE``)."""


class DeadlineExceededError(DeltaserveError):
    """The call's timeout passed before it finished (``DEADLINE_EXCEEDED``)."""


class CancelledError(DeltaserveError):
    """The call was cancelled by someone other than this client
    (``CANCELLED``)."""


_BY_CODE: Dict[grpc.StatusCode, Type[DeltaserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def from_rpc_error(error: grpc.RpcError) -> DeltaserveError:
    """Converts a failed gRPC call (sync or asyncio) to a DeltaserveError of
    the class that matches its status code."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    status_code = code_fn() if callable(code_fn) else None
    message = (details_fn() if callable(details_fn) else None) or str(error)
    if not isinstance(status_code, grpc.StatusCode):
        return DeltaserveError("UNKNOWN", message)
    cls = _BY_CODE.get(status_code, DeltaserveError)
    return cls(status_code.name, message, status_code)
