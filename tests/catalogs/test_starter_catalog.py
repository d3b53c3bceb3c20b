"""The starter catalog shipped in catalogs/starter: imports cleanly with its scripts as live plugin
resources (twice, idempotently), and web-cluster lays out one balancer, N web nodes and one cache."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from django.core.management import call_command

from clusters.services.preview import PreviewRequest, cluster_preview
from providers.models import PluginResource
from providers.resources import live_resources
from tests.factories import enable_operator_providers

pytestmark = pytest.mark.django_db

STARTER = Path(__file__).resolve().parents[2] / "catalogs" / "starter"


def test_the_starter_catalog_imports_with_its_scripts_live(tenant_a, capsys):
    enable_operator_providers(tenant_a)
    call_command("import_catalog", str(STARTER), "--tenant", tenant_a.name, "--resources")
    scripts = {r.name for r in live_resources(tenant_id=tenant_a.pk, plugin_kind="automatortypes", plugin="shell")}
    assert scripts == {"base.sh", "nginx.sh", "haproxy.sh", "redis.sh"}
    capsys.readouterr()  # the first import's report
    enable_operator_providers(tenant_a)
    call_command("import_catalog", str(STARTER), "--tenant", tenant_a.name, "--resources")
    output = capsys.readouterr().out
    unchanged = next(line for line in output.splitlines() if line.startswith("unchanged resources"))
    assert "shell/scripts/base.sh" in unchanged
    assert "uploaded resources" not in output
    shipped = len(list(STARTER.glob("resources/*/*/*/*")))  # the shell scripts and the variants' archives
    assert PluginResource.objects.count() == shipped, "an unchanged resource is not uploaded again"


@pytest.mark.parametrize("size", [3, 4, 6])
def test_web_cluster_has_one_balancer_one_cache_and_the_rest_web_nodes(tenant_a, admin_a, size):
    enable_operator_providers(tenant_a)
    call_command("import_catalog", str(STARTER), "--tenant", tenant_a.name)
    preview = cluster_preview(user=admin_a, tenant=tenant_a, request=PreviewRequest("web", "web-cluster", size))
    roles = Counter(frozenset(node.services) - {"base"} for node in preview.nodes)
    assert roles == {frozenset({"haproxy"}): 1, frozenset({"redis"}): 1, frozenset({"nginx"}): size - 2}
    assert all("base" in node.services for node in preview.nodes)
