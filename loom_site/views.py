"""Project-level error views: API paths get the JSON error shape even when no API view matched.

A database that cannot be reached (restarting, failed over, out of connections) is not a bug in the request:
it answers 503 with ``Retry-After``, in the same error shape, so a client retries instead of reporting a
failure, and no traceback reaches anyone. Django calls ``handler500`` inside its exception handling wherever
the error was raised (a view, or a middleware reading the session), so the cause is ``sys.exc_info()``.
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error

RETRY_AFTER_SECONDS = 5
UNAVAILABLE = "the database is unavailable for a moment; try again in a few seconds"


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        body = {"error": {"code": "not_found", "message": f"no such endpoint: {request.path}", "fields": {}}}
        return JsonResponse(body, status=404)
    return page_not_found(request, exception)


def server_failure(request: HttpRequest) -> HttpResponse:
    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        return unavailable(request)
    if request.path.startswith("/api/"):
        body = {"error": {"code": "server_error", "message": "internal error; it has been logged", "fields": {}}}
        return JsonResponse(body, status=500)
    return server_error(request)


def unavailable(request: HttpRequest) -> HttpResponse:
    """503 for an outage of the database: JSON on API paths, a short page elsewhere."""
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse(
            {"error": {"code": "unavailable", "message": UNAVAILABLE, "fields": {}}}, status=503
        )
    else:
        response = HttpResponse(
            f"<!doctype html><title>Loom is unavailable</title><h1>Unavailable</h1><p>{UNAVAILABLE}.</p>",
            status=503,
        )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
