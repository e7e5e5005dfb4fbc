"""Authentication-Results (RFC 8601): a typed model, a strict parser, a lenient id reader,
a quoting and folding formatter, and the authserv-id comparison. Pure: no I/O, no logging.
"""

from .errors import AuthResSyntaxError, FormatError
from .formatter import format_field, with_a_labels
from .ids import authserv_id_matches, normalize_authserv_id
from .lenient import recover_authserv_id
from .model import AuthenticationResults, Property, ResInfo
from .parser import parse

__all__ = [
    "AuthResSyntaxError",
    "AuthenticationResults",
    "FormatError",
    "Property",
    "ResInfo",
    "authserv_id_matches",
    "format_field",
    "normalize_authserv_id",
    "parse",
    "recover_authserv_id",
    "with_a_labels",
]
