"""The engine's hot path as PL/pgSQL functions (PostgreSQL only), installed on every ``migrate``, with the
one index they need that only PostgreSQL can make.

Why. A task's finish is seven or eight statements (read the task, lock the job, close the attempt, complete
the task, release its successors, check whether the job is done, stamp the dispatched ones). Sent one by
one through the ORM, each costs a round trip, a parse and plan on the server, and the ORM's own query
compilation in the worker, which together capped one worker process at a fifth of what the broker moves.
As one function they are one round trip, their plans are cached per connection by PL/pgSQL, and the worker
does almost no work per statement. The claim likewise returns what the runner needs to know about the task.

What stays in Python (``clusters/engine/core.py``): every decision that is rare or complex, i.e. failures and
retries, a finish in a job that failed or was aborted (the function answers ``defer`` and the ORM path takes
over under the lock the function took), and completing the job and cluster (``done``: after the commit,
the ORM ``_settle`` checks under the exclusive lock and sends the events). SQLite (the embedded mode) runs the ORM
path for everything; the engine tests run on both.

The SQL is generated from ``state.py`` (the from-states of each move) and the models' table names, and is
(re)installed by ``post_migrate`` (``install_engine_functions``), which also runs when the test database is
created with ``--no-migrations``. ``CREATE OR REPLACE`` keeps it idempotent; a deploy runs ``migrate``
anyway, so workers always find the function of their own code.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from clusters.engine.core import ACTIVE_JOB_STATUSES
from clusters.engine.state import allowed_from
from clusters.models import Cluster, Job, Node, Task, TaskAttempt, TaskEdge
from clusters.planning.planner import Action

logger = logging.getLogger(__name__)


def _array(values: Any) -> str:
    """A SQL text[] literal of constants from our own enums (never user input)."""
    items = ", ".join("'" + str(value).replace("'", "''") + "'" for value in sorted(values))
    return f"ARRAY[{items}]::text[]"


def _tables() -> dict[str, str]:
    from tenants.models import Tenant

    return {
        "task": Task._meta.db_table,
        "edge": TaskEdge._meta.db_table,
        "job": Job._meta.db_table,
        "attempt": TaskAttempt._meta.db_table,
        "cluster": Cluster._meta.db_table,
        "tenant": Tenant._meta.db_table,
        "node": Node._meta.db_table,
    }


def node_columns() -> list[tuple[str, Any]]:
    """The node row's columns as ``loom_task_claim`` returns them: (column, field), in model order."""
    return [(field.column, field) for field in Node._meta.concrete_fields]


def claim_columns(connection: Any) -> list[tuple[str, str]]:
    """Name and type of every column ``loom_task_claim`` returns: the attempt, the task's particulars, and
    its node's row (``n_<column>``; NULL for a join point), so the runner needs no read of its own."""
    base = [("attempt_id", "bigint"), ("attempt_number", "integer"), ("action", "text"), ("service", "text"),
            ("node_id", "bigint"), ("job_id", "bigint")]  # fmt: skip
    return base + [(f"n_{column}", field.db_type(connection)) for column, field in node_columns()]


