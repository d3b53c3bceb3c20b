"""A small JSON client of the v2 API on urllib: bearer token, tenant header, the API's error shape."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import __version__
from .config import Config

TIMEOUT_S = 60


class ApiError(Exception):
    """A request that failed: the API's error (status, code, message) or a transport problem (status 0)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "unreachable", body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body


class Client:
    def __init__(self, config: Config) -> None:
        self.config = config

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        if path.startswith(("http://", "https://")):
            return path
        url = f"{self.config.url}/api/v2/{path.lstrip('/')}"
        params = {key: value for key, value in (query or {}).items() if value not in (None, "")}
        return f"{url}?{urllib.parse.urlencode(params)}" if params else url

    def request(
        self, method: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:  # fmt: skip
        """The decoded JSON answer (None for an empty one); raises ApiError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path, query), data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.config.token}")
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", f"loom-cli/{__version__}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.config.tenant:
            request.add_header("X-Loom-Tenant", self.config.tenant)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise _api_error(error) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(f"cannot reach {self.config.url}: {reason}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None, **query: Any) -> Any:
        return self.request("POST", path, body={} if body is None else body, query=query)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def get_all(self, path: str, **query: Any) -> list[Any]:
        """Every item of a paginated list, following ``next``."""
        page = self.get(path, page_size=200, **query)
        if isinstance(page, list):
            return page
        items = list(page["results"])
        while page.get("next"):
            page = self.get(page["next"])
            items.extend(page["results"])
        return items


def _api_error(error: urllib.error.HTTPError) -> ApiError:
    raw = error.read()
    try:
        body = json.loads(raw)
        detail = body["error"]
        return ApiError(detail.get("message") or str(error), status=error.code, code=detail.get("code", ""), body=body)
    except (ValueError, KeyError, TypeError):
        text = raw.decode(errors="replace").strip()[:200]
        return ApiError(f"HTTP {error.code} {error.reason}" + (f": {text}" if text else ""), status=error.code,
                        code="http_error")  # fmt: skip
