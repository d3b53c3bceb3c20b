"""API plumbing shared by every app: the one error shape and pagination.

Errors always look like ``{"error": {"code": ..., "message": ..., "fields": {...}}}`` whether they come
from DRF (validation, auth, parsing, 404) or from a service's ``ApplicationError``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DataError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tenants.errors import ApplicationError


class LoomPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error details as ``{"field.sub": [messages]}``."""
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for sub_key, messages in _flatten(value, name).items():
                fields.setdefault(sub_key, []).extend(messages)
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            fields[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                for sub_key, messages in _flatten(item, f"{prefix}[{index}]").items():
                    fields.setdefault(sub_key, []).extend(messages)
    else:
        fields[prefix or "non_field_errors"] = [str(detail)]
    return fields


def error_response(
    code: str, message: str, status_code: int, fields: dict[str, Any] | None = None, **extra: Any
) -> Response:
    return Response({"error": {"code": code, "message": message, "fields": fields or {}, **extra}}, status=status_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return error_response(exc.code, exc.message, exc.status, exc.fields, **exc.extra)
    if isinstance(exc, DataError):
        # A value the database cannot hold (an id beyond bigint, say) is bad input, not a server fault.
        from rest_framework.views import set_rollback

        set_rollback()
        return error_response("invalid", "a value in the request is out of range", status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), ("", ["invalid input"]))
        message = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
        response.data = {"error": {"code": "invalid", "message": message, "fields": fields}}
        return response
    if isinstance(exc, exceptions.ParseError):
        response.data = {
            "error": {"code": "malformed", "message": f"request body is not valid JSON: {exc.detail}", "fields": {}}
        }
        return response
    if isinstance(exc, exceptions.APIException):
        detail = exc.detail
        message = str(detail) if not isinstance(detail, (dict, list)) else "request failed"
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        response.data = {"error": {"code": code, "message": message, "fields": {}}}
    return response


def not_found(message: str) -> Response:
    return error_response("not_found", message, status.HTTP_404_NOT_FOUND)
