"""The load ``bench/load.py`` puts on a deployment: users who browse the clusters list and cluster pages, poll
a cluster's live progress, read the API, and create and delete small clusters. Run by locust in its own
virtualenv (``.venv-locust``: locust's gevent must not meet the project's own processes), configured by
the environment ``bench/load.py`` sets: ``LOAD_TOKEN`` (an API token of the demo admin), ``LOAD_PASSWORD``
(the admin's password, for the pages' session), ``LOAD_CLUSTERS`` (ids ``LOAD_FIRST``.. of seeded clusters)."""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

TOKEN = os.environ["LOAD_TOKEN"]
PASSWORD = os.environ["LOAD_PASSWORD"]
FIRST = int(os.environ["LOAD_FIRST"])
LAST = FIRST + int(os.environ["LOAD_CLUSTERS"]) - 1
ENDED = ("completed", "failed", "aborted")


class LoomUser(HttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.api = {"Authorization": f"Bearer {TOKEN}", "X-Loom-Tenant": "demo"}
        self.client.get("/login/", name="login")
        form = {"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": self.client.cookies["csrftoken"]}
        referer = {"Referer": f"{self.host}/login/"}
        self.client.post("/login/", data=form, headers=referer, name="login")
        switch = {"tenant": "demo", "csrfmiddlewaretoken": self.client.cookies["csrftoken"], "next": "/clusters/"}
        self.client.post("/tenant/", data=switch, headers=referer, name="login")
        self.mine: list[int] = []

    def cluster_id(self) -> int:
        return random.randint(FIRST, LAST)

    @task(3)
    def clusters_page(self) -> None:
        self.client.get("/clusters/", name="page /clusters/")

    @task(3)
    def cluster_page(self) -> None:
        self.client.get(f"/clusters/{self.cluster_id()}/", name="page /clusters/{id}/")

    @task(5)
    def live_progress(self) -> None:
        self.client.get(f"/clusters/{self.cluster_id()}/live/", name="page /clusters/{id}/live/")

    @task(3)
    def api_clusters(self) -> None:
        self.client.get("/api/v2/clusters", headers=self.api, name="api /clusters")

    @task(3)
    def api_cluster(self) -> None:
        self.client.get(f"/api/v2/clusters/{self.cluster_id()}", headers=self.api, name="api /clusters/{id}")

    @task(1)
    def create_then_delete(self) -> None:
        """Create a 3-node cluster; on a later turn, delete the ones that are up."""
        for cluster in list(self.mine):
            answer = self.client.get(f"/api/v2/clusters/{cluster}", headers=self.api, name="api /clusters/{id}")
            if answer.status_code == 200 and answer.json()["status"] == "active":
                self.client.delete(f"/api/v2/clusters/{cluster}", headers=self.api, name="api DELETE /clusters/{id}")
                self.mine.remove(cluster)
        if len(self.mine) < 2:
            body = {"name": f"load{random.randrange(10**9)}", "clusterTemplate": "demo-web", "numMachines": 3}
            answer = self.client.post("/api/v2/clusters", json=body, headers=self.api, name="api POST /clusters")
            if answer.status_code == 202:
                self.mine.append(answer.json()["cluster"]["id"])
