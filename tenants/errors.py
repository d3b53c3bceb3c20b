"""Errors raised by services. The API turns them into ``{"error": {"code", "message", "fields"}}``."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """Base of errors raised by services; the API maps them to the one error shape."""

    code = "invalid"
    status = 400

    def __init__(
        self, message: str, *, fields: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.extra = extra or {}


class NotFound(ApplicationError):
    code = "not_found"
    status = 404


class Conflict(ApplicationError):
    code = "conflict"
    status = 409


class PermissionDenied(ApplicationError):
    code = "permission_denied"
    status = 403


class SignInRefused(PermissionDenied):
    """Someone the identity provider vouched for may not sign in to Loom; the message says why."""
