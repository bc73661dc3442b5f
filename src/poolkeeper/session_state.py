"""Which SQL can leave session state behind for the next borrower, and how to clear it.

``reset="auto"`` must not cost a round trip per borrow (asyncpg's pool pays one on
every release and loses half its throughput for it), so the drivers hand every
statement they send to :func:`touches_session`, which gives one of three verdicts;
a connection carries the highest verdict of the statements sent since its last
return:

- ``True``, **reset**: the statement may change state that outlives its
  transaction (``SET``, ``LISTEN``, ``DO``, ``CALL``, a temporary table, a call to
  ``set_config``, …). The return sends :data:`RESET_SQL`.
- :data:`CHECK`: the statement leaves nothing behind itself, but may run user code
  the lexer cannot see into: a function it calls, and as much a trigger, a column
  default, a view, a rule, a row security policy, or an operator, a cast or a
  function named like a built-in that ``search_path`` resolves to a user's. On
  return the settings the server reports (:data:`REPORTED_PARAMETERS`) are compared
  with the connection's baseline, in memory, and only a difference means a reset.
- ``False``, **clean**: the statement provably runs no user code and leaves
  nothing behind: transaction control, ``SHOW``, ``FETCH``/``MOVE``/``CLOSE``
  (but ``CLOSE ALL``: a reset), ``NOTIFY`` (:data:`INERT_FIRST`), ``SET LOCAL`` (but of
  ``statement_timeout``: a reset, so the no-answer guard stands aside), and a ``SELECT``
  of literals, commas and aliases only (``SELECT 1``). A clean return costs a
  flag read.

The verdict comes from a small lexer, not a text search: it skips whitespace and
comments (``--`` and nested ``/* */``), understands quoted identifiers, string
literals (``'…'``, ``E'…'``, ``$tag$…$tag$``), splits the text into statements on
``;`` outside those, and judges each statement by its first token and by its
function-call tokens (a name followed by ``(``, comments allowed in between).
A statement whose first token is not on :data:`INERT_FIRST` or
:data:`HARMLESS_FIRST` — ``SET``, ``DO``, ``CALL``, ``EXECUTE``, ``DECLARE … WITH HOLD``,
an unknown command — is a reset, as is ``CLOSE ALL`` and text that does not lex:
unknown means reset. A false positive costs one ``DISCARD ALL`` (or, for a needless check, a
microsecond or two), a false negative would leak state.

What the server does not report stays out of reach: a function (or a trigger…)
that changes an unreported setting, takes a session advisory lock or creates a
temporary table leaves it behind unseen. docs/design.md states the guarantee and
this one gap, which ``reset="always"`` closes.
"""

from __future__ import annotations

import re

__all__ = [
    "CHECK",
    "HARMLESS_FIRST",
    "INERT_FIRST",
    "KNOWN_VERDICTS",
    "REPORTED_PARAMETERS",
    "RESET_SQL",
    "SESSION_FUNCTIONS",
    "touches_session",
]

#: DISCARD ALL = CLOSE ALL, SET SESSION AUTHORIZATION DEFAULT, RESET ALL, DEALLOCATE ALL,
#: UNLISTEN *, pg_advisory_unlock_all(), DISCARD PLANS/TEMP/SEQUENCES. The drivers then
#: forget the statements they had prepared (psycopg, asyncpg), which the server dropped.
RESET_SQL = "DISCARD ALL"

#: Settings the server reports to the client on its own (ParameterStatus) when they
#: change and that a session can change, as of PostgreSQL 18. Compared on return
#: against the values recorded when the connection was opened: a difference means a
#: reset, whatever changed it (a function's ``set_config()``, say). A name a server
#: does not report reads as missing on both sides, so older servers compare fewer:
#: ``scram_iterations`` is reported from 16, ``search_path`` from 18. Reported but
#: not compared, since no session changes them: ``server_version``,
#: ``server_encoding``, ``integer_datetimes``, ``in_hot_standby``.
REPORTED_PARAMETERS = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "IntervalStyle",
    "is_superuser",
    "scram_iterations",
    "search_path",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
)

