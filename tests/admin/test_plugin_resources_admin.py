"""The plugin resource admin: a tenant admin uploads a version, stages and activates it with list actions;
a broken archive is an error on the file field; contents never appear; plain members and other tenants'
admins do not see the resources."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from providers.models import PluginResource
from providers.resources import live_resources

from .conftest import field_errors, url

pytestmark = pytest.mark.django_db


def add(client, tenant, kind: str, name: str, data: bytes):
    return client.post(url(PluginResource, "add"), {
        "tenant": tenant.pk, "kind": kind, "name": name,
        "file": SimpleUploadedFile(name, data),
    })  # fmt: skip


def test_upload_stage_and_activate_from_the_admin(staff_admin_a, tenant_a, login):
    client = login(staff_admin_a)
    response = add(client, tenant_a, "automatortypes/shell/scripts", "deploy.sh", b"echo deploy-secret-ish")
    assert response.status_code == 302, response.content[:2000]
    resource = PluginResource.objects.get(name="deploy.sh")
    assert (resource.version, resource.status, resource.tenant) == (1, "inactive", tenant_a)
    for action in ("stage", "activate"):
        done = client.post(url(PluginResource), {"action": action, "_selected_action": [resource.pk]}, follow=True)
        assert done.status_code == 200
    resource.refresh_from_db()
    assert resource.status == "active"
    assert [r.name for r in live_resources(tenant_id=tenant_a.pk, plugin_kind="automatortypes", plugin="shell")] == [
        "deploy.sh"
    ]
    page = client.get(url(PluginResource, "change", resource.pk))
    assert page.status_code == 200 and b"deploy-secret-ish" not in page.content


def test_a_broken_archive_is_an_error_on_the_file_field(staff_admin_a, tenant_a, login):
    response = add(login(staff_admin_a), tenant_a, "automatortypes/shell/archives", "site", b"not an archive")
    assert response.status_code == 200
    assert any("tar" in error for error in field_errors(response, "file"))
    assert not PluginResource.objects.exists()


def test_members_and_other_tenants_admins_do_not_see_resources(
    staff_admin_a, staff_user_a, staff_admin_b, tenant_a, login
):
    add(login(staff_admin_a), tenant_a, "automatortypes/shell/scripts", "a.sh", b"echo a")
    resource = PluginResource.objects.get()
    assert login(staff_admin_b).get(url(PluginResource, "change", resource.pk)).status_code == 404
    assert b"a.sh" not in login(staff_admin_b).get(url(PluginResource)).content
    assert login(staff_user_a).get(url(PluginResource)).status_code == 403
