"""A griffe extension for the docs site: Sphinx roles in docstrings shown as code.

The docstrings say ``:class:`~poolkeeper.Pool``` and ``:meth:`wait``` (which IDEs and
``help()`` show well); the site renders Markdown, where a role would appear verbatim.
Each role becomes a code span of its target (the last dotted part when it starts ``~``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles in every docstring as Markdown code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for each module, class, function and attribute griffe loads."""
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
