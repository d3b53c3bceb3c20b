"""Structured catalog forms: create and edit every kind through the page, versions, and error placement."""

from __future__ import annotations

from typing import Any

import pytest

from providers.models import Provider
from templates_app.models import CatalogVersion, ClusterTemplate, HardwareType, ImageType, PartialTemplate, Service
from tenants.models import AuditEvent, Role
from tests.admin.conftest import as_list, field_errors, form_fields, make_member, url

CATALOG_MODELS = [HardwareType, ImageType, Service, ClusterTemplate, Provider]


def submit(client: Any, page_url: str, changes: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Any:
    """GET the page, change some fields as a user would, POST it back."""
    page = client.get(page_url)
    assert page.status_code == 200
    data = form_fields(page)
    data.update(changes or {})
    for name in drop:
        data.pop(name, None)
    return client.post(page_url, data)


def versions(obj: Any) -> list[int]:
    rows = CatalogVersion.objects.filter(tenant=obj.tenant, kind=obj.kind_key, name=obj.name)
    return sorted(rows.values_list("version", flat=True))


def non_field_errors(response: Any) -> str:
    return " ".join(response.context["adminform"].form.non_field_errors())


def row_errors(response: Any, section: str) -> list[dict[str, list[str]]]:
    for candidate in response.context["adminform"].form.sections:
        if candidate.key == section:
            rows = candidate.rows
            return [dict(form.errors) for form in (rows.forms if hasattr(rows, "forms") else rows)]
    raise AssertionError(f"no section {section}")


@pytest.fixture
def client(staff_admin_a: Any, login: Any) -> Any:
    return login(staff_admin_a)


@pytest.mark.parametrize("model", CATALOG_MODELS, ids=lambda m: m.__name__)
def test_saving_every_sample_unchanged_makes_no_new_version(model: type, catalog_a: Any, client: Any) -> None:
    """The forms read and write documents without loss: an untouched page changes nothing."""
    for obj in model.objects.filter(tenant__name="acme"):
        response = submit(client, url(model, "change", obj.pk))
        assert response.status_code == 302, (obj.name, response.context["adminform"].form.errors)
        obj.refresh_from_db()
        assert obj.version == 1, obj.name
        assert versions(obj) == [1]


class TestHardwareAndImageTypes:
    def test_create_then_edit(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(HardwareType, "add"),
            {
                "name": "tiny",
                "label": "Tiny",
                "providermap-0-provider": "rackspace",
                "providermap-0-flavor": "2",
                "providermap-0-cost": "0.01",
                "providermap-0-extra": "vcpu=1\nram=0.5\n",
            },
        )
        assert response.status_code == 302, response.context["adminform"].form.errors
        tiny = HardwareType.objects.get(tenant__name="acme", name="tiny")
        assert tiny.version == 1
        assert tiny.document["providermap"] == {"rackspace": {"flavor": "2", "cost": "0.01", "vcpu": "1", "ram": "0.5"}}
        assert AuditEvent.objects.filter(entity_name="tiny", action="create", actor__username="alice").exists()

        response = submit(
            client,
            url(HardwareType, "change", tiny.pk),
            {"description": "smallest", "providermap-1-provider": "google", "providermap-1-flavor": "f1-micro"},
        )
        assert response.status_code == 302
        tiny.refresh_from_db()
        assert tiny.version == 2
        assert versions(tiny) == [1, 2]
        assert tiny.document["description"] == "smallest"
        assert tiny.document["providermap"]["google"] == {"flavor": "f1-micro"}
        assert (
            CatalogVersion.objects.get(tenant=tiny.tenant, kind="hardwaretypes", name="tiny", version=1).document[
                "description"
            ]
            == ""
        )

    def test_deleting_a_mapping_row(self, catalog_a: Any, client: Any) -> None:
        obj = HardwareType.objects.get(tenant__name="acme", name="standard-small")
        page = client.get(url(HardwareType, "change", obj.pk))
        data = form_fields(page)
        first_provider = data["providermap-0-provider"]
        data["providermap-0-DELETE"] = "on"
        assert client.post(url(HardwareType, "change", obj.pk), data).status_code == 302
        obj.refresh_from_db()
        assert first_provider not in obj.document["providermap"]
        assert obj.version == 2

    def test_numbers_stay_numbers(self, tenant_a: Any, client: Any) -> None:
        from templates_app.services import catalog_entity_save

        saved = catalog_entity_save(
            tenant=tenant_a, user=None, kind_key="hardwaretypes", create=True,
            data={"name": "typed", "providermap": {"p": {"flavor": "f", "cost": 0.5, "vcpu": 2}}},
        ).entity  # fmt: skip
        assert submit(client, url(HardwareType, "change", saved.pk)).status_code == 302
        saved.refresh_from_db()
        assert saved.version == 1
        assert saved.document["providermap"]["p"] == {"flavor": "f", "cost": 0.5, "vcpu": 2}

    def test_image_type_with_ssh_user(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(ImageType, "add"),
            {"name": "debian12", "providermap-0-provider": "google", "providermap-0-image": "debian-12",
             "providermap-0-sshuser": "admin"},
        )  # fmt: skip
        assert response.status_code == 302
        image = ImageType.objects.get(tenant__name="acme", name="debian12")
        assert image.document["providermap"] == {"google": {"image": "debian-12", "sshuser": "admin"}}

    def test_row_errors_land_on_the_row_and_keep_input(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(HardwareType, "add"),
            {
                "name": "broken",
                "providermap-0-provider": "rackspace",
                "providermap-0-flavor": "",
                "providermap-0-cost": "cheap",
                "providermap-0-extra": "vcpu=2",
            },
        )
        assert response.status_code == 200
        assert not response.context["adminform"].form.errors  # only the row is wrong
        errors = row_errors(response, "providermap")[0]
        assert "flavor must be a non-empty string" in " ".join(errors["flavor"])
        assert "is not a number" in " ".join(errors["cost"])
        again = form_fields(response)
        assert (again["name"], again["providermap-0-cost"], again["providermap-0-extra"]) == (
            "broken",
            "cheap",
            "vcpu=2",
        )
        assert not HardwareType.objects.filter(name="broken").exists()

    def test_bad_extra_lines_and_duplicate_providers(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(HardwareType, "add"),
            {
                "name": "dupes",
                "providermap-0-provider": "rackspace",
                "providermap-0-flavor": "1",
                "providermap-0-extra": "no equals sign",
                "providermap-1-provider": "rackspace",
                "providermap-1-flavor": "2",
            },
        )
        assert response.status_code == 200
        errors = row_errors(response, "providermap")
        assert "expected key=value" in " ".join(errors[0]["extra"])
        assert "appears in two rows" in " ".join(errors[1]["provider"])


class TestServices:
    def test_create_then_edit(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(Service, "add"),
            {
                "name": "redis",
                "provides": "cache, kv",
                "install_requires": ["base"],
                "runtime_uses": ["base"],
                "action-install-type": "shell",
                "action-install-shell__script": "install-redis.sh",
                "action-install-shell__args": "--fast",
                "action-start-type": "shell",
                "action-start-shell__script": "start-redis.sh",
                "links-0-label": "Docs",
                "links-0-url": "https://redis.io",
            },
        )
        assert response.status_code == 302, response.context["adminform"].form.errors
        redis = Service.objects.get(tenant__name="acme", name="redis")
        assert redis.version == 1
        assert redis.document["dependencies"] == {
            "provides": ["cache", "kv"],
            "conflicts": [],
            "install": {"requires": ["base"], "uses": []},
            "runtime": {"requires": [], "uses": ["base"]},
        }
        assert redis.document["provisioner"]["actions"] == {
            "install": {"type": "shell", "fields": {"script": "install-redis.sh", "args": "--fast"}},
            "start": {"type": "shell", "fields": {"script": "start-redis.sh"}},
        }
        assert redis.document["links"] == [{"label": "Docs", "url": "https://redis.io"}]

        response = submit(
            client,
            url(Service, "change", redis.pk),
            {
                "action-install-type": "ansible",
                "action-install-ansible__playbook": "redis.yml",
                "action-start-type": "",
                "conflicts": ["memcached"],
            },
        )
        assert response.status_code == 302, response.context["adminform"].form.errors
        redis.refresh_from_db()
        assert redis.version == 2
        assert versions(redis) == [1, 2]
        assert redis.document["provisioner"]["actions"] == {
            "install": {"type": "ansible", "fields": {"playbook": "redis.yml"}}
        }
        assert redis.document["dependencies"]["conflicts"] == ["memcached"]

    def test_depending_on_itself_is_shown_on_the_field(self, catalog_a: Any, client: Any) -> None:
        php = Service.objects.get(tenant__name="acme", name="php")
        response = submit(
            client, url(Service, "change", php.pk), {"install_requires": ["base", "php"], "label": "PHP 8"}
        )
        assert response.status_code == 200
        assert any("cannot depend on itself" in message for message in field_errors(response, "install_requires"))
        again = form_fields(response)
        assert again["label"] == "PHP 8"
        php.refresh_from_db()
        assert php.version == 1

    def test_dependency_cycle_is_shown_on_the_field(self, catalog_a: Any, client: Any) -> None:
        base = Service.objects.get(tenant__name="acme", name="base")
        response = submit(client, url(Service, "change", base.pk), {"install_requires": ["php"]})
        assert response.status_code == 200
        assert any("dependency cycle" in message for message in field_errors(response, "install_requires"))

    def test_unknown_automator_type_is_refused_on_the_type_field(self, catalog_a: Any, client: Any) -> None:
        php = Service.objects.get(tenant__name="acme", name="php")
        response = submit(client, url(Service, "change", php.pk), {"action-install-type": "nope"})
        assert response.status_code == 200
        install = row_errors(response, "actions")[0]
        assert "nope is not one of the available choices" in " ".join(install["type"])

    def test_missing_required_automator_field_is_shown_on_the_action(self, catalog_a: Any, client: Any) -> None:
        php = Service.objects.get(tenant__name="acme", name="php")
        response = submit(client, url(Service, "change", php.pk), {"action-install-chef-solo__run_list": ""})
        assert response.status_code == 200
        install = row_errors(response, "actions")[0]
        assert "automator chef-solo requires {run_list}" in " ".join(install["__all__"])
        assert b"Please correct the errors in the rows below." in response.content

    def test_a_change_that_breaks_a_template_names_the_template(self, catalog_a: Any, client: Any) -> None:
        php = Service.objects.get(tenant__name="acme", name="php")
        response = submit(client, url(Service, "change", php.pk), {"runtime_requires": ["apache-httpd", "memcached"]})
        assert response.status_code == 200
        assert "clustertemplate 'lamp'" in non_field_errors(response)

    def test_macro_error_in_a_link_lands_on_its_row(self, catalog_a: Any, client: Any) -> None:
        php = Service.objects.get(tenant__name="acme", name="php")
        response = submit(client, url(Service, "change", php.pk), {"links-0-label": "x", "links-0-url": "%bogus%"})
        assert response.status_code == 200
        assert row_errors(response, "links")[0].get("url")


class TestTemplates:
    def test_create_then_edit_cluster_template(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(ClusterTemplate, "add"),
            {
                "name": "web",
                "extends": "base",
                "compat_services": ["base", "apache-httpd", "php", "php-modules"],
                "compat_hardwaretypes": ["standard-small", "standard-medium"],
                "compat_imagetypes": ["ubuntu12"],
                "default_services": ["base", "apache-httpd", "php", "php-modules"],
                "default_provider": "rackspace",
                "default_hardwaretype": "standard-small",
                "default_imagetype": "ubuntu12",
                "dns_suffix": "example.com",
                "config": '{"php": {"memory_limit": "256M"}}',
                "size_min": "1",
                "size_max": "5",
                "must_coexist": "apache-httpd, php php-modules",
                "lease_initial": "7d",
                "lease_max": "30d",
                "lease_step": "86400000",
                "constraints-0-service": "apache-httpd",
                "constraints-0-min": "1",
                "constraints-0-max": "3",
                "constraints-0-hardwaretypes": ["standard-medium"],
                "links-0-label": "Home",
                "links-0-url": "http://%host.service.apache-httpd%/",
            },
        )
        assert response.status_code == 302, response.context["adminform"].form.errors
        web = ClusterTemplate.objects.get(tenant__name="acme", name="web")
        doc = web.document
        assert doc["extends"] == {"name": "base"}
        assert doc["defaults"]["config"] == {"php": {"memory_limit": "256M"}}
        assert doc["constraints"]["size"] == {"min": 1, "max": 5}
        assert doc["constraints"]["layout"]["mustcoexist"] == [["apache-httpd", "php", "php-modules"]]
        assert doc["constraints"]["services"] == {
            "apache-httpd": {"hardwaretypes": ["standard-medium"], "imagetypes": [], "quantities": {"min": 1, "max": 3}}
        }
        assert doc["administration"]["leaseduration"] == {"initial": 604_800_000, "max": 2_592_000_000,
                                                          "step": 86_400_000}  # fmt: skip
        assert doc["links"] == [{"label": "Home", "url": "http://%host.service.apache-httpd%/"}]
        assert web.version == 1

        page = client.get(url(ClusterTemplate, "change", web.pk))
        shown = form_fields(page)
        assert (shown["lease_initial"], shown["lease_step"]) == ("7d", "1d")
        response = submit(client, url(ClusterTemplate, "change", web.pk), {"size_max": "8", "constraints-0-max": ""})
        assert response.status_code == 302, response.context["adminform"].form.errors
        web.refresh_from_db()
        assert web.version == 2
        assert versions(web) == [1, 2]
        assert web.document["constraints"]["size"] == {"min": 1, "max": 8}
        assert web.document["constraints"]["services"]["apache-httpd"]["quantities"] == {"min": 1}

    def test_min_greater_than_max_is_shown_on_the_field_with_input_kept(self, catalog_a: Any, client: Any) -> None:
        lamp = ClusterTemplate.objects.get(tenant__name="acme", name="lamp")
        response = submit(
            client, url(ClusterTemplate, "change", lamp.pk), {"size_min": "3", "size_max": "2", "dns_suffix": "x.org"}
        )
        assert response.status_code == 200
        assert field_errors(response, "size_max") == ["min (3) is greater than max (2)"]
        assert b"min (3) is greater than max (2)" in response.content
        again = form_fields(response)
        assert (again["size_min"], again["size_max"], again["dns_suffix"]) == ("3", "2", "x.org")
        lamp.refresh_from_db()
        assert lamp.version == 1

    def test_row_min_greater_than_max_is_shown_on_the_row(self, catalog_a: Any, client: Any) -> None:
        lamp = ClusterTemplate.objects.get(tenant__name="acme", name="lamp")
        page = client.get(url(ClusterTemplate, "change", lamp.pk))
        data = form_fields(page)
        row = next(i for i in range(5) if data.get(f"constraints-{i}-service") == "haproxy")
        data.update({f"constraints-{row}-min": "4", f"constraints-{row}-max": "2"})
        response = client.post(url(ClusterTemplate, "change", lamp.pk), data)
        assert response.status_code == 200
        assert "min (4) is greater than max (2)" in " ".join(row_errors(response, "constraints")[row]["max"])
        assert form_fields(response)[f"constraints-{row}-min"] == "4"

    @pytest.mark.parametrize(
        ("changes", "field", "message"),
        [
            ({"config": '{"php": '}, "config", "not valid JSON"),
            ({"config": "[1, 2]"}, "config", "must be a JSON object"),
            ({"lease_initial": "7 weeks"}, "lease_initial", "is not a duration"),
            ({"lease_initial": "30d", "lease_max": "7d"}, "lease_initial", "cannot be more than max lease"),
            ({"must_coexist": "apache-httpd"}, "must_coexist", "#1: a group must name at least two services"),
            ({"size_min": "many"}, "size_min", "Enter a whole number"),
            ({"dns_suffix": "bad_suffix!"}, "dns_suffix", "invalid DNS suffix"),
        ],
    )  # fmt: skip
    def test_errors_are_shown_on_their_field(
        self, changes: dict[str, Any], field: str, message: str, catalog_a: Any, client: Any
    ) -> None:
        lamp = ClusterTemplate.objects.get(tenant__name="acme", name="lamp")
        response = submit(client, url(ClusterTemplate, "change", lamp.pk), changes)
        assert response.status_code == 200
        assert any(message in error for error in field_errors(response, field)), response.context[
            "adminform"
        ].form.errors
        shown = form_fields(response)
        for name, value in changes.items():
            assert (as_list(shown.get(name)) if isinstance(value, list) else shown.get(name)) == value
        lamp.refresh_from_db()
        assert lamp.version == 1

    def test_partial_template(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(PartialTemplate, "add"),
            {
                "name": "hardened",
                "immutable": "on",
                "compat_services": ["base"],
                "default_services": ["base"],
                "config": '{"ssh": {"permit_root": false}}',
            },
        )
        assert response.status_code == 302, response.context["adminform"].form.errors
        partial = PartialTemplate.objects.get(tenant__name="acme", name="hardened")
        assert partial.document["immutable"] is True
        assert partial.document["defaults"]["config"] == {"ssh": {"permit_root": False}}
        assert submit(client, url(PartialTemplate, "change", partial.pk)).status_code == 302
        partial.refresh_from_db()
        assert partial.version == 1
        response = submit(client, url(PartialTemplate, "change", partial.pk), {"immutable": ""}, drop=("immutable",))
        partial.refresh_from_db()
        assert (partial.version, partial.document["immutable"]) == (2, False)

        lamp = ClusterTemplate.objects.get(tenant__name="acme", name="lamp")
        response = submit(client, url(ClusterTemplate, "change", lamp.pk), {"includes": "hardened"})
        assert response.status_code == 302, response.context["adminform"].form.errors
        lamp.refresh_from_db()
        assert lamp.document["includes"] == [{"name": "hardened"}]

    def test_unknown_include_is_shown_on_the_field(self, catalog_a: Any, client: Any) -> None:
        lamp = ClusterTemplate.objects.get(tenant__name="acme", name="lamp")
        response = submit(client, url(ClusterTemplate, "change", lamp.pk), {"includes": "nothing-here"})
        assert response.status_code == 200
        assert any("does not exist" in error for error in field_errors(response, "includes"))


class TestAddForm:
    def test_name_taken_is_shown_on_the_name(self, catalog_a: Any, client: Any) -> None:
        response = submit(
            client,
            url(HardwareType, "add"),
            {"name": "standard-small", "providermap-0-provider": "p", "providermap-0-flavor": "f"},
        )
        assert response.status_code == 200
        assert list(response.context["adminform"].form.errors) == ["name"]
        assert any("already exists" in error for error in field_errors(response, "name"))

    def test_invalid_name_is_shown_on_the_name(self, catalog_a: Any, client: Any) -> None:
        response = submit(client, url(HardwareType, "add"), {"name": "no spaces"})
        assert response.status_code == 200
        assert any("is not a valid name" in error for error in field_errors(response, "name"))

    def test_admin_of_several_tenants_picks_among_them(
        self, catalog_a: Any, tenant_b: Any, tenant_c: Any, staff_admin_a: Any, client: Any
    ) -> None:
        from tenants.models import Membership

        Membership.objects.create(user=staff_admin_a, tenant=tenant_c, role=Role.ADMIN)
        Membership.objects.create(user=staff_admin_a, tenant=tenant_b, role=Role.USER)
        page = client.get(url(HardwareType, "add"))
        choices = [label for _, label in page.context["adminform"].form.fields["tenant"].choices]
        assert choices == ["---------", "acme", "initech"]
        data = {**form_fields(page), "name": "t1", "providermap-0-provider": "p", "providermap-0-flavor": "f"}
        response = client.post(url(HardwareType, "add"), {**data, "tenant": str(tenant_b.pk)})
        assert response.status_code == 200
        assert field_errors(response, "tenant")
        assert not HardwareType.objects.filter(name="t1").exists()
        response = client.post(url(HardwareType, "add"), {**data, "tenant": str(tenant_c.pk)})
        assert response.status_code == 302
        assert HardwareType.objects.get(name="t1").tenant == tenant_c

    @pytest.mark.parametrize("model", [*CATALOG_MODELS, PartialTemplate], ids=lambda m: m.__name__)
    def test_superuser_adds_into_a_chosen_tenant(
        self, model: type, catalog_a: Any, catalog_b: Any, tenant_b: Any, superuser: Any, login: Any
    ) -> None:
        client = login(superuser)
        page = client.get(url(model, "add"))
        assert page.status_code == 200
        assert [label for _, label in page.context["adminform"].form.fields["tenant"].choices] == [
            "---------", "acme", "globex",
        ]  # fmt: skip
        changes: dict[str, Any] = {"name": "made-by-root", "tenant": str(tenant_b.pk)}
        if model in (HardwareType, ImageType):
            key = "flavor" if model is HardwareType else "image"
            changes.update({"providermap-0-provider": "rackspace", f"providermap-0-{key}": "x"})
        if model is Provider:
            changes.update({"providertype": "fake"})
        response = client.post(url(model, "add"), {**form_fields(page), **changes})
        assert response.status_code == 302, response.context["adminform"].form.errors
        assert model.objects.get(name="made-by-root").tenant == tenant_b

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"config": '{"a": "x\\u0000y"}'}, "config"),
            ({"config": '{"a\\u0000": 1}'}, "config"),
            ({"label": "a\x00b"}, "label"),
            ({"size_max": "99999999999999999999999"}, None),
        ],
    )
    def test_nul_characters_and_huge_numbers_never_crash(
        self, changes: dict[str, str], field: str | None, catalog_a: Any, client: Any
    ) -> None:
        lamp = ClusterTemplate.objects.get(tenant__name="acme", name="lamp")
        response = submit(client, url(ClusterTemplate, "change", lamp.pk), changes)
        assert response.status_code in (200, 302)
        if field:
            assert response.status_code == 200
            assert list(response.context["adminform"].form.errors) == [field]

    def test_tampered_posts_never_crash(self, catalog_a: Any, client: Any) -> None:
        lamp = ClusterTemplate.objects.get(tenant__name="acme", name="lamp")
        response = submit(
            client,
            url(ClusterTemplate, "change", lamp.pk),
            {"constraints-TOTAL_FORMS": "x", "compat_services": ["no-such-service"], "default_provider": "nope"},
            drop=("links-TOTAL_FORMS",),
        )
        assert response.status_code == 200
        php = Service.objects.get(tenant__name="acme", name="php")
        response = submit(client, url(Service, "change", php.pk), {"action-install-type": ["shell", "ansible"]})
        assert response.status_code in (200, 302)


