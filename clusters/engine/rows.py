"""Node rows read without building and compiling an ORM query each time.

Every task of a job reads its node afresh (create and confirm write to it during the job): on PostgreSQL the
claim returns the row (``loom_task_claim``), elsewhere ``node_read`` selects it. At a few hundred tasks a
second, compiling the same ORM query was a tenth of a worker's CPU. The statement and the fields'
converters (JSON) are made once per process; instances come from ``Model.from_db``, as the ORM's own would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import connection

from clusters.models import Node

_Converter = tuple[int, list[Callable[..., Any]], Any]
_prepared: tuple[str, list[str], list[_Converter]] | None = None


def _node_statement() -> tuple[str, list[str], list[_Converter]]:
    global _prepared
    if _prepared is None:
        quote = connection.ops.quote_name
        table = Node._meta.db_table
        fields = Node._meta.concrete_fields
        columns = ", ".join(quote(field.column) for field in fields)
        sql = f"SELECT {columns} FROM {quote(table)} WHERE {quote(Node._meta.pk.column)} = %s"
        converters: list[_Converter] = []
        for index, field in enumerate(fields):
            column = field.get_col(table)
            functions = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
            if functions:
                converters.append((index, functions, column))
        _prepared = (sql, [field.attname for field in fields], converters)
    return _prepared


def node_from_row(values: Sequence[Any]) -> Node:
    """A Node from its columns in model field order, as the database driver returned them."""
    _, names, converters = _node_statement()
    converted = list(values)
    for index, functions, column in converters:
        for function in functions:
            converted[index] = function(converted[index], column, connection)
    return Node.from_db(connection.alias, names, converted)


def node_read(node_pk: int) -> Node:
    """``Node.objects.get(pk=node_pk)`` without compiling a query. Raises ``Node.DoesNotExist``."""
    sql, _, _ = _node_statement()
    with connection.cursor() as cursor:
        cursor.execute(sql, [node_pk])
        row = cursor.fetchone()
    if row is None:
        raise Node.DoesNotExist(f"node {node_pk} does not exist")
    return node_from_row(row)
