"""Which SQL can leave session state behind for the next borrower, and how to clear it.

``reset="auto"`` must not cost a round trip per borrow (asyncpg's pool pays one on
every release and loses half its throughput for it), so the drivers hand every
statement they send to :func:`touches_session` and mark the connection *dirty*
when it could change state that outlives its transaction. A dirty connection is
reset with :data:`RESET_SQL` on return; a clean one costs a flag read.

The verdict comes from a small lexer, not a text search: it skips whitespace and
comments (``--`` and nested ``/* */``), understands quoted identifiers, string
literals (``'…'``, ``E'…'``, ``$tag$…$tag$``), splits the text into statements on
``;`` outside those, and judges each statement by its first token and by its
function-call tokens (a name followed by ``(``, comments allowed in between).
A statement is harmless only when its first token is on a list of commands that
leave nothing behind (:data:`HARMLESS_FIRST`) and it calls none of the functions
in :data:`SESSION_FUNCTIONS`, creates no temporary object and writes no ``pg_settings``
(an UPDATE of it is a SET); everything else —
``SET``, ``DO``, ``CALL``, ``EXECUTE``, any ``DECLARE``, an unknown command,
text that does not lex — counts as dirty. Unknown means reset: a false positive
costs one ``DISCARD ALL``, a false negative would leak state.

What the lexer cannot see is what a server-side function does when called
(``SELECT my_function()``). A statement that calls a function not in
:data:`KNOWN_CALLS` gets the verdict :data:`CHECK`: on return, the settings the
server reports (:data:`REPORTED_PARAMETERS`) are compared with the connection's
baseline, in memory, and a difference means a reset. See docs/design.md for the
guarantee and its one gap.
"""

from __future__ import annotations

import re

