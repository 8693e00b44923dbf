"""A Flask app whose endpoints do known things, for introspect's tests and demo.

Every response carries X-Tid (the native id of the thread that served it) so tests can check
thread attribution against ground truth. A trailing /<tag> segment on any endpoint is ignored by
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
    time.sleep(ms / 1000.0)
    return f"slept {ms} ms\n"


@app.route("/cpu/<int:ms>")
@app.route("/cpu/<int:ms>/<tag>")
def cpu(ms, tag=None):
    burn(ms)
    return f"burned {ms} ms\n"


@app.route("/fail")
@app.route("/fail/<tag>")
def fail(tag=None):
    raise RuntimeError("this endpoint always fails")


@app.route("/status/<int:code>")
@app.route("/status/<int:code>/<tag>")
def status(code, tag=None):
    abort(code)


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


@app.route("/pid")
def pid():
    return f"{os.getpid()}\n"
