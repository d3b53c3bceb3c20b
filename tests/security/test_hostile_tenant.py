"""A hostile tenant admin against the tenant boundary: every address they supply is held to the egress
policy (providers/egress.py), at save and again at connect time, and operator-only provider types stay
with the tenants a superuser enabled.

These tests run with the production default (nothing allow-listed), not the suite's test allow-list, except
where a test says it opens a network on purpose. Each refused save must be a 400 naming the field, and must
leave nothing stored. Other parts of the boundary have their own files: the schema walk as another tenant
(test_hostile_tenant_walk.py), login and API abuse (test_abuse.py), plugin archives
(test_archive_limits.py); the Ansible automator's own tests are in tests/providers/test_automators_ansible.py.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from guardian.models import UserObjectPermission

from clusters.engine.automation import node_session
from clusters.features.webhooks import webhook_delivery_send, webhook_ping
from clusters.models import Cluster, Node, Webhook, WebhookDelivery
from providers import egress
from providers.automators.ansible import AnsibleAutomator
from providers.drivers.base import TerminalError
from providers.models import PoolHost, Provider
from providers.services import provider_driver
from templates_app.models import Service
from templates_app.services import catalog_entity_save, catalog_import
from tenants.errors import NotFound
from tenants.models import Membership, Role, Tenant
from tenants.services import object_grant
from tests.api.helpers import assert_invalid, url
from tests.factories import UserFactory, enable_operator_providers, member
from tests.providers.test_automators_common import archive, lab_request

pytestmark = pytest.mark.django_db

INTERNAL_URLS = [
    "http://127.0.0.1:8000/",
    "http://localhost:6379/",
    "http://127.0.0.1:5432/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8000/",
    "http://0.0.0.0:8000/",
    "http://[::ffff:127.0.0.1]/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number: the resolver takes it
    "http://0x7f.1/",  # and in hex, with a short form
    "http://10.0.0.5/",  # private: refused unless the operator allows the network
    "http://[fe80::1]/",
    "http://224.0.0.1/",
    "https://metadata.localhost/",
]


@pytest.fixture(autouse=True)
def production_egress(settings: Any) -> None:
    settings.LOOM_EGRESS_ALLOW_NETWORKS = []


@pytest.fixture
def admin(client_for: Any, admin_a: Any) -> Any:
    return client_for(admin_a)


class TestPolicy:
    @pytest.mark.parametrize(
        "address",
        ["127.0.0.1", "127.1.2.3", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "::", "224.0.0.1",
         "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd00::1", "::ffff:169.254.169.254"],
    )  # fmt: skip
    def test_internal_addresses_are_refused_by_default(self, address: str) -> None:
        assert egress.check_address(address, 80)

    @pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "8.8.8.8"])
    def test_public_addresses_pass(self, address: str) -> None:
        assert egress.check_address(address, 443) is None

    def test_an_allow_listed_network_opens_private_addresses_but_never_loom_s_own_services(self, settings: Any) -> None:
        settings.LOOM_EGRESS_ALLOW_NETWORKS = ["127.0.0.0/8", "10.20.0.0/16"]
        assert egress.check_address("10.20.3.4", 22) is None
        assert egress.check_address("10.21.3.4", 22), "only the allowed network"
        assert egress.check_address("127.0.0.1", 8080) is None
        db_port = int(settings.DATABASES["default"].get("PORT") or 5432)
        assert "Loom's own services" in (egress.check_address("127.0.0.1", db_port) or "")
        settings.CELERY_BROKER_URL = "redis://127.0.0.1:6390/0"
        assert "Loom's own services" in (egress.check_address("127.0.0.1", 6390) or "")  # the broker
        settings.LOOM_EGRESS_DENY = ["10.20.0.9"]  # an operator's own host inside the allowed network
        assert "Loom's own services" in (egress.check_address("10.20.0.9", 22) or "")

    def test_a_name_is_resolved_once_and_every_answer_must_pass(self) -> None:
        with pytest.raises(egress.EgressRefused, match="loopback"):
            egress.resolve_checked("localhost", 80)
        with pytest.raises(egress.EgressRefused, match="does not resolve"):
            egress.resolve_checked("no-such-host.invalid", 80)


class TestWebhooks:
    @pytest.mark.parametrize("target", INTERNAL_URLS)
    def test_an_internal_webhook_url_is_a_400_naming_url(self, admin: Any, target: str) -> None:
        response = admin.post("/api/v2/webhooks", {"name": "x", "url": target, "secret": "s" * 24}, format="json")
        assert_invalid(response, field="url", says=("egress policy",))
        assert not Webhook.objects.exists()

    def test_changing_the_url_to_an_internal_one_is_refused_and_keeps_the_old(self, admin: Any) -> None:
        made = admin.post("/api/v2/webhooks", {"name": "ops", "url": "https://93.184.216.34/hook", "secret": "s" * 24},
                          format="json")  # fmt: skip
        assert made.status_code == 201, made.content
        response = admin.patch("/api/v2/webhooks/ops", {"url": "http://169.254.169.254/latest/"}, format="json")
        assert_invalid(response, field="url", says=("link-local",))
        assert Webhook.objects.get(name="ops").url == "https://93.184.216.34/hook"

    def test_a_url_that_became_internal_is_refused_when_sending_and_nothing_connects(
        self, settings: Any, tenant_a: Tenant, admin_a: Any
    ) -> None:
        """Saved while the operator allowed loopback (or a name that resolved elsewhere then: DNS rebinding);
        at send time the policy is checked again on the address resolved now, and the POST never happens."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        settings.LOOM_EGRESS_ALLOW_NETWORKS = ["127.0.0.0/8"]
        from clusters.features.webhooks import webhook_create

        hook = webhook_create(actor=admin_a, tenant=tenant_a, name="ops", url=f"http://127.0.0.1:{port}/h",
                              secret="s" * 24)  # fmt: skip
        delivery = webhook_ping(actor=admin_a, webhook=hook)
        settings.LOOM_EGRESS_ALLOW_NETWORKS = []
        webhook_delivery_send(delivery_pk=delivery.pk)
        delivery = WebhookDelivery.objects.get(pk=delivery.pk)
        assert "egress policy" in delivery.error and delivery.response_status is None, delivery.error
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected
        listener.close()


