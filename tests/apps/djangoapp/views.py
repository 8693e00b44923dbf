"""Views that spend a known time on one cause, reporting what they measured themselves:
X-Spent-Ms (wall time of the part that waits) and X-Cpu-Ms (this thread's CPU time over the
view), the ground truth introspect's tests compare with. X-Tid is the serving thread."""
import threading
import time

from django.db import connection, transaction
from django.http import HttpResponse


def _measured(spent_ms, cpu_ms, body="done\n"):
    resp = HttpResponse(body, content_type="text/plain")
    resp["X-Spent-Ms"] = f"{spent_ms:.3f}"
    resp["X-Cpu-Ms"] = f"{cpu_ms:.3f}"
    resp["X-Tid"] = str(threading.get_native_id())
    return resp


def fast(request, tag=None):
    return HttpResponse("ok\n", content_type="text/plain")


def sleep(request, ms, tag=None):
    c0, t0 = time.thread_time(), time.monotonic()
    time.sleep(ms / 1000.0)
    return _measured((time.monotonic() - t0) * 1e3, (time.thread_time() - c0) * 1e3)


def db_sleep(request, ms, tag=None):
    """SELECT pg_sleep: with CONN_MAX_AGE = 0 the cursor opens this request's connection, so the
    measured part includes connecting; Django closes it when the request ends."""
    c0, t0 = time.thread_time(), time.monotonic()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_sleep(%s)", [ms / 1000.0])
    spent = (time.monotonic() - t0) * 1e3
    return _measured(spent, (time.thread_time() - c0) * 1e3)


def db_forupdate(request, tag=None):
    """SELECT ... FOR UPDATE on row 1 of `items` in a transaction, which a test may hold locked
    from another one."""
    c0, t0 = time.thread_time(), time.monotonic()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT id FROM items WHERE id = 1 FOR UPDATE")
    spent = (time.monotonic() - t0) * 1e3
    return _measured(spent, (time.thread_time() - c0) * 1e3)


def db_hold(request, ms, tag=None):
    """Locks row 1 of `items` (SELECT ... FOR UPDATE inside transaction.atomic()) and keeps it
    locked for `ms` ms before committing: the holder a test's other request waits for."""
    c0, t0 = time.thread_time(), time.monotonic()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT id FROM items WHERE id = 1 FOR UPDATE")
        time.sleep(ms / 1000.0)
    spent = (time.monotonic() - t0) * 1e3
    return _measured(spent, (time.thread_time() - c0) * 1e3)


def _spin(ms):
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


def price_catalog(ms):
    """The typical hotspot: a page whose CPU, called often, adds up. It spins itself (rather
    than through _spin) so that it is the innermost Python frame of its samples."""
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


def catalog(request, ms, tag=None):
    c0, t0 = time.thread_time(), time.monotonic()
    price_catalog(ms)
    return _measured((time.monotonic() - t0) * 1e3, (time.thread_time() - c0) * 1e3)


def crunch_report(ms):
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


def report(request, ms, tag=None):
    """The rare slow page: a third of its time on the CPU (crunch_report), the rest asleep."""
    c0, t0 = time.thread_time(), time.monotonic()
    crunch_report(ms / 3)
    time.sleep(ms * 2 / 3 / 1000.0)
    return _measured((time.monotonic() - t0) * 1e3, (time.thread_time() - c0) * 1e3)


def db_atomic_spin(request, item, ms, tag=None):
    """Insert row `item` into `items` inside transaction.atomic(), then spin in Python for `ms`
    ms: interrupted there, the transaction rolls back and Django answers its own 500."""
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("INSERT INTO items (id, v) VALUES (%s, %s)", [item, tag or "atomic"])
        _spin(ms)
    return HttpResponse("committed\n", content_type="text/plain")


def db_atomic_bigint(request, item, tag=None):
    """Insert row `item` inside transaction.atomic(), then 7 ** (7 ** 9): a minute of C code
    that checks for signals, so gunicorn's SIGABRT raises SystemExit in it, atomic() rolls back
    and gunicorn answers 500."""
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("INSERT INTO items (id, v) VALUES (%s, %s)", [item, tag or "bigint"])
        x = 7 ** (7**9)
    return HttpResponse(f"{x.bit_length()} bits\n", content_type="text/plain")


def db_atomic_sum(request, item, tag=None):
    """Insert row `item` inside transaction.atomic(), then sum(range(10 ** 11)): one C call that
    never checks for signals, so no Python runs, SIGKILL ends the worker with the transaction
    open, and PostgreSQL rolls it back when the socket closes."""
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("INSERT INTO items (id, v) VALUES (%s, %s)", [item, tag or "sum"])
        n = sum(range(10**11))
    return HttpResponse(f"{n}\n", content_type="text/plain")


def pid(request):
    import os

    resp = HttpResponse(f"{os.getpid()}\n", content_type="text/plain")
    resp["X-Pid"] = str(os.getpid())
    return resp
