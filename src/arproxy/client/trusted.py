"""The reader's side of RFC 8601 section 5: the results a mail client may act on.

Behind a border that strips forged fields (arproxy, which promises so with AUTHSERV), a field
carrying the border's authserv-id was written by the border. ``trusted_results`` returns the
results of exactly those fields: top-level Authentication-Results fields as ``arproxy.header``
reads them (the reader the rewrite uses too), whose id equals the trusted one under the
rewrite's comparison (``arproxy.authres.authserv_id_matches``), of version 1 (or none). A field
of another version is ignored (RFC 8601 section 2.2), and so is a field that the strict parser
refuses: the border never writes one, so it is not the border's.

The trusted id is one exact id: the ``.example.com`` subdomain form of
``headers.trusted_authserv_ids`` widens what the border removes, which is safe; on the
reading side it would widen what is believed, which is not.
"""

from __future__ import annotations

from arproxy.authres import (
    AuthResSyntaxError,
    ResInfo,
    authserv_id_matches,
    normalize_authserv_id,
    parse,
)
from arproxy.header import Field, read_header

_VERSION_1 = "1"
_SUBDOMAIN_MARK = "."


def trusted_results(message: bytes, authserv_id: str) -> tuple[ResInfo, ...]:
    """The results of the message's Authentication-Results fields carrying ``authserv_id``.

    In field order (top first), and within a field in the order written. Raises ValueError if
    ``authserv_id`` is not an id (empty, or the ``.domain`` subdomain pattern).
    """
    _check_trusted_id(authserv_id)
    results: list[ResInfo] = []
    for field in read_header(message).named("authentication-results"):
        try:
            header = parse(_crlf_value(field).decode("utf-8", errors="surrogateescape"))
        except AuthResSyntaxError:
            continue
        if _is_version_1(header.version) and authserv_id_matches(
            header.authserv_id, (authserv_id,)
        ):
            results.extend(header.results)
    return tuple(results)


def _check_trusted_id(authserv_id: str) -> None:
    if not normalize_authserv_id(authserv_id):
        raise ValueError("the trusted authserv-id is empty")
    if authserv_id.startswith(_SUBDOMAIN_MARK):
        raise ValueError(
            f"{authserv_id!r} is a subdomain pattern, not an authserv-id: trust one exact id"
        )


def _is_version_1(version: str | None) -> bool:
    # Compared as a number ("01" is 1) without int(), which refuses very long digit strings.
    return version is None or version.lstrip("0") == _VERSION_1


def _crlf_value(field: Field) -> bytes:
    """The field's value with every line end as CRLF: the reader also ends lines at a bare
    CR or LF, the strict parser knows only CRLF folds."""
    return field.with_crlf()[field.colon + 1 :]
