"""A Flask app whose endpoints do known things, for introspect's tests and demo.

Every response carries X-Tid (the native id of the thread that served it) and X-Pid (its
process) so tests can check thread attribution, and which worker served, against ground truth. A trailing /<tag> segment on any endpoint is ignored by
the app and lets a client make every request's path unique.
"""
import os
import threading
import time

from flask import Flask, Response, abort

app = Flask(__name__)


@app.after_request
def tag_thread(resp):
    resp.headers["X-Tid"] = str(threading.get_native_id())
    resp.headers["X-Pid"] = str(os.getpid())
    return resp


def burn(ms):
    """Spin on the CPU for `ms` milliseconds of this thread's CPU time."""
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


@app.route("/fast")
@app.route("/fast/<tag>")
def fast(tag=None):
    return "ok\n"


@app.route("/sleep/<int:ms>")
@app.route("/sleep/<int:ms>/<tag>")
def sleep(ms, tag=None):
    c0 = time.thread_time()
    _, spent, _ = _timed(lambda: time.sleep(ms / 1000.0))
    return _measured(spent, (time.thread_time() - c0) * 1e3, f"slept {ms} ms\n")


@app.route("/cpu/<int:ms>")
@app.route("/cpu/<int:ms>/<tag>")
def cpu(ms, tag=None):
    _, spent, cpu_ms = _timed(lambda: burn(ms))
    return _measured(spent, cpu_ms, f"burned {ms} ms\n")


def price_catalog(ms):
    """The typical hotspot: a page whose CPU, called often, adds up. It spins itself (rather
    than through burn) so that it is the innermost Python frame of its samples."""
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


@app.route("/catalog/<int:ms>")
@app.route("/catalog/<int:ms>/<tag>")
def catalog(ms, tag=None):
    _, spent, cpu_ms = _timed(lambda: price_catalog(ms))
    return _measured(spent, cpu_ms, f"priced in {ms} ms of CPU\n")


def crunch_report(ms):
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


def housekeeping(ms):
    """Work a background thread does outside any request."""
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


@app.route("/later/<int:ms>")
def later(ms):
    """Answers at once and leaves `ms` of CPU to a background thread: samples of that thread
    belong to no request. X-Bg-Tid names the thread."""
    t = threading.Thread(target=housekeeping, args=(ms,), daemon=True)
    t.start()
    resp = Response("later\n")
    resp.headers["X-Bg-Tid"] = str(t.native_id)
    return resp


@app.route("/report/<int:ms>")
@app.route("/report/<int:ms>/<tag>")
def report(ms, tag=None):
    """The rare slow page: a third of its time on the CPU (crunch_report), the rest asleep."""
    def run():
        crunch_report(ms / 3)
        time.sleep(ms * 2 / 3 / 1000.0)
    _, spent, cpu_ms = _timed(run)
    return _measured(spent, cpu_ms, f"report in {ms} ms\n")


@app.route("/fail")
@app.route("/fail/<tag>")
def fail(tag=None):
    raise RuntimeError("this endpoint always fails")


@app.route("/status/<int:code>")
@app.route("/status/<int:code>/<tag>")
def status(code, tag=None):
    abort(code)


@app.route("/half/<int:ms>")
def half(ms):
    """`ms` milliseconds, half of it CPU and half waiting (the benchmark's 5 ms endpoint)."""
    burn(ms / 2.0)
    time.sleep(ms / 2000.0)
    return "ok\n"


@app.route("/big/<int:kb>")
@app.route("/big/<int:kb>/<tag>")
def big(kb, tag=None):
    return b"x" * (kb * 1024)


@app.route("/stream/<int:chunks>")
@app.route("/stream/<int:chunks>/<tag>")
def stream(chunks, tag=None):
    def gen():
        for i in range(chunks):
            time.sleep(0.01)
            yield f"chunk {i}\n"
    return Response(gen(), mimetype="text/plain")


@app.route("/bigint")
@app.route("/bigint/<tag>")
def bigint(tag=None):
    """7 ** (7 ** 9): about a minute inside one C call (long_pow) holding the GIL. No Python
    code runs until it returns: no signal handler, no eval-breaker check."""
    x = 7 ** (7 ** 9)  # LINE:bigint
    return f"{x.bit_length()} bits\n"


@app.route("/sum/<int:n>")
@app.route("/sum/<int:n>/<tag>")
def csum(n, tag=None):
    """sum(range(n)): a loop inside one C call holding the GIL that, unlike 7 ** (7 ** 9), never
    checks for signals: a Python signal handler cannot run until it returns."""
    return f"{sum(range(n))}\n"  # LINE:sum