class TestPoolHosts:
    @pytest.fixture
    def pool(self, tenant_a: Tenant) -> Provider:
        from tests.providers.test_static_pool_api import static_provider

        return static_provider(tenant_a)

    @pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "169.254.169.254", "::1", "10.0.0.7", "0.0.0.0"])
    def test_an_internal_host_is_a_400_naming_address(self, admin: Any, pool: Provider, address: str) -> None:
        response = admin.post(f"/api/v2/providers/{pool.name}/hosts", {"address": address}, format="json")
        assert_invalid(response, field="address", says=("egress policy",))
        assert not PoolHost.objects.exists()

    def test_the_operator_can_open_a_private_network_for_own_hosts(
        self, settings: Any, admin: Any, pool: Provider
    ) -> None:
        settings.LOOM_EGRESS_ALLOW_NETWORKS = ["10.9.0.0/24"]
        assert (
            admin.post(f"/api/v2/providers/{pool.name}/hosts", {"address": "10.9.0.5"}, format="json").status_code
            == 201
        )
        refused = admin.post(f"/api/v2/providers/{pool.name}/hosts", {"address": "10.9.1.5"}, format="json")
        assert_invalid(refused, field="address", says=("private range", "LOOM_EGRESS_ALLOW_NETWORKS"))


class TestProviders:
    def openstack(self, auth_url: str) -> dict[str, Any]:
        return {"name": "os", "providertype": "openstack", "provisioner": {
            "api_user": "u", "api_password": "p", "openstack_tenant": "t", "openstack_auth_url": auth_url, "ssh_keypair": "k", "ssh_key_resource": "k"}}  # fmt: skip

    @pytest.mark.parametrize(
        "auth_url", ["http://169.254.169.254/v3", "http://127.0.0.1:5000/v3", "http://localhost/v3"]
    )
    def test_an_internal_auth_url_is_a_400_naming_the_field(self, admin: Any, auth_url: str) -> None:
        response = admin.post(url("providers"), self.openstack(auth_url), format="json")
        assert_invalid(response, field="provisioner.openstack_auth_url", says=("egress policy",))
        assert not Provider.objects.exists()

    def test_a_public_auth_url_is_accepted(self, admin: Any) -> None:
        response = admin.post(url("providers"), self.openstack("https://93.184.216.34:5000/v3"), format="json")
        assert response.status_code == 201, response.content

    def test_the_local_type_is_refused_in_a_tenant_the_operator_did_not_enable(
        self, admin: Any, tenant_a: Tenant, admin_a: Any
    ) -> None:
        lab = {"name": "lab", "providertype": "local", "provisioner": {}}
        response = admin.post(url("providers"), lab, format="json")
        assert_invalid(response, field="providertype", says=("Loom's own hosts", "operator"))
        with pytest.raises(Exception, match="operator"):
            catalog_import(tenant=tenant_a, user=admin_a, data={"providers": [lab]})
        assert not Provider.objects.exists()
        enable_operator_providers(tenant_a)
        assert admin.post(url("providers"), lab, format="json").status_code == 201

    def test_a_tenant_admin_cannot_enable_their_own_tenant(
        self, client_for: Any, admin_a: Any, tenant_a: Tenant
    ) -> None:
        client = client_for(admin_a)
        client.force_login(admin_a)
        page = client.post(f"/admin/tenants/tenant/{tenant_a.pk}/change/",
                           {"description": "", "workers": 10, "operator_providers": "on"})  # fmt: skip
        assert page.status_code in (302, 403)
        assert not Tenant.objects.get(pk=tenant_a.pk).operator_providers

    def test_the_driver_is_refused_once_the_operator_turns_the_flag_off(self, tenant_a: Tenant) -> None:
        enable_operator_providers(tenant_a)
        catalog_entity_save(tenant=tenant_a, user=None, kind_key="providers", create=True,
                            data={"name": "lab", "providertype": "local", "provisioner": {}})  # fmt: skip
        Tenant.objects.filter(pk=tenant_a.pk).update(operator_providers=False)
        with pytest.raises(TerminalError, match="operator-only"):
            provider_driver(provider=Provider.objects.select_related("tenant").get(name="lab"))


