"""Project-level error views: API paths get the JSON error shape even when no API view matched."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        body = {"error": {"code": "not_found", "message": f"no such endpoint: {request.path}", "fields": {}}}
        return JsonResponse(body, status=404)
    return page_not_found(request, exception)


def server_failure(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        body = {"error": {"code": "server_error", "message": "internal error; it has been logged", "fields": {}}}
        return JsonResponse(body, status=500)
    return server_error(request)
