"""Views whose queries are known: each answers X-Queries, the number of queries Django itself
ran for it (`connection.queries`), and X-Sql-Ms, the time its executions took as the app saw it
(Django's execute_wrapper around each, and the same around each COMMIT and ROLLBACK;
perf_counter): the ground truth the SQL suite compares with. X-Gc-Ms is the part of that time
the interpreter spent collecting garbage (a pause of the app, not of its database)."""
import functools
import gc
import time

from django.db import IntegrityError, connection, transaction
from django.http import HttpResponse

from .models import Author, Book

_spent = {"ns": 0, "gc_ns": 0}
_gc = {"t0": 0, "timing": False}


def _on_gc(phase, info):
    # Only collections inside a timed execution count: those are in X-Sql-Ms.
    if phase == "start":
        _gc["t0"] = time.perf_counter_ns()
    elif _gc["timing"]:
        _spent["gc_ns"] += time.perf_counter_ns() - _gc["t0"]


gc.callbacks.append(_on_gc)


def _timer(execute, sql, params, many, context):
    t0 = time.perf_counter_ns()
    _gc["timing"] = True
    try:
        return execute(sql, params, many, context)
    finally:
        _gc["timing"] = False
        _spent["ns"] += time.perf_counter_ns() - t0


def _timed(method):
    @functools.wraps(method)
    def timed(*args, **kwargs):
        t0 = time.perf_counter_ns()
        _gc["timing"] = True
        try:
            return method(*args, **kwargs)
        finally:
            _gc["timing"] = False
            _spent["ns"] += time.perf_counter_ns() - t0

    return timed


def measured(view):
    """Counts and times the view's queries (sync workers: one request at a time per process)."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        # Django records queries only in DEBUG; this asks for it on this connection alone.
        connection.force_debug_cursor = True
        _spent["ns"] = 0
        _spent["gc_ns"] = 0
        # COMMIT and ROLLBACK are round trips too, outside any execution: timed the same way.
        connection._commit = _timed(connection._commit)
        connection._rollback = _timed(connection._rollback)
        try:
            with connection.execute_wrapper(_timer):
                resp = view(request, *args, **kwargs)
        finally:
            # The instance attributes go; the class's methods show through again.
            del connection._commit
            del connection._rollback
        resp["X-Sql-Ms"] = f"{_spent['ns'] / 1e6:.3f}"
        resp["X-Gc-Ms"] = f"{_spent['gc_ns'] / 1e6:.3f}"
        return resp

    return wrapped


def _answer(body, status=200):
    resp = HttpResponse(body, content_type="text/plain", status=status)
    resp["X-Queries"] = str(len(connection.queries))
    # The server process of this request's connection: PostgreSQL's log names it.
    raw = connection.connection
    if raw is not None:
        resp["X-Backend-Pid"] = str(raw.info.backend_pid)
    return resp


@measured
def books_n1(request, tag=None):
    """The N+1 pattern: the books, then each book's author on first access (20 + 1 queries)."""
    lines = [f"{b.title} by {b.author.name}" for b in Book.objects.order_by("id")[:20]]
    return _answer("\n".join(lines) + "\n")


@measured
def books_joined(request, tag=None):
    """The same page with select_related: one query."""
    lines = [f"{b.title} by {b.author.name}" for b in Book.objects.select_related("author").order_by("id")[:20]]
    return _answer("\n".join(lines) + "\n")


@measured
def four_lookups(request, tag=None):
    """Four lookups of one shape: below the N+1 bar."""
    names = [Author.objects.get(id=i).name for i in range(1, 5)]
    return _answer(" ".join(names) + "\n")


@measured
def twenty_shapes(request, tag=None):
    """Twenty queries of twenty different shapes: no pattern."""
    with connection.cursor() as cur:
        for i in range(20):
            cur.execute(f"SELECT id AS col{i} FROM library_author WHERE id = %s", [i + 1])
    return _answer("ok\n")


@measured
def same_twice(request, tag=None):
    """The same lookup, same value, three times: exact duplicates."""
    for _ in range(3):
        Author.objects.get(id=7)
    return _answer("ok\n")


@measured
def unique_violation(request, tag=None):
    """An insert of a primary key that exists: SQLSTATE 23505, answered 409."""
    try:
        with transaction.atomic():
            Author.objects.create(id=1, name="again")
    except IntegrityError:
        return _answer("duplicate\n", status=409)
    return _answer("inserted?\n")


@measured
def secret(request, tag=None):
    """A lookup whose literal is a secret (from the query string, which introspect does not
    report): it must never appear in introspect's outputs."""
    n = Author.objects.filter(name=request.GET.get("token", "")).count()
    return _answer(f"{n}\n")


@measured
def long_statement(request, tag=None):
    """A 10 KB statement with a literal at its very end."""
    values = ", ".join(f"'v{i:04d}'" for i in range(1200))
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM library_author WHERE name IN ({values}) OR name = %s", ["S3CR3T-tail"])
        cur.fetchone()
    return _answer("ok\n")


@measured
def left_open(request, tag=None):
    """A transaction begun and never committed: open when the request ends (Django closes the
    connection, which rolls it back)."""
    transaction.set_autocommit(False)
    Author.objects.filter(id=2).update(name="author 2")
    return _answer("open\n")
