"""WSGI entry point: `gunicorn djangoapp.wsgi:application` from tests/apps."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")

application = get_wsgi_application()