#: First words of statements that run no user code and leave nothing behind: the
#: only ones (with a ``SELECT`` of literals, see :func:`touches_session`) judged clean.
#: A ``COMMIT`` or ``SET CONSTRAINTS`` fires deferred triggers, but only ones an
#: earlier statement of the same borrow queued, and that statement was checked; a
#: ``FETCH`` runs the rest of a cursor's query, but a cursor outlives its transaction
#: only when ``DECLARE … WITH HOLD`` made it (a reset; without HOLD, a ``DECLARE`` is
#: judged by its query).
#: ``UNLISTEN`` is not here: it leaves nothing behind, but can undo a ``LISTEN`` that
#: ``configure=`` made, which only a reset (and ``configure=`` again) puts back. For
#: the same reason ``CLOSE ALL``, which closes the ``WITH HOLD`` cursors ``configure=``
#: declared, is a reset; ``CLOSE`` of one named cursor is clean.
INERT_FIRST = frozenset(
    {
        *("abort", "begin", "close", "commit", "end", "fetch", "move", "notify"),
        *("release", "rollback", "savepoint", "show", "start"),
    }
)

#: First words of statements that leave nothing behind themselves once their
#: transaction ends (the pool rolls back an open one), but may run user code: a
#: trigger, a column default, a view, a rule, a row security policy, an operator or
#: a cast found first on ``search_path``, an event trigger on DDL, any function.
#: Their verdict is :data:`CHECK`, or a reset when they call a function of
#: :data:`SESSION_FUNCTIONS` or create a temporary object (``CREATE TEMP``,
#: ``SELECT … INTO TEMP``). Any other first word means a reset; ``explain`` is judged
#: by the statement it explains.
HARMLESS_FIRST = frozenset(
    {
        *("alter", "analyse", "analyze", "checkpoint", "cluster", "comment", "copy"),
        *("create", "delete", "drop", "grant", "import", "insert", "lock", "merge"),
        *("reassign", "refresh", "reindex", "revoke", "security", "select", "table"),
        *("truncate", "update", "vacuum", "values", "with"),
    }
)

#: Functions whose call changes session state that DISCARD ALL clears: settings and
#: session advisory locks (the ``_xact_`` ones end with the transaction). Matched by
#: name, qualified or not, quoted or not. (``setseed()`` and dblink's connections are
#: session state too, but DISCARD ALL does not clear them: see docs/design.md.)
SESSION_FUNCTIONS = frozenset(
    {
        "set_config",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    }
)

#: The verdict for a statement that may run user code: truthy (not clean), but not
#: ``True`` (reset): compare the reported settings on return, and reset only if one
#: changed.
CHECK = 2

# ``SET LOCAL …``, ``SET TRANSACTION …`` and ``SET CONSTRAINTS …`` end with their
# transaction; every other SET outlives it.
_TRANSACTION_SET = frozenset({"local", "transaction", "constraints"})
# A TEMP/TEMPORARY keyword after one of these creates a temporary object.
_BEFORE_TEMP = frozenset({"create", "local", "global", "into", "replace"})
_READ_FIRST = frozenset({"select", "(", "table", "values"})
_EXPLAIN_OPTIONS = frozenset({"analyze", "analyse", "verbose"})
# The words a SELECT of literals may hold besides aliases: constants, not names.
_CONSTANT_WORDS = frozenset({"null", "true", "false"})
# An operator token a SELECT of literals may hold: digits and the commas between
# items. Any other operator character (``+``, ``-``, ``::``, ``||``) names an
# operator or a cast, which search_path can resolve to a user's.
_DIGITS_AND_COMMAS = re.compile(r"[0-9,]+")

