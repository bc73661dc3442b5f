"""Views that show which worker and backend served a request, and Django's
transaction APIs at work (``ATOMIC_REQUESTS`` is on: each view runs in a transaction)."""

from __future__ import annotations

import os

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from examples.django_app.models import Note


def _state() -> dict[str, object]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pg_backend_pid(), current_setting('search_path'), current_setting('TimeZone')"
        )
        backend, search_path, timezone = cur.fetchone()
    return {
        "worker": os.getpid(),
        "backend": backend,
        "search_path": search_path,
        "timezone": timezone,
    }


def session(request: HttpRequest) -> JsonResponse:
    """Which worker and backend served this request, and the session's settings."""
    return JsonResponse(_state())


@transaction.non_atomic_requests
def dirty(request: HttpRequest) -> JsonResponse:
    """Change the session (search_path, time zone) through a raw cursor, outside any
    transaction so the change outlives the statement."""
    with connection.cursor() as cur:
        cur.execute("SET search_path TO pg_catalog")
        cur.execute("SET TIME ZONE 'Pacific/Chatham'")
    return JsonResponse(_state())


def fail(request: HttpRequest, tag: str) -> HttpResponse:
    """Write a row, ask for a callback on commit, then fail: neither may remain."""
    Note.objects.create(text=f"fail-{tag}")
    transaction.on_commit(lambda: Note.objects.create(text=f"fail-callback-{tag}"))
    raise RuntimeError("this view fails on purpose")


def nested(request: HttpRequest, tag: str) -> JsonResponse:
    """Savepoints: an inner block that fails is undone alone; the callback runs after
    the request's transaction commits, outside it."""
    Note.objects.create(text=f"outer-{tag}")
    try:
        with transaction.atomic():
            Note.objects.create(text=f"inner-undone-{tag}")
            raise ValueError("undo the inner block only")
    except ValueError:
        pass
    with transaction.atomic():
        Note.objects.create(text=f"inner-kept-{tag}")

    def after_commit() -> None:
        Note.objects.create(text=f"callback-{tag}-in-atomic-{connection.in_atomic_block}")

    transaction.on_commit(after_commit)
    return JsonResponse({"in_atomic": connection.in_atomic_block})
