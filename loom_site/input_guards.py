"""Reject NUL characters at the door.

PostgreSQL text cannot hold U+0000, so a NUL in a name, a query parameter or a login form would surface
as a server error deep inside a query. The JSON parser names the offending field; the middleware answers
400 for query strings before any view runs. Form fields are already covered by Django's and DRF's own
``ProhibitNullCharactersValidator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions
from rest_framework.parsers import JSONParser

NUL = "\x00"
MESSAGE = "must not contain NUL characters"


def nul_paths(value: Any, path: str = "", pointer: bool = False) -> Iterator[str]:
    """Paths of every key or string in a JSON value that contains a NUL.

    Paths are dotted (``provisioner.actions.install``) like every other field name in Loom's errors;
    inside a free-form ``config`` object, whose keys may themselves contain dots, they continue as a
    JSON pointer (``defaults.config/hadoop/fs.defaultFS``), as the macro checks report them.
    """
    if isinstance(value, str):
        if NUL in value:
            yield path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            key_text = str(key).replace(NUL, "\\0")
            if pointer:
                child = f"{path}/{key_text.replace('~', '~0').replace('/', '~1')}"
            else:
                child = f"{path}.{key_text}" if path else key_text
            if NUL in str(key):
                yield child
            else:
                yield from nul_paths(item, child, pointer or key == "config")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from nul_paths(item, f"{path}/{index}" if pointer else f"{path}[{index}]", pointer)


class StrictJSONParser(JSONParser):
    """JSON, with every NUL-carrying field reported as a validation error naming it."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        bad = list(nul_paths(data))
        if bad:
            raise exceptions.ValidationError({path: [MESSAGE] for path in bad})
        return data


class RejectNulMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # Form fields need no check here: Django forms and DRF serializers already refuse NULs.
        for key, values in request.GET.lists():
            if NUL in key or any(NUL in value for value in values):
                shown = key.replace(NUL, "\\0")
                message = f"query parameter {shown!r} {MESSAGE}"
                return JsonResponse({"error": {"code": "invalid", "message": message, "fields": {}}}, status=400)
        if NUL in request.path:
            return JsonResponse({"error": {"code": "invalid", "message": f"path {MESSAGE}", "fields": {}}}, status=400)
        return self.get_response(request)
