"""Project-level error views: API paths get the JSON error shape even when no API view matched.

A database that cannot be reached (restarting, failed over, out of connections, or a full disk under it) is
not a bug in the request: it answers 503 with ``Retry-After``, in the same error shape (saying so when the
disk is full), so a client retries instead of reporting a
failure, and no traceback reaches anyone. Django calls ``handler500`` inside its exception handling wherever
the error was raised (a view, or a middleware reading the session), so the cause is ``sys.exc_info()``.
"""

from __future__ import annotations

import errno
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error

RETRY_AFTER_SECONDS = 5
UNAVAILABLE = "the database is unavailable for a moment; try again in a few seconds"
DISK_FULL = "the server's disk is full or failing: nothing of this request was saved; try again once space is freed"
# SQLite says "database or disk is full", or "disk I/O error" when its WAL index cannot grow; PostgreSQL
# "could not extend file" or "No space left on device".
_DISK_FULL_MARKS = ("disk is full", "no space left on device", "could not extend file", "disk i/o error")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        body = {"error": {"code": "not_found", "message": f"no such endpoint: {request.path}", "fields": {}}}
        return JsonResponse(body, status=404)
    return page_not_found(request, exception)


def server_failure(request: HttpRequest) -> HttpResponse:
    error = sys.exc_info()[1]
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):  # a file cache, a log, a file
        return unavailable(request, message=DISK_FULL)
    if isinstance(error, OperationalError | InterfaceError):
        disk_full = any(mark in str(error).lower() for mark in _DISK_FULL_MARKS)
        return unavailable(request, message=DISK_FULL if disk_full else UNAVAILABLE)
    if request.path.startswith("/api/"):
        body = {"error": {"code": "server_error", "message": "internal error; it has been logged", "fields": {}}}
        return JsonResponse(body, status=500)
    return server_error(request)


def unavailable(request: HttpRequest, *, message: str = UNAVAILABLE) -> HttpResponse:
    """503 for an outage of the database (or a full disk under it, said so): JSON on API paths, a short page
    elsewhere. The transaction was rolled back, so the client may simply retry."""
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse(
            {"error": {"code": "unavailable", "message": message, "fields": {}}}, status=503
        )
    else:
        response = HttpResponse(
            f"<!doctype html><title>Loom is unavailable</title><h1>Unavailable</h1><p>{message}.</p>", status=503
        )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