class TestDelete:
    def test_entity_in_use_cannot_be_deleted(self, catalog_a: Any, client: Any) -> None:
        php = Service.objects.get(tenant__name="acme", name="php")
        page = client.get(url(Service, "delete", php.pk))
        assert page.status_code == 200
        assert b"php is used by clustertemplate lamp" in page.content
        response = client.post(url(Service, "delete", php.pk), {"post": "yes"})
        assert response.status_code == 200
        assert Service.objects.filter(pk=php.pk).exists()

    def test_unused_entity_is_deleted_through_the_service(self, catalog_a: Any, client: Any) -> None:
        memcached = Service.objects.get(tenant__name="acme", name="haproxy")
        ClusterTemplate.objects.filter(tenant__name="acme").delete()  # nothing uses haproxy now
        response = client.post(url(Service, "delete", memcached.pk), {"post": "yes"})
        assert response.status_code == 302
        assert not Service.objects.filter(pk=memcached.pk).exists()
        assert AuditEvent.objects.filter(action="delete", entity_name="haproxy", actor__username="alice").exists()
        assert versions(memcached) == [1]  # old versions stay readable

    def test_bulk_delete_orders_dependents_first(self, catalog_a: Any, client: Any) -> None:
        ClusterTemplate.objects.filter(tenant__name="acme").delete()
        # apache-httpd is required by php, which is required by php-modules: deleted in the reverse order.
        names = ["apache-httpd", "php", "php-modules"]
        services = Service.objects.filter(tenant__name="acme", name__in=names)
        data = {"action": "delete_selected", "_selected_action": [s.pk for s in services], "post": "yes"}
        response = client.post(url(Service), data)
        assert response.status_code == 302
        assert not Service.objects.filter(tenant__name="acme", name__in=names).exists()
        assert AuditEvent.objects.filter(action="delete", entity_kind="service").count() == 3

    def test_bulk_delete_refuses_when_something_outside_uses_them(self, catalog_a: Any, client: Any) -> None:
        services = Service.objects.filter(tenant__name="acme", name__in=["php", "base"])
        data = {"action": "delete_selected", "_selected_action": [s.pk for s in services], "post": "yes"}
        response = client.post(url(Service), data)
        assert response.status_code == 200
        assert b"is used by" in response.content
        assert Service.objects.filter(tenant__name="acme", name__in=["php", "base"]).count() == 2