class TestSshTargets:
    def test_a_node_the_driver_reports_on_an_internal_address_is_never_connected_to(
        self, catalog_a: Any, tenant_a: Tenant, user_a: Any
    ) -> None:
        from clusters.services.lifecycle import cluster_create
        from clusters.services.preview import PreviewRequest

        cluster, _job = cluster_create(user=user_a, tenant=tenant_a, request=PreviewRequest("ssrf", "lamp", 1))
        node = Node.objects.filter(cluster=cluster).first()
        node.ip_addresses = {"access_v4": "127.0.0.1"}
        node.credentials_ref = "unused"
        with (
            pytest.raises(TerminalError, match="egress policy"),
            node_session(Cluster.objects.get(pk=cluster.pk), node, lambda line: None),
        ):
            pass


ANSIBLE_TRICKS = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: delegate_to localhost (ran on the worker when the worker ran ansible-playbook)
      ansible.builtin.shell: "hostname > {{ loom.config.marker }}.delegate_to"
      delegate_to: localhost
    - name: local_action
      local_action: ansible.builtin.shell hostname > {{ loom.config.marker }}.local_action
    - name: lookup('pipe') (evaluated by the controller, whoever runs ansible-playbook)
      ansible.builtin.copy:
        dest: "{{ loom.config.marker }}.pipe"
        content: "{{ lookup('pipe', 'hostname') }}"
    - name: a file only the worker has, looked for by the controller
      ansible.builtin.copy:
        dest: "{{ loom.config.marker }}.worker_file"
        content: "{{ query('fileglob', loom.config.worker_file) | length }}"
    - name: a filter plugin shipped in a role (loaded by the controller)
      ansible.builtin.include_role:
        name: evil
