"""The static pool's hosts over the API (``/api/v2/providers/{name}/hosts``) and its admin services: tenant
admins register, edit, take out of service and retire hosts; bad input names the field; a host a node holds
cannot be changed; other tenants see nothing (404) and plain members are refused (403)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.drivers import MachineSpec, TransientError
from providers.models import PoolHost, Provider
from providers.pool import pool_host_allocate, pool_host_register
from templates_app.services import catalog_entity_save
from tenants.models import AuditEvent, Tenant

API = "/api/v2/providers"
# Not a real key: the API tests never connect. Anything that looks like one must never come back.
FAKE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-but-secret-0123456789\n-----END OPENSSH PRIVATE KEY-----\n"
)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0b29tLXRlc3QtaG9zdC1rZXktMDEyMzQ1Njc4OWFi"

pytestmark = pytest.mark.django_db


def static_provider(tenant: Tenant, name: str = "pool", **fields: str) -> Provider:
    """A ``static`` provider saved through the catalog service, so its key is encrypted as in real use."""
    provisioner = {"ssh_private_key": FAKE_KEY, "ssh_user": "root", "cleanup_script": "true", **fields}
    data = {"name": name, "providertype": "static", "provisioner": provisioner}
    entity = catalog_entity_save(tenant=tenant, user=None, kind_key="providers", data=data, create=True).entity
    return Provider.objects.get(pk=entity.pk)


def node_spec(number: int, cluster: str = "c1") -> MachineSpec:
    return MachineSpec.for_node(
        cluster_key=cluster, node_key=f"{cluster}-node-{number}", node_number=number, flavor="pool", image="any"
    )


def hosts_url(provider: str = "pool", pk: int | None = None) -> str:
    return f"{API}/{provider}/hosts" + (f"/{pk}" if pk is not None else "")


@pytest.fixture
def pool_a(tenant_a: Tenant) -> Provider:
    return static_provider(tenant_a)


@pytest.fixture
def admin(client_for: Any, admin_a: Any) -> Any:
    return client_for(admin_a)


def register(client: Any, **body: Any) -> Any:
    return client.post(hosts_url(), body, format="json")


def error_of(response: Any) -> dict[str, Any]:
    return response.json()["error"]


class TestRegister:
    def test_an_admin_registers_a_host_and_it_is_audited(self, admin: Any, pool_a: Provider) -> None:
        response = register(admin, address="10.9.0.5", ssh_port=2222, ssh_user="deploy", host_key=HOST_KEY + " me@x")
        assert response.status_code == 201, response.content
        body = response.json()
        assert response["Location"] == hosts_url(pk=body["id"])
        assert {key: body[key] for key in ("provider", "address", "ssh_port", "ssh_user", "host_key", "state")} == {
            "provider": "pool", "address": "10.9.0.5", "ssh_port": 2222, "ssh_user": "deploy",
            "host_key": HOST_KEY, "state": "free",
        }  # fmt: skip
        assert body["node"] == "" and body["machine_id"] is None and body["allocations"] == 0
        event = AuditEvent.objects.get(entity_kind="pool host")
        assert (event.action, event.entity_name, event.actor.username) == ("create", "pool/10.9.0.5:2222", "alice")
        assert admin.get(hosts_url(pk=body["id"])).json() == body

    def test_defaults_and_dns_names(self, admin: Any, pool_a: Provider) -> None:
        body = register(admin, address="Node7.Example.COM.").json()
        assert (body["address"], body["ssh_port"], body["ssh_user"], body["host_key"]) == (
            "node7.example.com",
            22,
            "",
            "",
        )

    @pytest.mark.parametrize(
        ("body", "field", "words"),
        [
            ({}, "address", "required"),
            ({"address": "not a host!"}, "address", "IP address or a DNS name"),
            ({"address": "10.0.0.300"}, "address", "IP address or a DNS name"),
            ({"address": "10.0.0.1", "ssh_port": 70000}, "ssh_port", "between 1 and 65535"),
            ({"address": "10.0.0.1", "ssh_port": "twenty"}, "ssh_port", "integer"),
            ({"address": "10.0.0.1", "ssh_user": "bad user"}, "ssh_user", "user name"),
            ({"address": "10.0.0.1", "host_key": "ssh-ed25519 %%%"}, "host_key", "OpenSSH public key line"),
            ({"address": "10.0.0.1", "state": "allocated"}, "state", "not a valid choice"),
        ],
    )
    def test_bad_input_names_the_field(
        self, admin: Any, pool_a: Provider, body: dict[str, Any], field: str, words: str
    ) -> None:
        response = register(admin, **body)
        assert response.status_code == 400, response.content
        error = error_of(response)
        assert error["code"] == "invalid" and list(error["fields"]) == [field]
        assert words in error["fields"][field][0] and error["message"].startswith(f"{field}: ")
        assert not PoolHost.objects.exists()

    def test_every_bad_field_is_named_at_once(self, admin: Any, pool_a: Provider) -> None:
        error = error_of(register(admin, address="-bad-", ssh_port=0, ssh_user="x y"))
        assert set(error["fields"]) == {"address", "ssh_port", "ssh_user"}

    def test_the_same_endpoint_twice_is_a_conflict_until_retired(self, admin: Any, pool_a: Provider) -> None:
        first = register(admin, address="10.0.0.1").json()
        again = register(admin, address="10.0.0.1", ssh_port=22)
        assert again.status_code == 409 and "is already host" in error_of(again)["fields"]["address"][0]
        assert register(admin, address="10.0.0.1", ssh_port=2200).status_code == 201  # another port is another host
        assert admin.delete(hosts_url(pk=first["id"])).status_code == 204
        assert register(admin, address="10.0.0.1").status_code == 201

    def test_only_static_providers_have_hosts(self, admin: Any, tenant_a: Tenant) -> None:
        data = {"name": "sim", "providertype": "fake", "provisioner": {}}
        catalog_entity_save(tenant=tenant_a, user=None, kind_key="providers", data=data, create=True)
        response = admin.get(hosts_url("sim"))
        assert response.status_code == 400
        assert "only static providers have a host pool" in error_of(response)["fields"]["provider"][0]


class TestListAndChange:
    def test_list_hides_retired_hosts_unless_asked(self, admin: Any, pool_a: Provider) -> None:
        ids = [register(admin, address=f"10.0.0.{n}").json()["id"] for n in (1, 2, 3)]
        admin.delete(hosts_url(pk=ids[1]))
        listing = admin.get(hosts_url()).json()
        assert listing["count"] == 2 and [h["id"] for h in listing["results"]] == [ids[0], ids[2]]
        assert [h["id"] for h in admin.get(hosts_url() + "?state=retired").json()["results"]] == [ids[1]]
        assert admin.get(hosts_url() + "?state=free,retired").json()["count"] == 3
        bad = admin.get(hosts_url() + "?state=free,lost")
        assert bad.status_code == 400 and "unknown state 'lost'" in error_of(bad)["fields"]["state"][0]

    def test_list_queries_do_not_grow_with_the_pool(self, admin: Any, pool_a: Provider) -> None:
        def count() -> int:
            with CaptureQueriesContext(connection) as queries:
                assert admin.get(hosts_url()).status_code == 200
            return len(queries)

        register(admin, address="10.0.0.1")
        few = count()
        for n in range(2, 30):
            register(admin, address=f"10.0.0.{n}")
        assert count() == few

    def test_moving_a_host_forgets_its_pinned_key(self, admin: Any, pool_a: Provider) -> None:
        host = register(admin, address="10.0.0.1", host_key=HOST_KEY).json()
        same = admin.patch(hosts_url(pk=host["id"]), {"ssh_user": "ops"}, format="json").json()
        assert (same["ssh_user"], same["host_key"]) == ("ops", HOST_KEY)
        moved = admin.patch(hosts_url(pk=host["id"]), {"ssh_port": 2022}, format="json").json()
        assert (moved["ssh_port"], moved["host_key"]) == (2022, "")
        bad = admin.patch(hosts_url(pk=host["id"]), {"ssh_port": -1}, format="json")
        assert bad.status_code == 400 and list(error_of(bad)["fields"]) == ["ssh_port"]
        assert AuditEvent.objects.filter(entity_kind="pool host", action="update").count() == 2

    def test_taking_out_of_service_and_returning_to_the_pool(self, admin: Any, pool_a: Provider) -> None:
        host = register(admin, address="10.0.0.1").json()
        broken = admin.patch(hosts_url(pk=host["id"]), {"state": "broken"}, format="json").json()
        assert broken["state"] == "broken" and broken["last_error"] == "taken out of service by alice"
        with pytest.raises(TransientError, match=r"pool pool has no free host \(0 allocated, 1 broken\)"):
            pool_host_allocate(provider_pk=pool_a.pk, spec=node_spec(1))
        free = admin.patch(hosts_url(pk=host["id"]), {"state": "free"}, format="json").json()
        assert (free["state"], free["last_error"]) == ("free", "")
        assert pool_host_allocate(provider_pk=pool_a.pk, spec=node_spec(1)).pk == host["id"]

    def test_a_host_a_node_holds_cannot_be_changed_or_retired(self, admin: Any, pool_a: Provider) -> None:
        host = register(admin, address="10.0.0.1").json()
        pool_host_allocate(provider_pk=pool_a.pk, spec=node_spec(1))
        shown = admin.get(hosts_url(pk=host["id"])).json()
        assert (shown["state"], shown["node"], shown["cluster"]) == ("allocated", "c1-node-1", "c1")
        assert shown["machine_id"] == f"static-{host['id']}-1"
        for response in (
            admin.patch(hosts_url(pk=host["id"]), {"address": "10.0.0.2"}, format="json"),
            admin.patch(hosts_url(pk=host["id"]), {"state": "broken"}, format="json"),
            admin.delete(hosts_url(pk=host["id"])),
        ):
            assert response.status_code == 409, response.content
            assert "by node c1-node-1" in error_of(response)["message"]
            assert error_of(response)["host"] == {"id": host["id"], "state": "allocated", "node": "c1-node-1"}
        assert PoolHost.objects.get().address == "10.0.0.1"

    def test_the_private_key_never_appears(self, admin: Any, pool_a: Provider) -> None:
        host = register(admin, address="10.0.0.1").json()
        for response in (admin.get(hosts_url()), admin.get(hosts_url(pk=host["id"]))):
            assert b"not-a-real-key" not in response.content


class TestIsolation:
    @pytest.fixture
    def host_a(self, pool_a: Provider, admin_a: Any) -> PoolHost:
        return pool_host_register(actor=admin_a, provider=pool_a, address="10.0.0.1")

    def test_another_tenants_provider_and_hosts_are_not_found(
        self, client_for: Any, admin_b: Any, tenant_b: Tenant, host_a: PoolHost
    ) -> None:
        bob = client_for(admin_b)
        for response in (
            bob.get(hosts_url()),
            bob.get(hosts_url(pk=host_a.pk)),
            bob.post(hosts_url(), {"address": "10.0.0.9"}, format="json"),
            bob.patch(hosts_url(pk=host_a.pk), {"state": "broken"}, format="json"),
            bob.delete(hosts_url(pk=host_a.pk)),
            client_for(admin_b, tenant="acme").get(hosts_url()),
        ):
            assert response.status_code == 404, response.content
        static_provider(tenant_b)  # bob's own pool of the same name: tenant A's host is still not in it
        assert bob.get(hosts_url(pk=host_a.pk)).status_code == 404
        assert bob.get(hosts_url()).json()["count"] == 0
        host_a.refresh_from_db()
        assert host_a.state == "free"

    def test_members_are_refused_and_superusers_allowed(
        self, client_for: Any, user_a: Any, superuser: Any, host_a: PoolHost
    ) -> None:
        arthur = client_for(user_a)
        for response in (arthur.get(hosts_url()), arthur.post(hosts_url(), {"address": "10.0.0.9"}, format="json")):
            assert response.status_code == 403 and "only admins of tenant acme" in error_of(response)["message"]
        root = client_for(superuser, tenant="acme")
        assert root.get(hosts_url()).json()["count"] == 1
        assert root.patch(hosts_url(pk=host_a.pk), {"ssh_port": 2022}, format="json").status_code == 200

    def test_services_refuse_non_admins(self, user_a: Any, pool_a: Provider, host_a: PoolHost) -> None:
        from tenants.errors import PermissionDenied

        with pytest.raises(PermissionDenied):
            pool_host_register(actor=user_a, provider=pool_a, address="10.0.0.2")
        assert PoolHost.objects.count() == 1
