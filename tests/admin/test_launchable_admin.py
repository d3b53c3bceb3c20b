"""The catalog admin says which templates and providers cannot launch, and why: a column, a filter and a
line on the change page, with the reasons the API gives (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest

from providers.models import Provider
from templates_app.models import ClusterTemplate
from templates_app.services import catalog_import
from tests.admin.conftest import url

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(staff_admin_a: Any, login: Any, tenant_a: Any, sample_catalog: Any) -> Any:
    catalog_import(tenant=tenant_a, user=None, data=sample_catalog)  # rackspace with sample credentials
    return login(staff_admin_a)


def test_the_template_list_has_a_launchable_column_with_the_reasons(client):
    page = client.get(url(ClusterTemplate)).content.decode()
    assert "launchable" in page
    assert "api_password, api_user hold sample values, not credentials" in page


def test_the_launchable_filter_picks_rows_by_the_computed_flag(client, tenant_a, staff_admin_a):
    from templates_app.services import catalog_entity_save

    fake = {"name": "fake-lab", "providertype": "fake", "provisioner": {"failure_rate": "0"}}
    catalog_entity_save(tenant=tenant_a, user=staff_admin_a, kind_key="providers", data=fake)
    no = client.get(url(Provider) + "?launchable=no")
    yes = client.get(url(Provider) + "?launchable=yes")
    assert {p.name for p in no.context["cl"].result_list} == {"rackspace", "aws-us-east-1", "openstack"} - {
        p.name for p in yes.context["cl"].result_list
    }
    assert "fake-lab" in {p.name for p in yes.context["cl"].result_list}
    assert "rackspace" in {p.name for p in no.context["cl"].result_list}


def test_the_change_page_says_why(client, tenant_a):
    lamp = ClusterTemplate.objects.get(tenant=tenant_a, name="lamp")
    page = client.get(url(ClusterTemplate, "change", lamp.pk)).content.decode()
    assert "defaults.provider: provider rackspace: api_password, api_user hold sample values" in page
