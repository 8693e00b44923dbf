"""Settings of a plain Django project, as `django-admin startproject` writes them, for
introspect's tests: only the database differs, taken from the environment.

INTROSPECT_PG_DSN: a libpq connection string ("host=... port=... user=... dbname=...").
INTROSPECT_CONN_MAX_AGE: seconds a connection is kept between requests; unset means Django's
default, 0: a new connection for every request, closed when the request ends.
INTROSPECT_PG_DRIVER: "psycopg2" makes Django use psycopg2 although psycopg 3 is installed
(Django prefers psycopg 3 when it can import it).
INTROSPECT_PG_SERVER_BINDING: "1" binds parameters on the server (psycopg 3's plain cursor) and
prepares every statement at once (prepare_threshold 0).
"""
import os
import sys
from pathlib import Path

if os.environ.get("INTROSPECT_PG_DRIVER") == "psycopg2":
    # An import of a module set to None raises ImportError: Django falls back to psycopg2.
    sys.modules["psycopg"] = None

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure-introspect-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "djangoapp.library",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "djangoapp.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "djangoapp.wsgi.application"


def _database():
    dsn = os.environ.get("INTROSPECT_PG_DSN")
    if not dsn:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    parts = dict(p.split("=", 1) for p in dsn.split())
    db = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.get("dbname", "postgres"),
        "USER": parts.get("user", "postgres"),
        "HOST": parts.get("host", ""),
        "PORT": parts.get("port", ""),
    }
    if "INTROSPECT_CONN_MAX_AGE" in os.environ:
        db["CONN_MAX_AGE"] = int(os.environ["INTROSPECT_CONN_MAX_AGE"])
    if os.environ.get("INTROSPECT_PG_SERVER_BINDING") == "1":
        db["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 0}
    return db


DATABASES = {"default": _database()}

AUTH_PASSWORD_VALIDATORS = []

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
