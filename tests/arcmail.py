"""Messages with ARC chains for the ARC tests, built at test time with dkimpy's arc_sign
over the keys in tests/fixtures/keys; the records are in tests/fixtures/zones
(arc.test: the author, p=reject; lists.example and forwarder.test: sealers, selector arc).

The story: alice@arc.test signs her message (DKIM d=arc.test) and sends it to a list; the
list verifies it (everything passes), records that in an Authentication-Results field,
tags the Subject, adds a footer, seals the result (one ARC set) and sends it on from
127.0.0.2 with its own envelope sender. At our border SPF is the list's and the author's
signature is broken: DMARC fails, and only the seal speaks for the author.
"""

from __future__ import annotations

from pathlib import Path

import dkim

KEYS = Path(__file__).parent / "fixtures" / "keys"
AUTHOR = b"arc.test"
TRUSTED = b"lists.example"
UNTRUSTED = b"forwarder.test"
LIST_RESULTS = (
    b"dkim=pass header.d=arc.test header.s=s2048; spf=pass smtp.mailfrom=alice@arc.test; "
    b"dmarc=pass header.from=arc.test"
)


def private_key() -> bytes:
    return (KEYS / "rsa2048.pem").read_bytes()


def authored(subject: str = "Meeting notes", body: str = "See you at noon.\r\n") -> bytes:
    """Alice's message, DKIM-signed by her domain (arc.test, selector s2048)."""
    message = (
        "From: Alice <alice@arc.test>\r\n"
        "To: team@lists.example\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <1@arc.test>\r\n"
        "\r\n" + body
    ).encode()
    signature: bytes = dkim.sign(
        message, b"s2048", AUTHOR, private_key(), include_headers=[b"from", b"to", b"subject"]
    )
    return signature + message


def as_list_sends_it(message: bytes) -> bytes:
    """The list's changes: a Subject tag and a footer (the author's DKIM breaks)."""
    head, _, body = message.partition(b"\r\n\r\n")
    head = head.replace(b"Subject: ", b"Subject: [team] ", 1)
    return head + b"\r\n\r\n" + body + b"-- \r\nteam mailing list\r\n"


def sealed(
    message: bytes,
    sealer: bytes = TRUSTED,
    *,
    results: bytes = LIST_RESULTS,
    selector: bytes = b"arc",
    chain_status: bytes | None = None,
) -> bytes:
    """`message` with one more ARC set on top, sealed by `sealer`: the sealer's own
    Authentication-Results (what it verified on arrival, plus arc=<chain_status> when the
    message already had a chain) are taken into the new AAR by dkimpy, then dropped."""
    recorded = results
    if chain_status is not None:
        recorded = b"arc=" + chain_status + b"; " + results
    own = b"Authentication-Results: " + sealer + b"; " + recorded + b"\r\n"
    fields: list[bytes] = dkim.arc_sign(own + message, selector, sealer, private_key(), sealer)
    return b"".join(fields) + message


def list_message(sealer: bytes = TRUSTED) -> bytes:
    """The whole story: signed by the author, changed and sealed by the list."""
    return sealed(as_list_sends_it(authored()), sealer)
