"""Exceptions raised by the client."""

from __future__ import annotations

from enum import Enum

__all__ = [
    "AuthError",
    "ClientError",
    "ConnectionClosed",
    "ErrorCode",
    "RequestTimeout",
    "SwitchyardError",
]


class ErrorCode(str, Enum):
    """The protocol's stable error codes (``SwitchyardError.code`` compares equal to them)."""

    INVALID_JSON = "invalid_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    INVALID_CHANNEL = "invalid_channel"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    MESSAGE_TOO_LARGE = "message_too_large"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN = "forbidden"
    PLUGIN_ERROR = "plugin_error"
    UNAVAILABLE = "unavailable"
    NO_HISTORY = "no_history"
    UNAUTHORIZED = "unauthorized"
    INTERNAL = "internal"


class ClientError(Exception):
    """Base class of every exception this package raises."""


class SwitchyardError(ClientError):
    """The gateway answered a request with ``{"type":"error"}``; ``code`` is its stable code."""

    def __init__(self, code: str, message: str, request: str | None = None) -> None:
        """Keeps the code as a plain string so codes newer than this client still work."""
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request = request

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later unchanged (the broker was unreachable)."""
        return self.code in (ErrorCode.UNAVAILABLE.value, ErrorCode.RATE_LIMITED.value)


class ConnectionClosed(ClientError):
    """The connection ended before the request was answered, or the client is closed.

    A request that was already written may or may not have been performed by the gateway.
    """

    def __init__(self, code: int | None, reason: str, *, final: bool = False) -> None:
        """``final`` tells that the client will not reconnect."""
        super().__init__(f"connection closed ({code}): {reason}" if code else reason)
        self.code = code
        self.reason = reason
        self.final = final


class AuthError(ClientError):
    """The WebSocket upgrade was refused with 401 or 403: the client does not retry."""

    def __init__(self, status: int, reason: str) -> None:
        """``reason`` is the gateway's response body."""
        super().__init__(f"upgrade refused with HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class RequestTimeout(ClientError, TimeoutError):
    """No reply came within the request timeout (it is also a builtin ``TimeoutError``)."""