def claim_sql(connection: Any) -> str:
    """``loom_task_claim(task, worker, now)``: queued → running (attempts + 1) if its job runs, and the
    attempt row, in one call; returns the attempt, what the runner needs to know about the task and its
    node's row (``claim_columns``). Called with a NULL task it claims nothing (``loom_task_succeed`` does)."""
    t = _tables()
    columns = ", ".join(f"{name} {kind}" for name, kind in claim_columns(connection))
    node_values = ", ".join(f"n.{connection.ops.quote_name(column)}" for column, _ in node_columns())
    return f"""
CREATE OR REPLACE FUNCTION loom_task_claim(p_task bigint, p_worker text, p_now timestamptz)
RETURNS TABLE ({columns})
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_action text; v_service text; v_node bigint; v_job bigint; v_number integer; v_attempt bigint;
BEGIN
    UPDATE {t["task"]} AS t SET status = '{Task.Status.RUNNING}', attempts = t.attempts + 1, worker = p_worker,
           heartbeat_at = p_now, not_before = NULL, waiting_reason = ''
     WHERE t.id = p_task AND t.status = ANY({_array(allowed_from(Task, Task.Status.RUNNING))})
       AND EXISTS (SELECT 1 FROM {t["job"]} j WHERE j.id = t.job_id AND j.status = '{Job.Status.RUNNING}')
    RETURNING t.action, t.service, t.node_id, t.job_id INTO v_action, v_service, v_node, v_job;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Numbers run on across a job retry (which resets attempts); the claimed row is ours.
    SELECT COALESCE(MAX(a.number), 0) + 1 INTO v_number FROM {t["attempt"]} a WHERE a.task_id = p_task;
    INSERT INTO {t["attempt"]} AS a (task_id, number, worker, started_at, outcome, error_class, retryable,
                                     log_tail, log)
    VALUES (p_task, v_number, p_worker, p_now, '{TaskAttempt.Outcome.RUNNING}', '', false, '', '')
    RETURNING a.id INTO v_attempt;
    RETURN QUERY SELECT v_attempt, v_number, v_action, v_service, v_node, v_job, {node_values}
                   FROM (SELECT 1) AS one LEFT JOIN {t["node"]} n ON n.id = v_node;
END
$fn$;
"""


def dispatch_sql() -> str:
    """``loom_dispatch(tenant, budget, now, any_fresh)``: a tenant's budgeted dispatch (``engine._dispatch``
    with a budget above 0): lock the tenant, count its tasks in flight, stamp the oldest-ready waiting tasks
    of its running jobs as dispatched up to the budget, and say why the rest wait. Returns the stamped tasks
    with their ``not_before``, oldest-ready first."""
    t = _tables()
    queued, running = Task.Status.QUEUED, Task.Status.RUNNING
    job_table, job_running = t["job"], Job.Status.RUNNING
    waiting = (f"t.tenant_id = p_tenant AND t.status = '{queued}' AND t.dispatched_at IS NULL AND EXISTS "
               f"(SELECT 1 FROM {job_table} j WHERE j.id = t.job_id AND j.status = '{job_running}')")  # fmt: skip
    return f"""
CREATE OR REPLACE FUNCTION loom_dispatch(p_tenant bigint, p_budget integer, p_now timestamptz, p_any_fresh boolean)
RETURNS TABLE (task_id bigint, not_before timestamptz)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_free integer; v_sent integer; v_reason text := 'tenant budget ' || p_budget || '/' || p_budget || ' busy';
BEGIN
    IF NOT p_any_fresh AND NOT EXISTS (SELECT 1 FROM {t["task"]} t WHERE {waiting}) THEN
        RETURN;  -- nothing waits for a slot: no need to take the tenant lock
    END IF;
    -- Two finishes must not both fill the last slot. NO KEY UPDATE: foreign-key checks need not wait.
    PERFORM 1 FROM {t["tenant"]} w WHERE w.id = p_tenant FOR NO KEY UPDATE;
    -- In flight = running + sent and not claimed yet; two counts, each over a partial index of its own.
    v_free := GREATEST(0, p_budget
        - (SELECT COUNT(*) FROM {t["task"]} t WHERE t.tenant_id = p_tenant AND t.status = '{running}')
        - (SELECT COUNT(*) FROM {t["task"]} t WHERE t.tenant_id = p_tenant AND t.status = '{queued}'
                                                 AND t.dispatched_at IS NOT NULL));
    RETURN QUERY
    WITH chosen AS (SELECT t.id FROM {t["task"]} t WHERE {waiting}
                     ORDER BY t.not_before ASC NULLS FIRST, t.job_id, t.key LIMIT v_free),
         sent AS (UPDATE {t["task"]} AS t SET dispatched_at = p_now FROM chosen WHERE t.id = chosen.id
                  RETURNING t.id, t.not_before, t.job_id, t.key)
    SELECT sent.id, sent.not_before FROM sent ORDER BY sent.not_before ASC NULLS FIRST, sent.job_id, sent.key;
    GET DIAGNOSTICS v_sent = ROW_COUNT;
    IF v_free <= v_sent THEN
        UPDATE {t["task"]} AS t SET waiting_reason = v_reason WHERE {waiting} AND t.waiting_reason <> v_reason;
    END IF;
END
$fn$;
"""


