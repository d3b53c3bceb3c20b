"""Self-service pages. The full set (create cluster, live progress) arrives with its issue; this is the
signed-in landing page listing the templates a user may launch, through the catalog selectors."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from templates_app.selectors import template_list_for_user


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "frontend/home.html", {"tenants": template_list_for_user(user=request.user)})