__all__ = [
    "CHECK",
    "HARMLESS_FIRST",
    "KNOWN_CALLS",
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

#: First words of statements that leave nothing behind once their transaction ends
#: (the pool rolls back an open one). Anything else starting a statement is dirty.
#: ``create`` and ``select`` may still create a temporary object (``CREATE TEMP``,
#: ``SELECT … INTO TEMP``), which the lexer checks for separately; ``explain`` is
#: judged by the statement it explains.
HARMLESS_FIRST = frozenset(
    {
        "abort",
        "alter",
        "analyse",
        "analyze",
        "begin",
        "checkpoint",
        "close",
        "cluster",
        "comment",
        "commit",
        "copy",
        "create",
        "delete",
        "drop",
        "end",
        "fetch",
        "grant",
        "import",
        "insert",
        "lock",
        "merge",
        "move",
        "notify",
        "reassign",
        "refresh",
        "reindex",
        "release",
        "revoke",
        "rollback",
        "savepoint",
        "security",
        "select",
        "show",
        "start",
        "table",
        "truncate",
        "unlisten",
        "update",
        "vacuum",
        "values",
        "with",
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

#: The verdict for a statement that calls a function the lexer knows nothing about:
#: truthy (not clean), but not ``True`` (reset): compare the reported settings on
#: return, and reset only if one changed.
CHECK = 2

#: Names followed by ``(`` that are not a call to an unknown function: SQL keywords
#: that take a parenthesis, type modifiers, and built-in functions that change no
#: session state. A call to any other name gets the verdict :data:`CHECK`.
KNOWN_CALLS = frozenset(
    {
        # keywords and clauses
        *("all", "and", "any", "array", "as", "between", "by", "case", "cast", "check"),
        *("collate", "cube", "default", "distinct", "else", "exists", "filter", "from"),
        *("grouping", "having", "in", "include", "is", "join", "key", "lateral", "like"),
        *("ilike", "limit", "not", "nulls", "of", "offset", "on", "or", "over", "partition"),
        *("primary", "returning", "rollup", "row", "rows", "select", "set", "sets", "some"),
        *("then", "unique", "using", "values", "when", "where", "with", "within"),
        *("overlaps", "similar", "to", "range", "list", "hash", "window", "except"),
        *("union", "intersect", "materialized", "exclude", "tablesample", "system"),
        *("bernoulli", "ordinality", "conflict", "do", "update", "foreign", "references"),
        # types with a modifier
        *("bit", "char", "character", "decimal", "float", "interval", "numeric", "time"),
        *("timestamp", "timestamptz", "timetz", "varbit", "varchar", "varying"),
        # built-in functions that leave no session state
        *("abs", "age", "array_agg", "array_append", "array_length", "array_position"),
        *("array_remove", "array_to_string", "avg", "bool_and", "bool_or", "btrim"),
        *("cardinality", "ceil", "ceiling", "char_length", "coalesce", "concat"),
        *("concat_ws", "count", "current_setting", "date_part", "date_trunc", "decode"),
        *("dense_rank", "encode", "every", "extract", "first_value", "floor", "format"),
        *("gen_random_uuid", "generate_series", "greatest", "json_agg", "json_build_array"),
        *("json_build_object", "json_object_agg", "jsonb_agg", "jsonb_build_array"),
        *("jsonb_build_object", "jsonb_object_agg", "jsonb_set", "jsonb_array_elements"),
        *("json_array_elements", "jsonb_each", "json_each", "to_json", "to_jsonb"),
        *("lag", "last_value", "lead", "least", "left", "length", "lower", "lpad"),
        *("ltrim", "make_interval", "max", "md5", "min", "mod", "now", "nullif"),
        *("octet_length", "overlay", "pg_advisory_unlock", "pg_advisory_unlock_all"),
        *("pg_advisory_unlock_shared", "pg_advisory_xact_lock"),
        *("pg_advisory_xact_lock_shared", "pg_backend_pid", "pg_cancel_backend"),
        *("pg_listening_channels", "pg_my_temp_schema", "pg_notify", "pg_sleep"),
        *("pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared", "pg_typeof"),
        *("position", "power", "random", "rank", "regexp_match", "regexp_matches"),
        *("regexp_replace", "regexp_split_to_array", "repeat", "replace", "reverse"),
        *("right", "round", "row_number", "rpad", "rtrim", "split_part", "sqrt"),
        *("starts_with", "statement_timestamp", "string_agg", "string_to_array"),
        *("strpos", "substr", "substring", "sum", "to_char", "to_date", "to_number"),
        *("to_timestamp", "transaction_timestamp", "clock_timestamp", "trim", "trunc"),
        *("unnest", "upper", "uuid_generate_v4", "json_build", "nextval", "currval"),
        *("setval", "lastval", "txid_current", "pg_current_xact_id", "version"),
        # what ORMs and drivers ask the catalog
        *("current_schema", "current_schemas", "current_database", "format_type"),
        *("pg_get_expr", "pg_get_indexdef", "pg_get_constraintdef", "pg_get_viewdef"),
        *("pg_table_is_visible", "pg_type_is_visible", "obj_description"),
        *("col_description", "has_table_privilege", "has_schema_privilege", "to_regclass"),
        *("quote_ident", "quote_literal", "array_upper", "array_lower"),
    }
)

# A name followed by "(" after one of these is a table (INSERT INTO t (a, b)).
# (CREATE FUNCTION f(…), CREATE PROCEDURE p(…): a definition.)
_BEFORE_TABLE = frozenset(
    {"into", "table", "references", "on", "only", "exists", "view", "copy"}
    | {"function", "procedure"}
)

# ``SET LOCAL …``, ``SET TRANSACTION …`` and ``SET CONSTRAINTS …`` end with their
# transaction; every other SET outlives it.
_TRANSACTION_SET = frozenset({"local", "transaction", "constraints"})
# A TEMP/TEMPORARY keyword after one of these creates a temporary object.
_BEFORE_TEMP = frozenset({"create", "local", "global", "into", "replace"})
_READ_FIRST = frozenset({"select", "(", "table", "values"})
_EXPLAIN_OPTIONS = frozenset({"analyze", "analyse", "verbose"})

# The cheap test: one statement (no ';' but a last character), a harmless first word
# found by a plain match, no '(' (so no function call) and neither of _MARKERS
# anywhere in the lowercased text (not even in a string or comment): a temporary
# object, or an identifier spelled with escapes. Only text that fails it is lexed.
# Leading whitespace and comments (a tag an ORM or SQL commenter put first) are
# skipped (PostgreSQL ends a "--" comment at a carriage return too); a comment with
# another "/*" inside (nested) is left to the lexer.
_FIRST_WORD = re.compile(
    r"(?:[ \t\n\r\f\v]+|--[^\n\r]*[\n\r]|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/)*"
    r"([A-Za-z_][A-Za-z0-9_]*)(?![A-Za-z0-9_$\x80-\U0010ffff])"
)
_MARKERS = re.compile(r'temp|u&"|pg_settings')

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
    (it cannot), ``True`` (it may: reset on return) or :data:`CHECK` (it calls a
    function the lexer does not know: compare the reported settings on return).

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
    if first is not None and first.group(1) in HARMLESS_FIRST and "(" not in lowered:
        semicolon = lowered.find(";")
        # One statement, or one with a ';' at its very end (as ORMs and tools write).
        one = semicolon < 0 or (semicolon == len(lowered.rstrip()) - 1)
        if one and _MARKERS.search(lowered) is None:
            return False
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
_OP: Token = ("op", "")


def _statements(text: str) -> list[list[Token]]:
    """``text`` as statements, each a list of (kind, lowercased value) tokens.

    Kinds: ``word`` (keyword or unquoted identifier), ``qid`` (quoted identifier,
    without its quotes), ``lit`` (a string of any kind), ``(``, ``)``, ``.`` and
    ``op`` (any other character). Whitespace and comments are dropped.
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
            current.append(_OP)
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
    current.append((value, value) if value in "()." else _OP)
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
    return _calls_verdict(tokens, start)


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
    if kind == "(" or (kind == "word" and first in HARMLESS_FIRST):
        return start  # (SELECT …) UNION …, or a harmless command
    if kind == "word" and first == "set" and start + 1 < len(tokens):
        # SET LOCAL search_path = 'pg_temp' makes the transaction's plain CREATE TABLE
        # a temporary table, which outlives the transaction.
        local = tokens[start + 1][1] in _TRANSACTION_SET and _TEMP_LITERAL not in tokens
        return start if local else -1
    return -1


def _calls_verdict(tokens: list[Token], start: int) -> int:
    """True for a temporary object or a call to a session function, CHECK for a call
    to an unknown function, else False."""
    verdict: int = False
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
        if following == "(":
            if value in SESSION_FUNCTIONS:
                return True
            if value not in KNOWN_CALLS and context not in _BEFORE_TABLE:
                verdict = CHECK
        if following != ".":  # not a qualifier: the next name's context is this word
            context = value if kind == "word" else ""
    return verdict


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