"""
EVIL_FILTER = """\
import pathlib
import json
import socket


def mark(path):
    pathlib.Path(path).write_text(socket.gethostname())
    return path


class FilterModule:
    def filters(self):
        return {"mark": mark}
"""
EVIL_TASKS = "- ansible.builtin.debug:\n    msg: \"{{ (loom.config.marker ~ '.filter') | mark }}\"\n"


class TestAnsibleRunsOnTheNode:
    """The tricks that ran as root on the worker when it ran ``ansible-playbook`` (finding 1 of issue 13) run
    on a real lab host now: each leaves its marker in the node's private ``/root`` and none in the worker's,
    and a file in the worker's ``/root`` is not there for the controller to read."""

    def test_delegate_to_local_action_pipe_lookup_and_role_plugins_act_on_the_node(self, lab: Any) -> None:
        host = lab.nodes[2]
        token = uuid.uuid4().hex[:10]
        marker = f"/root/loom-trick-{token}"
        worker_file = Path(f"/root/loom-worker-only-{token}")
        worker_file.write_text("the worker's secret")  # this process is the worker: its /root is not the node's
        resources = (
            archive("playbooks", "tricks", {"tricks.yml": ANSIBLE_TRICKS}),
            archive("roles", "evil", {"evil/filter_plugins/evil.py": EVIL_FILTER, "evil/tasks/main.yml": EVIL_TASKS}),
        )
        extra = {"marker": marker, "worker_file": str(worker_file)}
        request = lab_request(host, service="web", fields={"playbook": "tricks.yml", "extra_vars": extra},
                              resources=resources)  # fmt: skip
        try:
            with host.session() as session:
                AnsibleAutomator().run(session, request)
                for trick in ("delegate_to", "local_action", "pipe", "filter"):
                    on_node = session.run(f"cat {marker}.{trick}", check=False)
                    assert on_node.exit_status == 0, f"{trick}: no marker on the node"
                    assert on_node.stdout.strip() == host.hostname, f"{trick} ran on {on_node.stdout!r}"
                    assert not Path(f"{marker}.{trick}").exists(), f"{trick} left a marker on the worker"
                assert session.run(f"cat {marker}.worker_file").stdout == "0", "the controller saw the worker's file"
                session.run(f"rm -f {marker}.*")
        finally:
            worker_file.unlink()
        assert not list(Path("/root").glob(f"loom-trick-{token}*"))