def succeed_sql(connection: Any) -> str:
    """``loom_task_succeed(...)``: the successful finish of an attempt (see the module docstring).

    Returns one row:

    * ``verdict``: ``ok``; ``stale`` (the attempt was already closed or no longer owns the task: nothing more
      recorded); ``need_exclusive`` (the job ended while only a shared lock was taken: call again with
      ``p_exclusive``); ``defer`` (the job failed or was aborted: nothing changed, the exclusive lock is held
      and the ORM path finishes);
    * ``job_id``; ``released``: how many successors it queued; ``dispatched`` / ``not_before``: the tasks
      stamped as handed out (without a budget, the released ones of a running job; with one, whatever
      ``loom_dispatch`` found room for);
    * ``done``: the finish queued nothing in a running job, so it may have been the job's last: the caller
      checks after committing (``engine._complete_if_done``);
    * ``next_task`` and ``next_<claim column>``: with ``p_next_worker``, the task of those handed out that it
      claimed for that worker and the columns of ``loom_task_claim`` (with a budget it may be another job's).
    """
    t = _tables()
    claim = claim_columns(connection)
    next_columns = ", ".join(f"next_{name} {kind}" for name, kind in claim)
    no_next = ", ".join(["NULL::bigint"] + [f"NULL::{kind}" for _, kind in claim])
    active = _array(ACTIVE_JOB_STATUSES)
    waiting, queued, completed = Task.Status.WAITING, Task.Status.QUEUED, Task.Status.COMPLETED
    if allowed_from(Task, queued) >= {waiting} and allowed_from(Task, completed) >= {waiting}:
        release_moves = f"""CASE WHEN t.pending_deps - v_count = 0 AND t.status = '{waiting}'
                   THEN (CASE WHEN t.action = '{Action.JOIN.value}' THEN '{completed}' ELSE '{queued}' END)
                   ELSE t.status END"""
        stamp = f"""CASE WHEN v_stamp AND t.pending_deps - v_count = 0 AND t.status = '{waiting}'
                    AND t.action <> '{Action.JOIN.value}' THEN p_now ELSE t.dispatched_at END"""
    else:  # pragma: no cover - state.py is the authority; tests/clusters check it allows these moves
        raise RuntimeError("state.py no longer allows waiting → queued / completed")
    return f"""
CREATE OR REPLACE FUNCTION loom_task_succeed(
    p_attempt bigint, p_number integer, p_task bigint, p_now timestamptz, p_log text, p_log_tail text,
    p_exclusive boolean, p_next_worker text)
RETURNS TABLE (verdict text, job_id bigint, released integer, dispatched bigint[], not_before timestamptz[],
               done boolean, next_task bigint, {next_columns})
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_tenant bigint; v_job bigint; v_status text; v_exclusive boolean;
    v_released bigint[] := '{{}}'; v_frontier bigint[]; v_joins bigint[]; v_successor bigint; v_count bigint;
    v_pending integer; v_moved text; v_action text; v_successor_not_before timestamptz;
    v_dispatched bigint[] := '{{}}'; v_not_before timestamptz[] := '{{}}'; v_budget integer := 0;
    v_done boolean := false; v_stamp boolean; v_index integer; v_candidate bigint;
BEGIN
    SELECT t.tenant_id, t.job_id, j.status INTO v_tenant, v_job, v_status
      FROM {t["task"]} t JOIN {t["job"]} j ON j.id = t.job_id WHERE t.id = p_task;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'stale', NULL::bigint, 0, v_dispatched, v_not_before, false, {no_next};
        RETURN;
    END IF;
    -- Shared unless the job has ended (then the ORM path settles it under FOR NO KEY UPDATE): see engine.py.
    -- A task without successors takes it shared too; whether the job ended is checked after the commit.
    v_exclusive := p_exclusive OR NOT (v_status = ANY({active}));
    IF v_exclusive THEN
        SELECT j.status INTO v_status FROM {t["job"]} j WHERE j.id = v_job FOR NO KEY UPDATE;
    ELSE
        SELECT j.status INTO v_status FROM {t["job"]} j WHERE j.id = v_job FOR SHARE;
    END IF;
    IF NOT (v_status = ANY({active})) THEN
        RETURN QUERY SELECT CASE WHEN v_exclusive THEN 'defer' ELSE 'need_exclusive' END, v_job, 0,
                            v_dispatched, v_not_before, false, {no_next};
        RETURN;
    END IF;
    UPDATE {t["attempt"]} SET outcome = '{TaskAttempt.Outcome.SUCCEEDED}', finished_at = p_now, error_class = '',
           retryable = false, log = p_log, log_tail = p_log_tail
     WHERE id = p_attempt AND finished_at IS NULL;
    IF FOUND THEN
        -- The attempt still owns the task only if no later attempt exists (the janitor may have requeued it).
        UPDATE {t["task"]} AS t SET status = '{completed}', heartbeat_at = NULL
         WHERE t.id = p_task AND t.status = ANY({_array(allowed_from(Task, completed))})
           AND NOT EXISTS (SELECT 1 FROM {t["attempt"]} a WHERE a.task_id = t.id AND a.number > p_number);
    END IF;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'stale', v_job, 0, v_dispatched, v_not_before, false, {no_next};
        RETURN;
    END IF;
    SELECT COALESCE(w.workers, 0) INTO v_budget FROM {t["tenant"]} w WHERE w.id = v_tenant;
    -- With no budget to keep, released tasks are stamped as dispatched by the very UPDATE that queues them.
    v_stamp := v_budget = 0 AND v_status = '{Job.Status.RUNNING}';
    -- Release, one successor at a time in key order (each a primary-key UPDATE, which also takes the row
    -- locks in key order, so shared holders releasing overlapping successors cannot deadlock): decrement,
    -- and move it when it reaches 0; a JOIN reaching 0 completes here and releases its own successors next.
    -- Row by row rather than one set UPDATE: a task has one or two successors, and the set form's plan
    -- (hash joins over the task table) cost more than the work.
    v_frontier := ARRAY[p_task];
    WHILE cardinality(v_frontier) > 0 LOOP
        v_joins := '{{}}';
        FOR v_successor, v_count IN
            SELECT e.successor_id, COUNT(*) FROM {t["edge"]} e WHERE e.predecessor_id = ANY(v_frontier)
             GROUP BY e.successor_id ORDER BY e.successor_id
        LOOP
            UPDATE {t["task"]} AS t SET pending_deps = t.pending_deps - v_count, status = {release_moves},
                   dispatched_at = {stamp}
             WHERE t.id = v_successor
            RETURNING t.pending_deps, t.status, t.action, t.not_before
                 INTO v_pending, v_moved, v_action, v_successor_not_before;
            IF v_pending = 0 AND v_moved = '{queued}' THEN
                v_released := v_released || v_successor;
                IF v_stamp THEN
                    v_dispatched := v_dispatched || v_successor;
                    v_not_before := v_not_before || v_successor_not_before;
                END IF;
            ELSIF v_pending = 0 AND v_moved = '{completed}' AND v_action = '{Action.JOIN.value}' THEN
                v_joins := v_joins || v_successor;
            END IF;
        END LOOP;
        v_frontier := v_joins;
    END LOOP;
    -- Only a finish that queued nothing can be a job's last (whatever it queued has yet to run). Such a
    -- finish checks, after committing, whether everything has ended (engine._complete_if_done). Deciding
    -- that here from other tasks' states would race: two last tasks each see the other unfinished.
    v_done := v_status = '{Job.Status.RUNNING}' AND cardinality(v_released) = 0;
    IF v_budget > 0 THEN  -- this finish freed a slot (and may have released tasks): fill what the budget allows
        SELECT COALESCE(array_agg(d.task_id ORDER BY d.n), '{{}}'), COALESCE(array_agg(d.not_before ORDER BY d.n),
               '{{}}') INTO v_dispatched, v_not_before
          FROM loom_dispatch(v_tenant, v_budget, p_now, v_status = '{Job.Status.RUNNING}'
                             AND cardinality(v_released) > 0) WITH ORDINALITY AS d(task_id, not_before, n);
    END IF;
    -- Claim the first task handed out that may run now for the caller's thread, in this transaction: the
    -- worker runs it next without a broker round trip or a claim of its own (engine.task_finish).
    IF p_next_worker IS NOT NULL THEN
        FOR v_index IN 1 .. COALESCE(cardinality(v_dispatched), 0) LOOP
            IF v_not_before[v_index] IS NULL OR v_not_before[v_index] <= p_now THEN
                v_candidate := v_dispatched[v_index];
                EXIT;
            END IF;
        END LOOP;
    END IF;
    -- With no candidate (a NULL task) loom_task_claim claims nothing and the claim columns stay NULL.
    RETURN QUERY SELECT 'ok', v_job, cardinality(v_released), v_dispatched, v_not_before, v_done,
                        CASE WHEN c.attempt_id IS NULL THEN NULL ELSE v_candidate END, c.*
                   FROM (SELECT 1) AS one
                   LEFT JOIN LATERAL loom_task_claim(v_candidate, p_next_worker, p_now) AS c ON true;
END
$fn$;
"""