@app.route("/interruptible/<int:ms>")
@app.route("/interruptible/<int:ms>/<tag>")
def interruptible(ms, tag=None):
    """Spin in Python for up to `ms` ms; a TimeoutError raised into it (introspect's
    --interrupt-before) is caught here and answered 504, so a test can tell where it landed:
    any other endpoint it reached would answer 500."""
    t0 = time.monotonic()
    try:
        burn(ms)
    except TimeoutError:
        return Response(f"interrupted after {(time.monotonic() - t0) * 1e3:.0f} ms\n", status=504)
    return "not interrupted\n"


@app.route("/alloc/<int:mb>")
@app.route("/alloc/<int:mb>/<tag>")
def alloc(mb, tag=None):
    """Allocate and touch `mb` MiB (the OOM tests run the worker under a memory limit)."""
    blocks = [b"\x01" * (1 << 20) for _ in range(mb)]  # LINE:alloc
    return f"allocated {len(blocks)} MiB\n"


@app.route("/pid")
def pid():
    return f"{os.getpid()}\n"


# ---- endpoints that spend a known time on one cause (the breakdown suites) ----------------------
# Each reports what it measured itself in X-Spent-Ms (wall time of the part that waits) and
# X-Cpu-Ms (this thread's CPU time over the whole handler), the ground truth for the tests.

_held = threading.Lock()


def _timed(fn):
    t0, c0 = time.monotonic(), time.thread_time()
    out = fn()
    return out, (time.monotonic() - t0) * 1e3, (time.thread_time() - c0) * 1e3


def _measured(spent_ms, cpu_ms, body="done\n"):
    resp = Response(body)
    resp.headers["X-Spent-Ms"] = f"{spent_ms:.3f}"
    resp.headers["X-Cpu-Ms"] = f"{cpu_ms:.3f}"
    return resp


@app.route("/lock/<int:ms>")
@app.route("/lock/<int:ms>/<tag>")
def lock(ms, tag=None):
    """Wait for a threading.Lock another thread holds for `ms` milliseconds."""
    got = threading.Event()

    def holder():
        with _held:
            got.set()
            time.sleep(ms / 1000.0)

    threading.Thread(target=holder, daemon=True).start()
    got.wait()
    c0 = time.thread_time()
    _, spent, _ = _timed(lambda: _held.acquire())
    _held.release()
    return _measured(spent, (time.thread_time() - c0) * 1e3)


def _spin_python(stop):
    while not stop.is_set():
        pass


@app.route("/gil/<int:ms>")
@app.route("/gil/<int:ms>/<tag>")
def gil(ms, tag=None):
    """Do `ms` milliseconds of pure-Python CPU work while another thread spins in Python until
    it is done: the two take turns on the GIL. X-Spent-Ms is the wall time the handler did not
    run (by the thread's own CPU clock): its GIL wait plus any run-queue wait. The clocks start
    before the spinner does: getting the GIL back from it after `start()` is this request's GIL
    wait too."""
    stop = threading.Event()
    spinner = threading.Thread(target=_spin_python, args=(stop,), daemon=True)
    t0, c0 = time.monotonic(), time.thread_time()
    spinner.start()
    while (time.thread_time() - c0) * 1e3 < ms and time.monotonic() - t0 < 10:
        sum(range(200))
    wall = (time.monotonic() - t0) * 1e3
    cpu = (time.thread_time() - c0) * 1e3
    stop.set()
    spinner.join()
    return _measured(wall - cpu, cpu)


_DISK_FILE = os.environ.get("INTROSPECT_DISK_FILE", "")


@app.route("/disk")
@app.route("/disk/<tag>")
def disk(tag=None):
    """Read the whole INTROSPECT_DISK_FILE with O_DIRECT (no page cache) in 4 MiB reads."""
    import mmap

    buf = mmap.mmap(-1, 4 << 20)
    fd = os.open(_DISK_FILE, os.O_RDONLY | os.O_DIRECT)
    c0 = time.thread_time()
    try:
        def read_all():
            off = 0
            while True:
                n = os.preadv(fd, [buf], off)
                if n <= 0:
                    return off
                off += n
        total, wall, cpu = _timed(read_all)
    finally:
        os.close(fd)
    # The time the reads kept the thread off the CPU (the kernel's own work in them is CPU time).
    return _measured(wall - cpu, (time.thread_time() - c0) * 1e3, f"read {total} bytes\n")


