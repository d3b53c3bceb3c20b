"""A database that cannot be reached answers 503 in the one error shape, with Retry-After, on the API and on
pages, wherever in the request the error was raised (``loom_site.views.server_failure``); any other failure
stays a 500. The real outage (a restarted PostgreSQL under gunicorn) is tests/deploy/test_database_restart.py;
here Django's own handler is driven through a view that raises, with the test client told not to re-raise."""

from __future__ import annotations

import pytest
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest
from django.test import Client
from django.urls import path

from loom_site.urls import handler500 as site_handler500
from loom_site.urls import urlpatterns as site_patterns

FAILURES = {"operational": OperationalError("server closed the connection unexpectedly"),
            "interface": InterfaceError("connection already closed"), "bug": ZeroDivisionError("a bug"),
            "full": OperationalError("database or disk is full"),
            "enospc": OSError(28, "No space left on device")}  # fmt: skip


def failing(request: HttpRequest, kind: str) -> None:
    raise FAILURES[kind]


urlpatterns = [
    path("api/v2/failing/<str:kind>", failing),
    path("failing/<str:kind>", failing),
    *site_patterns,
]
handler500 = site_handler500


@pytest.fixture
def client(settings) -> Client:
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False
    return Client(raise_request_exception=False)


@pytest.mark.parametrize("kind", ["operational", "interface"])
def test_the_api_answers_503_in_the_error_shape_while_the_database_is_away(client, kind):
    response = client.get(f"/api/v2/failing/{kind}")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    error = response.json()["error"]
    assert error["code"] == "unavailable" and "database" in error["message"] and error["fields"] == {}
    assert "Traceback" not in response.content.decode()


def test_a_page_answers_503_with_a_short_page(client):
    response = client.get("/failing/operational")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert b"Unavailable" in response.content and b"server closed" not in response.content


def test_any_other_failure_stays_a_500(client):
    response = client.get("/api/v2/failing/bug")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "server_error"


@pytest.mark.parametrize("kind", ["full", "enospc"])
def test_a_full_disk_says_so(client, kind):
    response = client.get(f"/api/v2/failing/{kind}")
    assert response.status_code == 503
    assert response.json()["error"]["message"].startswith("the server's disk is full")
