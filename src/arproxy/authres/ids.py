"""The one authserv-id comparison: used to strip forged fields and to pick trusted ones.

RFC 8601 section 5 compares authserv-ids as domain names: case-insensitive, token and quoted
forms equal (the parser has already unquoted them), comments and folding ignored. Both the
border rewrite and any reader use this module, so a field a reader would trust is exactly a
field the border would have removed.
"""

from collections.abc import Iterable

_SUBDOMAIN_MARK = "."


def normalize_authserv_id(authserv_id: str) -> str:
    """Comparable form: surrounding white space trimmed, IDNA A-labels, case-folded, no root dot.

    A U-label id and its A-label spelling (``bücher.example``, ``xn--bcher-kva.example``)
    compare equal. Text that IDNA refuses is only case-folded.
    """
    name = _to_ascii(authserv_id.strip(" \t")).casefold()
    return name.removesuffix(".")


def authserv_id_matches(candidate: str, trusted: Iterable[str]) -> bool:
    """Whether ``candidate`` is one of the ``trusted`` ids.

    A trusted entry starting with "." (``.example.com``) matches every subdomain of that domain
    but not the domain itself; any other entry matches only the same id.
    """
    name = normalize_authserv_id(candidate)
    for entry in trusted:
        if entry.startswith(_SUBDOMAIN_MARK):
            suffix = _SUBDOMAIN_MARK + normalize_authserv_id(entry[len(_SUBDOMAIN_MARK) :])
            if len(name) > len(suffix) and name.endswith(suffix):
                return True
        elif name == normalize_authserv_id(entry):
            return True
    return False


def _to_ascii(name: str) -> str:
    if name.isascii():
        return name
    try:
        # Python's "idna" codec (IDNA 2003) also maps full-width dots and letters.
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name
