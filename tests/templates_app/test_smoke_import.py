from tests.conftest import as_json


def test_import_samples_by_api(admin_a, client_for, samples):
    response = client_for(admin_a).post("/api/v2/import", samples, format="json")
    assert response.status_code == 200, response.content
    body = as_json(response)
    assert sorted(body["created"]["services"]) == sorted(s["name"] for s in samples["services"])