class TestEscalation:
    """A tenant admin's powers end at their tenant: they cannot pull another tenant's users into theirs, make
    anyone superuser or staff beyond it, grant object permissions outside it, or reach the platform's user
    admin. Another tenant's user answers exactly like a user that does not exist (no enumeration)."""

    @staticmethod
    def _enroll(client: Any, username: str, role: str) -> Any:
        return client.post(url("memberships"), {"user": username, "role": role, "is_superuser": True}, format="json")

    @pytest.mark.parametrize("role", ["user", "admin"])
    def test_another_tenants_user_cannot_be_enrolled_and_looks_unknown(
        self, admin: Any, admin_b: Any, user_b: Any, client_for: Any, role: str
    ) -> None:
        before = sorted(Membership.objects.values_list("user__username", "tenant__name", "role"))
        for victim in (user_b, admin_b):
            refused = self._enroll(admin, victim.username, role)
            unknown = self._enroll(admin, f"{victim.username}-nobody", role)
            assert refused.status_code == unknown.status_code == 400
            assert refused.json() == json.loads(
                unknown.content.decode().replace(f"{victim.username}-nobody", victim.username)
            )
            victim.refresh_from_db()
            assert not victim.is_superuser
        assert sorted(Membership.objects.values_list("user__username", "tenant__name", "role")) == before
        user_b.refresh_from_db()
        assert not user_b.is_staff
        # the victim's own calls without X-Loom-Tenant still resolve to their one tenant
        assert client_for(user_b).get(url("clusters")).status_code == 200

    def test_a_new_user_or_a_user_of_a_tenant_they_also_run_can_be_enrolled(
        self, admin: Any, admin_a: Any, tenant_a: Any, tenant_b: Any, client_for: Any
    ) -> None:
        newcomer = UserFactory(username="newcomer")
        newcomer.save()
        assert self._enroll(admin, "newcomer", "admin").status_code == 201
        newcomer.refresh_from_db()
        assert newcomer.is_staff and not newcomer.is_superuser  # staff for the admin, never superuser
        Membership.objects.create(user=admin_a, tenant=tenant_b, role=Role.ADMIN)
        both = member(tenant_b, Role.USER, username="shared")
        in_a = client_for(admin_a, tenant_a.name)  # admin_a belongs to two tenants now: say which
        assert self._enroll(in_a, both.username, "user").status_code == 201

    def test_the_superuser_may_enroll_anyone(self, superuser: Any, client_for: Any, user_b: Any, tenant_a: Any) -> None:
        response = client_for(superuser, tenant_a.name).post(
            url("memberships"), {"user": user_b.username, "role": "user"}, format="json"
        )
        assert response.status_code == 201, response.content

    def test_no_grant_reaches_outside_the_tenant(
        self, admin: Any, admin_a: Any, admin_b: Any, user_b: Any, tenant_a: Any, tenant_b: Any
    ) -> None:
        catalog_entity_save(tenant=tenant_a, user=None, kind_key="services", data={"name": "mine"}, create=True)
        theirs = catalog_entity_save(
            tenant=tenant_b, user=None, kind_key="services", data={"name": "theirs"}, create=True
        )
        theirs_row = Service.objects.get(tenant=tenant_b, name="theirs")
        to_outsider = admin.post(
            url("services", "mine", "/grants"), {"user": user_b.username, "action": "change"}, format="json"
        )
        assert_invalid(to_outsider, field="user", says=("not a member",))
        on_theirs = admin.post(
            url("services", "theirs", "/grants"), {"user": admin_a.username, "action": "change"}, format="json"
        )
        assert on_theirs.status_code == 404
        assert not UserObjectPermission.objects.filter(user__in=[user_b, admin_a]).exists(), theirs
        with pytest.raises(NotFound):  # the service refuses an object of another tenant even if a caller passes one
            object_grant(
                actor=admin_a, tenant=tenant_a, obj=theirs_row, username=admin_a.username, action="change", grant=True
            )

    @pytest.mark.parametrize(
        "path", ["/admin/auth/user/", "/admin/auth/user/add/", "/admin/auth/group/", "/admin/auth/group/add/"]
    )
    def test_the_platforms_user_admin_is_closed_to_tenant_admins(self, admin_a: Any, path: str) -> None:
        admin_a.is_staff = True
        admin_a.save(update_fields=["is_staff"])
        client = Client()
        client.force_login(admin_a)
        assert client.get(path).status_code == 403
        assert (
            client.post(
                path, {"username": "evil", "password1": "x" * 20, "password2": "x" * 20, "is_superuser": "on"}
            ).status_code
            == 403
        )
        assert not get_user_model().objects.filter(username="evil").exists()

    def test_the_membership_admin_refuses_another_tenants_user_like_an_unknown_one(
        self, admin_a: Any, tenant_a: Any, user_b: Any
    ) -> None:
        admin_a.is_staff = True
        admin_a.save(update_fields=["is_staff"])
        client = Client()
        client.force_login(admin_a)
        page = "/admin/tenants/membership/add/"
        for username in (user_b.username, "nobody-at-all"):
            response = client.post(page, {"tenant": tenant_a.pk, "username": username, "role": "admin"})
            assert response.status_code == 200  # the form again, with the error on the field
            assert (
                f"user {username} does not exist" in response.content.decode()
                or f"no user named {username}" in response.content.decode()
            )
        assert not Membership.objects.filter(user=user_b, tenant=tenant_a).exists()
