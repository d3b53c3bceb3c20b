"""Plugin resources over the API: upload, versions, stage / recall / activate, delete rules, archive checks,
key material never downloaded, encryption at rest, admin-only and tenant isolation."""

from __future__ import annotations

import io
import tarfile

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from providers.models import PluginResource
from providers.resources import live_resources

pytestmark = pytest.mark.django_db

SCRIPTS = "/api/v2/plugins/automatortypes/shell/scripts"
ARCHIVES = "/api/v2/plugins/automatortypes/shell/archives"
KEYS = "/api/v2/plugins/providertypes/aws/ssh_keys"


def upload(client, url: str, data: bytes):
    return client.post(url, data=data, content_type="application/octet-stream")


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def statuses(client, url: str) -> dict[int, str]:
    return {meta["version"]: meta["status"] for meta in client.get(url).json()}


def live(tenant) -> dict[str, tuple[int, bytes]]:
    return {r.name: (r.version, r.content) for r in live_resources(tenant_id=tenant.pk, plugin_kind="automatortypes",
                                                                   plugin="shell")}  # fmt: skip


def test_versions_move_through_stage_activate_and_recall(admin_a, tenant_a, client_for):
    client = client_for(admin_a)
    first = upload(client, f"{SCRIPTS}/install.sh", b"#!/bin/sh\necho one\n")
    assert first.status_code == 201, first.content
    assert first.json() | {"createdAt": None} == {
        "name": "install.sh", "version": 1, "status": "inactive", "size": 19,
        "sha256": first.json()["sha256"], "createdAt": None,
    }  # fmt: skip
    assert upload(client, f"{SCRIPTS}/install.sh", b"#!/bin/sh\necho two\n").json()["version"] == 2
    assert client.post(f"{SCRIPTS}/install.sh/versions/1/stage").json()["status"] == "staged"
    assert live(tenant_a) == {}, "staging alone changes nothing automators see"
    assert client.post("/api/v2/plugins/activate").json() == {"activated": 1, "retired": 0}
    assert statuses(client, f"{SCRIPTS}/install.sh") == {1: "active", 2: "inactive"}
    assert live(tenant_a) == {"install.sh": (1, b"#!/bin/sh\necho one\n")}
    # Staging v2 slates it instead of v1; v1 stays live until the activation switches them together.
    client.post(f"{SCRIPTS}/install.sh/versions/2/stage")
    assert statuses(client, f"{SCRIPTS}/install.sh") == {1: "recalled", 2: "staged"}
    assert live(tenant_a)["install.sh"][0] == 1
    assert client.post("/api/v2/plugins/activate").json() == {"activated": 1, "retired": 1}
    assert live(tenant_a)["install.sh"] == (2, b"#!/bin/sh\necho two\n")
    active = client.get(SCRIPTS, {"status": "active"}).json()
    assert list(active) == ["install.sh"] and [m["version"] for m in active["install.sh"]] == [2]
    client.post(f"{SCRIPTS}/install.sh/versions/2/recall")
    client.post("/api/v2/plugins/activate")
    assert live(tenant_a) == {}


def test_only_inactive_versions_can_be_deleted(admin_a, client_for):
    client = client_for(admin_a)
    upload(client, f"{SCRIPTS}/run.sh", b"echo")
    upload(client, f"{SCRIPTS}/run.sh", b"echo 2")
    client.post(f"{SCRIPTS}/run.sh/versions/1/stage")
    refused = client.delete(f"{SCRIPTS}/run.sh")
    assert refused.status_code == 409 and "v1 staged" in refused.json()["error"]["message"]
    assert client.delete(f"{SCRIPTS}/run.sh/versions/2").status_code == 204
    assert client.delete(f"{SCRIPTS}/run.sh/versions/2").status_code == 404
    client.post(f"{SCRIPTS}/run.sh/versions/1/recall")
    assert client.delete(f"{SCRIPTS}/run.sh").status_code == 204
    assert not PluginResource.objects.exists()


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"not an archive", "not a tar or zip archive"), (tarball({"../escape.sh": b"x"}), "unsafe path"),
     (tarball({"/etc/passwd": b"x"}), "unsafe path"), (b"", "empty")],
    ids=["not-an-archive", "parent-path", "absolute-path", "empty"],  # gzip bytes hold a time: no data ids
)  # fmt: skip
def test_bad_uploads_are_refused_naming_the_problem(admin_a, client_for, data, problem):
    response = upload(client_for(admin_a), f"{ARCHIVES}/site", data)
    assert response.status_code == 400
    assert problem in response.json()["error"]["fields"]["content"][0]
    assert not PluginResource.objects.exists()


