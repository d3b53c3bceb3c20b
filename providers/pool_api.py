"""API of static host pools, tenant admins only: ``/api/v2/providers/{name}/hosts[/{id}]``.

``GET`` lists the pool (every state but ``retired``; ``?state=free,broken`` picks states), ``POST`` registers
a host, ``GET|PATCH /{id}`` reads or changes one (address, port, user, host key; ``state`` ``free`` returns
a repaired host to the pool, ``broken`` takes one out of service), ``DELETE /{id}`` retires it. Another
tenant's provider or host is a 404; members who are not admins get 403; a provider of another type is a
400 naming it. Every write goes through ``providers.pool``, which validates, audits and refuses to change
a host a node holds (409 naming the node).
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from tenants.api import TENANT_PARAMETER, TenantScopedMixin

from . import pool
from .drivers.base import TAG_CLUSTER
from .models import PoolHost, Provider

NAME_PARAMETER = OpenApiParameter("name", str, OpenApiParameter.PATH, description="A static provider's name.")
HOST_PARAMETER = OpenApiParameter("host_pk", int, OpenApiParameter.PATH, description="The host's id.")
STATE_PARAMETER = OpenApiParameter(
    "state", str, OpenApiParameter.QUERY, required=False,
    description=f"Comma list of states ({', '.join(PoolHost.State.values)}); default: all but retired.",
)  # fmt: skip


class PoolHostSerializer(serializers.ModelSerializer):
    """A pool host as the API shows it; ``node``, ``cluster`` and ``machine_id`` while a node holds it."""

    provider = serializers.CharField(source="provider.name", read_only=True)
    node = serializers.CharField(source="node_key", read_only=True)
    cluster = serializers.SerializerMethodField()
    machine_id = serializers.SerializerMethodField()

    class Meta:
        model = PoolHost
        fields = [
            "id", "provider", "address", "ssh_port", "ssh_user", "host_key", "state", "node", "cluster",
            "machine_id", "allocated_at", "allocations", "hostname", "last_error", "state_changed_at", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_cluster(self, host: PoolHost) -> str | None:
        return (host.tags or {}).get(TAG_CLUSTER) if host.node_key else None

    def get_machine_id(self, host: PoolHost) -> str | None:
        return pool.machine_id_of(host) if host.node_key else None


class PoolHostInputSerializer(serializers.Serializer):
    """What an admin sends. Shapes only: ``providers.pool`` validates the values and names bad fields."""

    address = serializers.CharField(max_length=255, help_text="IP address or DNS name Loom connects to.")
    ssh_port = serializers.IntegerField(required=False, help_text="SSH port (default 22).")
    ssh_user = serializers.CharField(
        required=False, allow_blank=True, max_length=64, help_text="Login user; empty: the provider's ssh_user."
    )
    host_key = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=True,
        help_text="OpenSSH public host key line; empty: pinned on first contact.",
    )  # fmt: skip
    state = serializers.ChoiceField(
        choices=list(pool.SETTABLE_STATES), required=False,
        help_text="free (in the pool) or broken (out of service).",
    )  # fmt: skip


class _PoolApi(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = PoolHostSerializer
    filter_backends: list[Any] = []
    queryset = PoolHost.objects.none()  # for the schema; requests use ``providers.pool``

    def provider(self, name: str) -> Provider:
        return pool.pool_provider_get(user=self.request.user, tenant=self.tenant, name=name)

    def host(self, name: str, host_pk: str) -> PoolHost:
        return pool.pool_host_get(user=self.request.user, provider=self.provider(name), pk=int(host_pk))

    def respond(self, host: PoolHost, status_code: int = status.HTTP_200_OK, **headers: str) -> Response:
        return Response(PoolHostSerializer(host).data, status=status_code, headers=headers or None)


class PoolHostListApi(_PoolApi):
    @extend_schema(
        operation_id="pool_hosts_list",
        parameters=[TENANT_PARAMETER, NAME_PARAMETER, STATE_PARAMETER],
        responses=PoolHostSerializer(many=True),
    )
    def get(self, request: Request, name: str) -> Response:
        """The pool's hosts, oldest first."""
        wanted = request.query_params.get("state")
        states = [state.strip() for state in wanted.split(",") if state.strip()] if wanted else None
        hosts = pool.pool_host_list(user=request.user, provider=self.provider(name), states=states)
        page = self.paginate_queryset(hosts)
        return self.get_paginated_response(PoolHostSerializer(page, many=True).data)

    @extend_schema(
        operation_id="pool_host_register",
        parameters=[TENANT_PARAMETER, NAME_PARAMETER],
        request=PoolHostInputSerializer,
        responses={201: PoolHostSerializer},
    )
    def post(self, request: Request, name: str) -> Response:
        """Register a host in the pool (free, unless sent as ``broken``)."""
        provider = self.provider(name)
        serializer = PoolHostInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        host = pool.pool_host_register(actor=request.user, provider=provider, **serializer.validated_data)
        location = reverse("pool-host", kwargs={"name": provider.name, "host_pk": host.pk})
        return self.respond(host, status.HTTP_201_CREATED, Location=location)


class PoolHostApi(_PoolApi):
    @extend_schema(
        operation_id="pool_host_retrieve", parameters=[TENANT_PARAMETER, NAME_PARAMETER, HOST_PARAMETER],
        responses=PoolHostSerializer,
    )  # fmt: skip
    def get(self, request: Request, name: str, host_pk: str) -> Response:
        return self.respond(self.host(name, host_pk))

    @extend_schema(
        operation_id="pool_host_update",
        parameters=[TENANT_PARAMETER, NAME_PARAMETER, HOST_PARAMETER],
        request=PoolHostInputSerializer(partial=True),
        responses=PoolHostSerializer,
    )
    def patch(self, request: Request, name: str, host_pk: str) -> Response:
        """Change the given fields of a free or broken host."""
        host = self.host(name, host_pk)
        serializer = PoolHostInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        return self.respond(pool.pool_host_update(actor=request.user, host=host, changes=serializer.validated_data))

    @extend_schema(
        operation_id="pool_host_retire", parameters=[TENANT_PARAMETER, NAME_PARAMETER, HOST_PARAMETER],
        responses={204: None},
    )  # fmt: skip
    def delete(self, request: Request, name: str, host_pk: str) -> Response:
        """Retire a free or broken host (kept as a record, listed with ``?state=retired``)."""
        pool.pool_host_retire(actor=request.user, host=self.host(name, host_pk))
        return Response(status=status.HTTP_204_NO_CONTENT)
