"""A bare WSGI app (no framework) for interpreters the Flask app does not run on."""
import time


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/sleep/"):
        time.sleep(int(path.split("/")[2]) / 1000.0)
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
