"""What the client side prints: a probe result as one line, a trusted result as one line or
as JSON. Text from a server or a message reaches a terminal escaped.
"""

from __future__ import annotations

import json

from arproxy.authres import ResInfo
from arproxy.authres.chars import is_token_char

from .model import ProbeResult


def describe(result: ProbeResult) -> str:
    """One line for people: where, which state, and what the server promised."""
    where = f"{result.host}:{result.port} ({result.protocol}, {result.phase})"
    if not result.advertised:
        return f"{where}: no AUTHSERV, the server makes no promise about Authentication-Results"
    if result.authserv_id is None:
        hint = "; it may name it after login (--user)" if result.phase == "pre-auth" else ""
        return f"{where}: AUTHSERV without an authserv-id{hint}"
    return f"{where}: AUTHSERV, authserv-id {result.authserv_id}"


def result_as_dict(res: ResInfo) -> dict[str, object]:
    """A JSON-ready form: method, method_version, result, reason, properties."""
    return {
        "method": res.method,
        "method_version": res.method_version,
        "result": res.result,
        "reason": res.reason,
        "properties": [
            {"ptype": prop.ptype, "property": prop.name, "value": prop.value}
            for prop in res.properties
        ],
    }


def result_as_text(res: ResInfo) -> str:
    """One line, ``method=result reason="..." ptype.property=value``.

    A value that is not a plain token is written as a JSON string, so control characters and
    non-ASCII text from the message reach a terminal escaped.
    """
    method = res.method if res.method_version is None else f"{res.method}/{res.method_version}"
    words = [f"{method}={res.result}"]
    if res.reason is not None:
        words.append(f"reason={_printable(res.reason)}")
    words.extend(f"{prop.ptype}.{prop.name}={_printable(prop.value)}" for prop in res.properties)
    return " ".join(words)


def _printable(value: str) -> str:
    if value and all(is_token_char(char) or char in "@" for char in value):
        return value
    return json.dumps(value)