def test_a_good_archive_and_a_multipart_upload_are_accepted(admin_a, client_for):
    client = client_for(admin_a)
    assert upload(client, f"{ARCHIVES}/site", tarball({"index.html": b"<h1>hi</h1>"})).status_code == 201
    form = client.post(f"{SCRIPTS}/from-form.sh", {"file": io.BytesIO(b"echo form")}, format="multipart")
    assert form.status_code == 201 and form.json()["size"] == 9


@pytest.mark.parametrize(
    ("url", "message"),
    [("/api/v2/plugins/automatortypes/nosuch/scripts/x", "automator plugin nosuch not found"),
     ("/api/v2/plugins/automatortypes/shell/nosuch/x", "nosuch for automator plugin shell not found; it has: archives, scripts")],
)  # fmt: skip
def test_unknown_plugins_and_resource_types_are_404_naming_them(admin_a, client_for, url, message):
    response = upload(client_for(admin_a), url, b"x")
    assert response.status_code == 404 and message in response.json()["error"]["message"]


def test_keys_are_encrypted_at_rest_and_never_downloaded(admin_a, client_for):
    client = client_for(admin_a)
    key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material\n"
    assert upload(client, f"{KEYS}/ec2", key).status_code == 201
    assert b"secret-key-material" not in bytes(PluginResource.objects.get(name="ec2").content)
    refused = client.get(f"{KEYS}/ec2/versions/1/content")
    assert refused.status_code == 403 and "never downloaded" in refused.json()["error"]["message"]
    upload(client, f"{SCRIPTS}/ok.sh", b"echo ok")
    download = client.get(f"{SCRIPTS}/ok.sh/versions/1/content")
    assert download.status_code == 200 and download.content == b"echo ok"


def test_plain_users_get_403_and_other_tenants_see_nothing(admin_a, user_a, admin_b, client_for):
    upload(client_for(admin_a), f"{SCRIPTS}/a.sh", b"echo a")
    refused = client_for(user_a).get(SCRIPTS)
    assert refused.status_code == 403 and "tenant admins" in refused.json()["error"]["message"]
    other = client_for(admin_b)
    assert other.get(SCRIPTS).json() == {}
    assert other.post(f"{SCRIPTS}/a.sh/versions/1/stage").status_code == 404
    assert other.get(f"{SCRIPTS}/a.sh/versions/1/content").status_code == 404
    assert other.delete(f"{SCRIPTS}/a.sh").status_code == 404


def test_an_invalid_status_filter_is_a_400(admin_a, client_for):
    response = client_for(admin_a).get(SCRIPTS, {"status": "bogus"})
    assert response.status_code == 400 and response.json()["error"]["fields"] == {"status": ["invalid status filter"]}


def test_resource_contents_rotate_with_the_field_keys(admin_a, tenant_a, client_for, settings):
    client = client_for(admin_a)
    upload(client, f"{SCRIPTS}/r.sh", b"echo rotate")
    client.post(f"{SCRIPTS}/r.sh/versions/1/stage")
    client.post("/api/v2/plugins/activate")
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, *settings.FIELD_ENCRYPTION_KEYS]
    call_command("rotate_field_keys")
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    assert live(tenant_a)["r.sh"] == (1, b"echo rotate")
