"""Known call chains for the stack suites: view -> service -> helper -> the slow part.

The line numbers of this file are part of the tests' expectations (tests/suites/stacks.rs reads
them from the markers at the end of the lines): change lines only together with the markers.
"""
import re
import time

_EVIL = re.compile(r"(a+)+$")


def helper_sleep(ms):
    time.sleep(ms / 1000.0)  # LINE:helper_sleep


def helper_cpu(ms):
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:  # LINE:helper_cpu
        x += 1
    return x


def helper_regex(n):
    # Catastrophic backtracking: the whole match runs inside C (_sre) holding the GIL.
    return _EVIL.match("a" * n + "b")  # LINE:helper_regex


def helper_db(conn, ms):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_sleep(%s)", (ms / 1000.0,))  # LINE:helper_db


class Service:
    def sleepy(self, ms):
        return helper_sleep(ms)  # LINE:service_sleepy

    def busy(self, ms):
        return helper_cpu(ms)  # LINE:service_busy

    def matcher(self, n):
        return helper_regex(n)  # LINE:service_matcher

    def query(self, conn, ms):
        return helper_db(conn, ms)  # LINE:service_query

    def burn_then_sleep(self, ms):
        helper_cpu(ms)  # LINE:service_burn
        helper_sleep(ms)  # LINE:service_then_sleep