# The cheap test: one statement (no ';' but a last character), a first word found
# by a plain match, no '(' (so no function call) and none of _MARKERS anywhere in
# the lowercased text (not even in a string or comment): a temporary object, an
# identifier spelled with escapes, or a backslash, which may move a string's end
# (see _finish_str). Text that passes is clean if its first word is inert or it is
# a SELECT of literals (_LITERALS_ONLY), CHECK if its first word is on
# HARMLESS_FIRST; only the rest is lexed. Leading whitespace and comments (a tag an
# ORM or SQL commenter put first) are skipped (PostgreSQL ends a "--" comment at a
# carriage return too); a comment with another "/*" inside (nested) is left to the
# lexer.
_FIRST_WORD = re.compile(
    r"(?:[ \t\n\r\f\v]+|--[^\n\r]*[\n\r]|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/)*"
    r"([A-Za-z_][A-Za-z0-9_]*)(?![A-Za-z0-9_$\x80-\U0010ffff])"
)
_MARKERS = re.compile(r'temp|u&"|pg_settings|\\')
# What follows SELECT in a statement of literals (``SELECT 1``, the usual ping, with
# a comment an SQL commenter appended, say): numbers, strings without a backslash
# (whose meaning depends on standard_conforming_strings), NULL, TRUE, FALSE, commas,
# AS aliases, whitespace and comments that do not nest, and a ';' at the end. The
# lexer decides the same (see _literals_only); when this does not match, the
# statement counts as one that may run user code, without lexing it.
_WS = r"[ \t\n\r\f\v]"
_COMMENT = r"(?:--[^\n\r]*(?![^\n\r])|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/)"
_NOT_IN_WORD = r"[a-z0-9_$\x80-\U0010ffff]"
# Every alternative matches in one way only (a character of whitespace at a time,
# strings, names and numbers as long as they go), so a text that fails costs one
# pass, not a search through the ways to split it.
_LITERALS_ONLY = re.compile(
    rf"""(?:{_WS}|{_COMMENT}|,
      | (?<!{_NOT_IN_WORD})(?:[0-9]+|null|true|false)(?!{_NOT_IN_WORD})
      | '[^'\\]*(?:''[^'\\]*)*'(?!')
      | (?<!{_NOT_IN_WORD})as(?:{_WS}|{_COMMENT})+
        (?:[a-z_\x80-\U0010ffff]{_NOT_IN_WORD}*(?!{_NOT_IN_WORD})|"[^"]*(?:""[^"]*)*"(?!"))
    )*(?:;{_WS}*)?""",
    re.VERBOSE,
)

