"""One model, on a table the tests create (``POOLKEEPER_DJANGO_TABLE``)."""

from __future__ import annotations

import os

from django.db import models


class Note(models.Model):
    """A row a request writes; the tests look for it on the server."""

    text = models.TextField()

    class Meta:
        managed = False
        db_table = os.environ.get("POOLKEEPER_DJANGO_TABLE", "poolkeeper_django_note")