@app.route("/mixed")
@app.route("/mixed/<tag>")
def mixed(tag=None):
    """100 ms of sleep, then 100 ms of CPU, then (when a database is configured) 100 ms in it."""
    c0 = time.thread_time()
    time.sleep(0.1)
    burn(100)
    if os.environ.get("INTROSPECT_PG_DSN"):
        with _db().cursor() as cur:
            cur.execute("SELECT pg_sleep(0.1)")
    return _measured(0, (time.thread_time() - c0) * 1e3)


# ---- PostgreSQL (INTROSPECT_PG_DSN) ---------------------------------------------------------------
# INTROSPECT_PG_PERSISTENT=0: a new connection for every request, closed when it ends (what
# Django does by default); otherwise one per thread, kept.
_local = threading.local()
_PERSISTENT = os.environ.get("INTROSPECT_PG_PERSISTENT", "1") != "0"


def _db():
    import psycopg2

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg2.connect(os.environ["INTROSPECT_PG_DSN"])
        conn.autocommit = True
        _local.conn = conn
    return conn


@app.teardown_request
def _close_db(exc):
    conn = getattr(_local, "conn", None)
    if not _PERSISTENT and conn is not None:
        conn.close()
        _local.conn = None


@app.route("/db/sleep/<int:ms>")
@app.route("/db/sleep/<int:ms>/<tag>")
def db_sleep(ms, tag=None):
    """SELECT pg_sleep; the measured part includes connecting when the connection is new."""
    c0, t0 = time.thread_time(), time.monotonic()
    with _db().cursor() as cur:
        cur.execute("SELECT pg_sleep(%s)", (ms / 1000.0,))
    return _measured((time.monotonic() - t0) * 1e3, (time.thread_time() - c0) * 1e3)


def _lock_row(hold_ms):
    """SELECT ... FOR UPDATE on row 1 in a transaction, kept `hold_ms` ms before the commit.
    The measured part includes connecting when the connection is new, and the commit."""
    c0, t0 = time.thread_time(), time.monotonic()
    conn = _db()
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM items WHERE id = 1 FOR UPDATE")
        if hold_ms:
            time.sleep(hold_ms / 1000.0)
        conn.commit()
    finally:
        conn.autocommit = True
    return _measured((time.monotonic() - t0) * 1e3, (time.thread_time() - c0) * 1e3)


@app.route("/db/forupdate")
@app.route("/db/forupdate/<tag>")
def db_forupdate(tag=None):
    """Row 1 locked and released at once: waits when a test holds it from another transaction."""
    return _lock_row(0)


@app.route("/db/hold/<int:ms>")
@app.route("/db/hold/<int:ms>/<tag>")
def db_hold(ms, tag=None):
    """Row 1 held `ms` ms: what /db/forupdate then waits for."""
    return _lock_row(ms)


@app.route("/db/orders/<int:n>")
@app.route("/db/orders/<int:n>/<tag>")
def db_orders(n, tag=None):
    """The N+1 pattern on PostgreSQL: the last n orders, then each one's customer in a query of
    its own (1 + n queries), as an ORM's lazy loading does. X-Queries says how many it ran."""
    queries = 0
    with _db().cursor() as cur:
        cur.execute("SELECT id, customer_id, total FROM orders ORDER BY id DESC LIMIT %s", (n,))
        queries += 1
        lines = []
        for order_id, customer_id, total in cur.fetchall():
            cur.execute("SELECT name FROM customers WHERE id = %s", (customer_id,))
            queries += 1
            lines.append(f"order {order_id}: {cur.fetchone()[0]} {total}\n")
    return _counted("".join(lines), queries)


@app.route("/db/orders-joined/<int:n>")
@app.route("/db/orders-joined/<int:n>/<tag>")
def db_orders_joined(n, tag=None):
    """The same page as /db/orders in one query, with a JOIN."""
    with _db().cursor() as cur:
        cur.execute(
            "SELECT o.id, c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id DESC LIMIT %s",
            (n,),
        )
        lines = [f"order {order_id}: {name} {total}\n" for order_id, name, total in cur.fetchall()]
    return _counted("".join(lines), 1)


# ---- known call chains (the stack suites) ---------------------------------------------------------
import chains  # noqa: E402

_service = chains.Service()


@app.route("/chain/sleep/<int:ms>")
@app.route("/chain/sleep/<int:ms>/<tag>")
def chain_sleep(ms, tag=None):
    _service.sleepy(ms)  # LINE:view_sleep
    return "slept\n"


@app.route("/chain/cpu/<int:ms>")
@app.route("/chain/cpu/<int:ms>/<tag>")
def chain_cpu(ms, tag=None):
    _service.busy(ms)  # LINE:view_cpu
    return "burned\n"