def test_history_of_an_edit(catalog_a: Any, client: Any) -> None:
    php = Service.objects.get(tenant__name="acme", name="php")
    submit(client, url(Service, "change", php.pk), {"label": "PHP"})
    response = client.get(url(Service, "history", php.pk))
    assert response.status_code == 200
    assert b"Changed label." in response.content


def test_member_with_a_change_grant_may_edit_that_entity(
    catalog_a: Any, tenant_a: Any, staff_user_a: Any, login: Any
) -> None:
    from guardian.shortcuts import assign_perm

    php = Service.objects.get(tenant=tenant_a, name="php")
    assign_perm("templates_app.change_service", staff_user_a, php)
    client = login(staff_user_a)
    response = submit(client, url(Service, "change", php.pk), {"label": "granted"})
    assert response.status_code == 302
    php.refresh_from_db()
    assert (php.label, php.version) == ("granted", 2)
    other = Service.objects.get(tenant=tenant_a, name="base")
    assert client.post(url(Service, "change", other.pk), {"label": "x"}).status_code == 403
    assert client.post(url(Service, "delete", php.pk), {"post": "yes"}).status_code == 403


def test_member_with_a_delete_grant_may_delete_that_entity(
    catalog_a: Any, tenant_a: Any, staff_user_a: Any, login: Any
) -> None:
    from guardian.shortcuts import assign_perm

    small = HardwareType.objects.get(tenant=tenant_a, name="standard-2xlarge")  # only in compatibility lists
    assign_perm("templates_app.delete_hardwaretype", staff_user_a, small)
    client = login(staff_user_a)
    assert client.post(url(HardwareType, "delete", small.pk), {"post": "yes"}).status_code == 302
    assert not HardwareType.objects.filter(pk=small.pk).exists()
    other = HardwareType.objects.get(tenant=tenant_a, name="standard-xlarge")
    assert client.post(url(HardwareType, "delete", other.pk), {"post": "yes"}).status_code == 403


def test_a_second_member_sees_the_same_tenant(catalog_a: Any, tenant_a: Any, login: Any) -> None:
    second = make_member(tenant_a, Role.ADMIN, username="alma", is_staff=True)
    response = login(second).get(url(Service))
    assert len(response.context["cl"].result_list) == Service.objects.filter(tenant=tenant_a).count()
