"""The WSGI entry point: ``gunicorn --preload examples.django_app.wsgi:application``.

With ``POOLKEEPER_EXAMPLE_WARM=1`` the module queries the database at import, as many
apps do at start-up (a system check, a cache warm-up), and keeps the connection: with
``--preload`` that happens in gunicorn's master before it forks, which is what trips a
pool opened before fork. The master's backend pid goes to ``POOLKEEPER_EXAMPLE_PIDFILE``.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

from django.core.wsgi import get_wsgi_application
from django.db import connection

application = get_wsgi_application()

if os.environ.get("POOLKEEPER_EXAMPLE_WARM") == "1":
    with connection.cursor() as _cur:
        _cur.execute("SELECT pg_backend_pid()")
        _row = _cur.fetchone()
    pidfile = os.environ.get("POOLKEEPER_EXAMPLE_PIDFILE")
    if pidfile and _row is not None:
        with open(pidfile, "w", encoding="ascii") as out:
            out.write(str(_row[0]))
