"""The path of a MAIL or RCPT command, read by RFC 5321 section 4.1.2. Pure.

aiosmtpd parses the path with the e-mail header parser, which takes much that
RFC 5321 does not: `RCPT TO:<>` (the null path, which a forward-path never is),
a missing `>`, no brackets at all. This check runs first:

    mail = "MAIL FROM:" Reverse-path [SP Mail-parameters]
    rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path )
           [SP Rcpt-parameters]
    Reverse-path = Path / "<>";  Forward-path = Path;  Path = "<" [ A-d-l ":" ] Mailbox ">"

Decisions: the brackets are required (RFC 5321 section 4.1.2; Postfix's
`strict_rfc821_envelopes = yes`); white space after the colon (`MAIL FROM: <a@b>`)
is tolerated, as Postfix does by default, since it is common and unambiguous; no
white space inside the brackets except in a quoted local part; exactly one space
or more before the parameters. The mailbox itself is left to aiosmtpd and to our
address checks (arproxy.extensions).
"""

from __future__ import annotations

import re

from arproxy.replies import BAD_RECIPIENT_SYNTAX, BAD_SENDER_SYNTAX, Reply

_KEYWORD = {"MAIL": "FROM:", "RCPT": "TO:"}

# The plain path of RFC 5321 section 4.1.2: Dot-string local part (ASCII atext), an
# optional domain of LDH labels or an address literal, no source route; or "<>".
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*|\[[A-Za-z0-9.:-]+\]"
_PLAIN_PATH = re.compile(rf"<((?:{_ATOM}(?:\.{_ATOM})*(?:@(?:{_DOMAIN}))?)?)>")


def path_refusal(verb: str, arg: str) -> Reply | None:
    """Why the argument of MAIL or RCPT (`verb`; `arg` is what follows the verb
    and a space) breaks RFC 5321 section 4.1.2, or None. A missing `FROM:`/`TO:`
    is left to aiosmtpd's own 501 syntax reply. 501 5.1.7 for the sender,
    501 5.1.3 for a recipient (RFC 3463 section 3.2)."""
    keyword = _KEYWORD[verb]
    if arg[: len(keyword)].upper() != keyword:
        return None
    refusal = BAD_SENDER_SYNTAX if verb == "MAIL" else BAD_RECIPIENT_SYNTAX
    rest = arg[len(keyword) :].lstrip(" ")
    path = _bracketed(rest)
    if path is None:
        return refusal
    inside, after = path
    if after and not after.startswith(" "):
        return refusal  # "<a@b>x": the path must end before SP and the parameters
    if not inside and verb == "RCPT":
        return refusal  # the forward-path is never null (RFC 5321 section 4.1.1.3)
    return None


def _bracketed(text: str) -> tuple[str, str] | None:
    """(what is between `<` and its `>`, what follows), or None when `text` does not
    start with a bracketed path free of white space, `<` and controls outside quotes."""
    if not text.startswith("<"):
        return None
    quoted = escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char == ">":
            return text[1:index], text[index + 1 :]
        elif char == "<" or char <= " " or char == "\x7f":
            return None
    return None  # no closing ">"


def plain_path(arg: str) -> tuple[str, str] | None:
    """(mailbox, what follows the `>`) when `arg` starts with a plain path: `<>`
    (mailbox "") or `<Dot-string[@Domain]>` with an LDH domain or an address literal
    (RFC 5321 section 4.1.2), the forms nearly every client sends. None for anything
    else (quoted local part, source route, non-ASCII, ...), which a slower reader takes."""
    found = _PLAIN_PATH.match(arg)
    if found is None:
        return None
    return found.group(1), arg[found.end() :]
