"""Settings of the example Django project served on poolkeeper.

The database comes from ``DATABASE_URL`` (a libpq URL or key=value string); the pool's
settings sit in ``OPTIONS["pool"]``. ``CONN_MAX_AGE`` stays 0: Django hands the
connection back to the pool at the end of every request.
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"))
_options = {k: v for k, v in _db.items() if k not in {"dbname", "user", "password", "host", "port"}}

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS = ["examples.django_app"]
MIDDLEWARE: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "poolkeeper.integrations.django",
        "NAME": _db.get("dbname", "postgres"),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
        "ATOMIC_REQUESTS": True,
        "CONN_MAX_AGE": 0,
        "OPTIONS": {**_options, "pool": {"min_size": 1, "max_size": 4, "timeout": 10}},
    }
}