# One token per match, with the whitespace before it; comments, E-strings and dollar
# quotes are finished by hand. Words come early: they are most of any statement.
_TOKEN = re.compile(
    r"""
    [ \t\n\r\f\v]*
    (?:
      (?P<estr>[eE]')
    | (?P<uesc>[uU]&["'])
    | (?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)
    | (?P<op>[^A-Za-z_\x80-\U0010ffff'"$/\-;(). \t\n\r\f\v]+)
    | (?P<line>--[^\n\r]*)
    | (?P<block>/\*)
    | (?P<str>'[^']*(?:''[^']*)*')
    | (?P<qid>"[^"]*(?:""[^"]*)*")
    | (?P<dollar>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$)
    | (?P<punct>.)
    | (?P<space>\Z)
    )
    """,
    re.VERBOSE | re.DOTALL,
)
_ESTRING_BODY = re.compile(r"[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.DOTALL)
_COMMENT_MARK = re.compile(r"/\*|\*/")


class _Unlexable(Exception):
    """Text the lexer cannot split safely (an unterminated quote or comment, say)."""


#: Verdicts of :func:`touches_session` by query text. Applications send the same few
#: hundred statements over and over, so the drivers look a query up here (one hashed
#: dict read) before lexing it. Bounded: cleared when full, so SQL built with literals
#: in it cannot grow it without limit.
KNOWN_VERDICTS: dict[str | bytes, int] = {}
_KNOWN_MAX = 4096


def touches_session(query: object) -> int:
    """Whether ``query`` may change state that outlives its transaction: ``False``
    (it cannot: it runs no user code and leaves nothing behind), ``True`` (it may:
    reset on return) or :data:`CHECK` (it may run user code, which the lexer cannot
    see into: compare the reported settings on return).

    ``str`` and ``bytes`` are judged (and the verdict remembered in
    :data:`KNOWN_VERDICTS`); anything else (a composed ``sql.SQL`` object the driver
    did not render, say) is assumed to touch the session. A query seen before costs
    one dict lookup; a new one a lowercase copy, an anchored match and a search for
    a few markers, or, when those cannot decide, one pass of the lexer.
    """
    try:
        # Hot drivers look here themselves before calling; the others get it here.
        return KNOWN_VERDICTS[query]  # type: ignore[index]
    except (KeyError, TypeError):  # unseen, or unhashable (bytearray, sql.Composed)
        pass
    if isinstance(query, str):
        text = query
    elif isinstance(query, (bytes, bytearray, memoryview)):
        # latin-1 never fails and keeps every ASCII byte where it was; PostgreSQL
        # treats any byte above 0x7f as part of an identifier, as the lexer does.
        text = bytes(query).decode("latin-1")
    else:
        return True
    verdict = _judge(text)
    if isinstance(query, (str, bytes)):
        if len(KNOWN_VERDICTS) >= _KNOWN_MAX:
            KNOWN_VERDICTS.clear()
        KNOWN_VERDICTS[query] = verdict
    return verdict


def _judge(text: str) -> int:
    lowered = text.lower()
    first = _FIRST_WORD.match(lowered)
    if first is not None and "(" not in lowered:
        word = first.group(1)
        semicolon = lowered.find(";")
        # One statement, or one with a ';' at its very end (as ORMs and tools write).
        one = semicolon < 0 or (semicolon == len(lowered.rstrip()) - 1)
        if one and _MARKERS.search(lowered) is None:
            if word in INERT_FIRST and word != "close":  # CLOSE ALL: see _statement_verdict
                return False
            if word == "select" and _LITERALS_ONLY.fullmatch(lowered, first.end()):
                return False
            if word in HARMLESS_FIRST:
                return CHECK
    try:
        verdict: int = False
        for tokens in _statements(text):
            one_verdict = _statement_verdict(tokens)
            if one_verdict is True:
                return True
            verdict = verdict or one_verdict
        return verdict
    except _Unlexable:
        return True


Token = tuple[str, str]
_LITERAL: Token = ("lit", "")
# A literal that may name the temporary schema: it says "temp", or spells itself with
# escapes the lexer does not decode.
_TEMP_LITERAL: Token = ("lit", "temp")


def _statements(text: str) -> list[list[Token]]:
    """``text`` as statements, each a list of (kind, lowercased value) tokens.

    Kinds: ``word`` (keyword or unquoted identifier), ``qid`` (quoted identifier,
    without its quotes), ``lit`` (a string of any kind), ``(``, ``)``, ``.`` and
    ``op`` (a run of any other characters, digits included, as written). Whitespace
    and comments are dropped.
    """
    statements: list[list[Token]] = []
    current: list[Token] = []
    pos, end = 0, len(text)
    match = _TOKEN.match
    while pos < end:
        token = match(text, pos)
        assert token is not None  # the last alternatives match anything, or the end
        kind = token.lastgroup or "space"
        pos = token.end()
        if kind == "word":
            current.append(("word", token.group(kind).lower()))
        elif kind == "op":
            current.append(("op", token.group(kind)))
        elif kind == "punct" and token.group(kind) == ";":
            statements.append(current)
            current = []
        elif kind not in ("space", "line"):
            pos = _FINISH[kind](text, token, current)
    statements.append(current)
    return statements


def _finish_block(text: str, token: re.Match[str], current: list[Token]) -> int:
    """Skip a ``/* … */`` comment, nested ones included."""
    depth, pos = 1, token.end()
    while depth:
        mark = _COMMENT_MARK.search(text, pos)
        if mark is None:
            raise _Unlexable
        depth += 1 if mark.group() == "/*" else -1
        pos = mark.end()
    return pos


def _finish_qid(text: str, token: re.Match[str], current: list[Token]) -> int:
    current.append(("qid", token.group("qid")[1:-1].replace('""', '"').lower()))
    return token.end()


def _finish_str(text: str, token: re.Match[str], current: list[Token]) -> int:
    if "\\" in token.group("str") and _estring_end(text, token.start("str") + 1) != token.end():
        # With standard_conforming_strings off this literal would end elsewhere: the
        # split depends on a setting, so do not trust it.
        raise _Unlexable
    current.append(_literal(token.group("str")))
    return token.end()


def _literal(body: str) -> Token:
    return _TEMP_LITERAL if "temp" in body.lower() or "\\" in body else _LITERAL


def _finish_estr(text: str, token: re.Match[str], current: list[Token]) -> int:
    end = _estring_end(text, token.end())
    current.append(_literal(text[token.end() : end]))
    return end


def _finish_dollar(text: str, token: re.Match[str], current: list[Token]) -> int:
    tag = token.group("dollar")
    close = text.find(tag, token.end())
    if close < 0:
        raise _Unlexable
    current.append(_literal(text[token.end() : close]))
    return close + len(tag)


def _finish_uesc(text: str, token: re.Match[str], current: list[Token]) -> int:
    # U&"\0073et_config": an identifier spelled with escapes; not decoded.
    raise _Unlexable


def _finish_punct(text: str, token: re.Match[str], current: list[Token]) -> int:
    value = token.group("punct")
    if value in "'\"":
        raise _Unlexable  # an unterminated quote
    current.append((value, value) if value in "()." else ("op", value))
    return token.end()


_FINISH = {
    "block": _finish_block,
    "qid": _finish_qid,
    "str": _finish_str,
    "estr": _finish_estr,
    "dollar": _finish_dollar,
    "uesc": _finish_uesc,
    "punct": _finish_punct,
}


def _estring_end(text: str, pos: int) -> int:
    """The position after an ``E'…'`` literal whose body starts at ``pos``."""
    body = _ESTRING_BODY.match(text, pos)
    if body is None:
        raise _Unlexable
    return body.end()


def _statement_verdict(tokens: list[Token]) -> int:
    if not tokens:
        return False  # an empty statement: nothing to run
    start = _first_token(tokens)
    if start < 0:
        return True
    kind, first = tokens[start]
    if kind == "word":
        if first in INERT_FIRST:
            # CLOSE ALL also closes the WITH HOLD cursors configure= declared, which
            # only a reset (and configure= again) puts back.
            return first == "close" and tokens[start + 1 : start + 2] == [("word", "all")]
        if first == "set":
            # SET LOCAL, SET TRANSACTION, SET CONSTRAINTS (see _first_token): no
            # function call is possible, only a pg_temp name to catch. SET LOCAL
            # statement_timeout counts as a reset, which exempts the session from
            # the drivers' no-answer guard: a statement may now rightly run past it.
            if ("word", "statement_timeout") in tokens or ("qid", "statement_timeout") in tokens:
                return True
            return _calls_verdict(tokens, start) is True
        if first == "select" and _literals_only(tokens, start + 1):
            return False
    return _calls_verdict(tokens, start)


def _literals_only(tokens: list[Token], index: int) -> bool:
    """Whether ``tokens[index:]``, what follows a SELECT, are only literals (numbers,
    strings, NULL, TRUE, FALSE), commas and ``AS`` aliases: a statement that runs no
    user code. A number with a sign, a point or an exponent, a cast and an operator
    are not: search_path may resolve an operator or a type to a user's."""
    last = len(tokens)
    while index < last:
        kind, value = tokens[index]
        if (
            kind == "lit"
            or (kind == "word" and value in _CONSTANT_WORDS)
            or (kind == "op" and _DIGITS_AND_COMMAS.fullmatch(value))
        ):
            index += 1
        elif (
            kind == "word"
            and value == "as"
            and index + 1 < last
            and tokens[index + 1][0] in ("word", "qid")
        ):
            index += 2
        else:
            return False
    return True


def _first_token(tokens: list[Token]) -> int:
    """Where the statement's own command starts (past EXPLAIN and its options), or
    -1 when that command can leave session state behind."""
    start = 0
    kind, first = tokens[0]
    if kind == "word" and first == "explain":
        start = _explained(tokens)
        if start >= len(tokens):
            return -1
        kind, first = tokens[start]
    if kind == "word" and first == "declare":
        start = _declared(tokens, start)
        if start >= len(tokens):
            return -1
        kind, first = tokens[start]
    if kind == "(" or (kind == "word" and (first in HARMLESS_FIRST or first in INERT_FIRST)):
        return start  # (SELECT …) UNION …, or a command that leaves nothing behind
    if kind == "word" and first == "set" and start + 1 < len(tokens):
        # SET LOCAL search_path = 'pg_temp' makes the transaction's plain CREATE TABLE
        # a temporary table, which outlives the transaction.
        local = tokens[start + 1][1] in _TRANSACTION_SET and _TEMP_LITERAL not in tokens
        return start if local else -1
    return -1


def _calls_verdict(tokens: list[Token], start: int) -> int:
    """True for a temporary object, a write to pg_settings or a call to a session
    function; else CHECK: the statement may run user code."""
    # An UPDATE of pg_settings (a WITH may hold one) is a SET; reading it is not.
    writes = tokens[start][1] not in _READ_FIRST
    context = ""  # the word before the current name, qualifiers (schema.) skipped
    last = len(tokens) - 1
    for index in range(start, last + 1):
        kind, value = tokens[index]
        if kind not in ("word", "qid"):
            if kind != ".":
                context = ""
            continue
        following = tokens[index + 1][0] if index < last else ""
        if (
            value.startswith("pg_temp")
            or (value == "pg_settings" and writes)
            or (kind == "word" and value in ("temp", "temporary") and context in _BEFORE_TEMP)
        ):
            return True
        if following == "(" and value in SESSION_FUNCTIONS:
            return True
        if following != ".":  # not a qualifier: the next name's context is this word
            context = value if kind == "word" else ""
    return CHECK


# DECLARE name [BINARY] [ASENSITIVE | INSENSITIVE] [[NO] SCROLL] CURSOR
# [{WITH | WITHOUT} HOLD] FOR query
_CURSOR_OPTIONS = frozenset(
    {"binary", "asensitive", "insensitive", "no", "scroll", "cursor", "without", "hold"}
)


def _declared(tokens: list[Token], start: int) -> int:
    """Index of the query a DECLARE at ``tokens[start]`` runs, or ``len(tokens)`` when
    the cursor is WITH HOLD (it outlives its transaction) or the text is not a
    DECLARE the lexer knows. A cursor without HOLD ends with its transaction (it
    cannot even be declared outside one), so only its query is left to judge."""
    index, last = start + 2, len(tokens)  # past DECLARE and the cursor's name
    while index < last:
        kind, value = tokens[index]
        if kind == "word" and value == "for":
            return index + 1
        if kind != "word" or value not in _CURSOR_OPTIONS:
            return last  # WITH (HOLD), or anything unknown
        index += 1
    return last


def _explained(tokens: list[Token]) -> int:
    """Index of the first token of the statement an EXPLAIN at ``tokens[0]`` runs."""
    index, depth = 1, 0
    while index < len(tokens):
        kind, value = tokens[index]
        if kind == "(":
            depth += 1
        elif kind == ")":
            depth -= 1
        elif depth == 0 and not (kind == "word" and value in _EXPLAIN_OPTIONS):
            return index
        index += 1
    return index