FUNCTIONS = ("loom_task_claim", "loom_dispatch", "loom_task_succeed")


def waiting_slot_index_sql() -> str:
    """A tenant's tasks waiting for a slot in the order ``loom_dispatch`` hands them out (no backoff first,
    then the oldest backoff, then job and key), so filling a slot reads the first rows of an index instead
    of sorting every waiting task. Made here rather than in the model's Meta: SQLite cannot index NULLS
    FIRST, and the order must match the query's for PostgreSQL to read it in index order."""
    task = Task._meta.db_table
    return (
        f"CREATE INDEX IF NOT EXISTS task_waiting_slot ON {task} (tenant_id, not_before NULLS FIRST, job_id, key) "
        f"WHERE status = '{Task.Status.QUEUED}' AND dispatched_at IS NULL"
    )


DROP_SQL = f"""
DO $drop$ DECLARE f regprocedure; BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = current_schema() AND p.proname IN {FUNCTIONS!r} LOOP
        EXECUTE 'DROP FUNCTION ' || f;
    END LOOP;
END $drop$;
"""


def engine_functions_sql(connection: Any) -> list[str]:
    return [claim_sql(connection), dispatch_sql(), succeed_sql(connection), waiting_slot_index_sql()]


def install_engine_functions(using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """``post_migrate`` receiver: (re)create the functions on a PostgreSQL database; nothing elsewhere."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    # One transaction: other sessions see the old functions or the new ones, never none. Dropping first lets
    # a signature change replace the old function instead of adding an overload beside it.
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(DROP_SQL)
        for sql in engine_functions_sql(connection):
            cursor.execute(sql)
    logger.debug("engine functions installed", extra={"database": using})
