"""Drop-in replacements for other pools' APIs, backed by poolkeeper's pools.

* :mod:`poolkeeper.compat.psycopg_pool`: ``ConnectionPool`` and
  ``AsyncConnectionPool`` with psycopg_pool's arguments, methods and semantics.
"""