@app.route("/chain/regex/<int:n>")
@app.route("/chain/regex/<int:n>/<tag>")
def chain_regex(n, tag=None):
    _service.matcher(n)  # LINE:view_regex
    return "matched\n"


@app.route("/chain/db/<int:ms>")
@app.route("/chain/db/<int:ms>/<tag>")
def chain_db(ms, tag=None):
    _service.query(_db(), ms)  # LINE:view_db
    return "queried\n"


@app.route("/chain/burnsleep/<int:ms>")
@app.route("/chain/burnsleep/<int:ms>/<tag>")
def chain_burnsleep(ms, tag=None):
    _service.burn_then_sleep(ms)  # LINE:view_burnsleep
    return "done\n"


# ---- MySQL / MariaDB via PyMySQL ----
# INTROSPECT_MYSQL_HOST, _PORT, _USER, _PASSWORD (default empty) and _DB (tests/src/mariadb.rs
# sets them). A new connection for every request, opened in the view and closed at its end (as
# with INTROSPECT_PG_PERSISTENT=0), on PyMySQL's defaults: autocommit off, parameters interpolated
# on the client, text protocol (COM_QUERY). Every view answers with X-Queries, the number of
# cursor.execute calls it made. PyMySQL needs Python 3.9+ (not installed in the py37/py38 venvs).


def _mysql():
    import pymysql

    return pymysql.connect(
        host=os.environ.get("INTROSPECT_MYSQL_HOST", "127.0.0.1"),
        port=int(os.environ.get("INTROSPECT_MYSQL_PORT", "3306")),
        user=os.environ["INTROSPECT_MYSQL_USER"],
        password=os.environ.get("INTROSPECT_MYSQL_PASSWORD", ""),
        database=os.environ["INTROSPECT_MYSQL_DB"],
    )


def _counted(body, queries, status=200):
    resp = Response(body, status=status, mimetype="text/plain")
    resp.headers["X-Queries"] = str(queries)
    return resp


@app.route("/mysql/books/n1")
@app.route("/mysql/books/n1/<tag>")
def mysql_books_n1(tag=None):
    """The N+1 pattern: the books, then each book's author in a query of its own (1 + 20)."""
    queries = 0
    conn = _mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, title, author_id FROM books ORDER BY id")
            queries += 1
            books = cur.fetchall()
            lines = []
            for _id, title, author_id in books:
                cur.execute("SELECT name FROM authors WHERE id = %s", (author_id,))
                queries += 1
                (name,) = cur.fetchone()
                lines.append(f"{title} by {name}\n")
    finally:
        conn.close()
    return _counted("".join(lines), queries)


@app.route("/mysql/books/join")
@app.route("/mysql/books/join/<tag>")
def mysql_books_join(tag=None):
    """The same data as /mysql/books/n1 in one JOIN."""
    queries = 0
    conn = _mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT b.title, a.name FROM books b JOIN authors a ON a.id = b.author_id ORDER BY b.id")
            queries += 1
            lines = [f"{title} by {name}\n" for title, name in cur.fetchall()]
    finally:
        conn.close()
    return _counted("".join(lines), queries)


@app.route("/mysql/dup-key")
@app.route("/mysql/dup-key/<tag>")
def mysql_dup_key(tag=None):
    """The same row inserted twice: the second INSERT fails with 1062 (Duplicate entry), answered
    409 with the code in X-Error-Code. Both run in one transaction that closing the connection
    rolls back (autocommit is off), so the endpoint can be called again."""
    import pymysql

    queries = 0
    conn = _mysql()
    try:
        with conn.cursor() as cur:
            for _ in range(2):
                queries += 1
                try:
                    cur.execute("INSERT INTO items (id, v) VALUES (1, 'x')")
                except pymysql.err.IntegrityError as e:
                    resp = _counted(f"{e.args[1]}\n", queries, status=409)
                    resp.headers["X-Error-Code"] = str(e.args[0])
                    return resp
    finally:
        conn.close()
    return _counted("no error\n", queries, status=500)


@app.route("/mysql/sleep/<int:ms>")
@app.route("/mysql/sleep/<int:ms>/<tag>")
def mysql_sleep(ms, tag=None):
    """SELECT SLEEP(ms / 1000); the measured part includes connecting and closing."""
    c0, t0 = time.thread_time(), time.monotonic()
    conn = _mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(%s)", (ms / 1000.0,))
            cur.fetchall()
    finally:
        conn.close()
    resp = _measured((time.monotonic() - t0) * 1e3, (time.thread_time() - c0) * 1e3, f"slept {ms} ms in MariaDB\n")
    resp.headers["X-Queries"] = "1"
    return resp
