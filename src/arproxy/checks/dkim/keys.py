"""DKIM key fetching and judging: the key record of a signature, through our resolver,
judged by RFC 6376 sections 3.6.1 and 6.1.2 and RFC 8301 before dkimpy sees it.

Keys are fetched before dkimpy runs (all signatures' keys at once); dkimpy's `dnsfunc`
then only replays the outcome (checks.dkim.dkimpy).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import dkim

from arproxy import names
from arproxy.checks.base import Value
from arproxy.checks.dkim.types import (
    DKIMPY_INPUT_ERRORS,
    Key,
    KeyQuery,
    Unverifiable,
    parse_tags,
)
from arproxy.dns import Resolver, Status

MIN_RSA_BITS = 1024  # RFC 8301 section 3.2: smaller keys MUST NOT be considered valid
_WHITESPACE = re.compile(rb"\s+")


def key_name(tags: dict[bytes, bytes]) -> str | None:
    """<s>._domainkey.<d> (RFC 6376 section 3.6.2.1) as a lower-case ASCII DNS name
    (U-labels converted), or None if it is not a valid one."""
    return _key_name(tags[b"s"], tags[b"d"])


@functools.lru_cache(maxsize=256)
def _key_name(selector: bytes, domain: bytes) -> str | None:
    # Cached per worker: the same few signers' s= and d= come back message after message.
    try:
        name = f"{selector.decode()}._domainkey.{domain.decode()}"
    except UnicodeError:
        return None
    return names.idna2003_host_name(name, min_labels=1, underscores=True)


async def key_for(dns: Resolver, query: KeyQuery | Unverifiable) -> Key | Unverifiable:
    """The signature's key through our resolver, judged by RFC 6376 6.1.2 and RFC 8301;
    a signature that failed the early checks gets its problem back, with no lookup."""
    if isinstance(query, Unverifiable):
        return query
    lookup = await dns.lookup(query.name, "TXT")
    if lookup.status is Status.TEMPFAIL:
        # RFC 6376 6.1.2: TEMPFAIL (key unavailable); RFC 8601 2.7.1 temperror.
        return Unverifiable(Value.TEMPERROR, "key lookup failed temporarily")
    records = lookup.texts()
    if not records:
        # NXDOMAIN or NODATA. RFC 6376 6.1.2: "MUST immediately return PERMFAIL (no key for
        # signature)"; RFC 8601 2.7.1 permerror: "could not be verified due to some error
        # that is unrecoverable".
        return Unverifiable(Value.PERMERROR, "no key for signature")
    # Several records: RFC 6376 6.1.2 leaves the choice to us; the first usable one wins,
    # and if none is usable, the first one's problem is reported.
    problems: list[Unverifiable] = []
    for record in records:
        try:
            return judge_key(record, query.tags)
        except Unverifiable as problem:
            problems.append(problem)
    return problems[0]


def judge_key(record: bytes, sig_tags: dict[bytes, bytes]) -> Key:
    """A usable key from one TXT record, or Unverifiable (always permerror) saying why.

    The checks of the record alone are made once per distinct record (`_read_record`,
    cached per worker: the same few keys sign most mail, and reading a key's ASN.1 in
    dkimpy is most of this function's CPU); those against the signature every time, in
    the order RFC 6376 6.1.2 lists them, so the reason given is the one it always was.
    """
    read = _read_record(record)
    if isinstance(read, tuple):
        raise Unverifiable(*read)
    sig_key_type, _, sig_hash = sig_tags[b"a"].partition(b"-")
    if read.key_type != sig_key_type:
        # RFC 6376 6.1.2: PERMFAIL (inappropriate key algorithm).
        raise Unverifiable(Value.PERMERROR, "inappropriate key algorithm")
    if read.hashes is not None and sig_hash not in read.hashes:
        # RFC 6376 6.1.2: PERMFAIL (inappropriate hash algorithm).
        raise Unverifiable(Value.PERMERROR, "inappropriate hash algorithm")
    if not read.for_email:
        # RFC 6376 3.6.1 s=: a colon-separated list of service types; without "email" or
        # "*" the key is not for mail. (dkimpy reads s= as a single value, so it never
        # sees this tag: the record we hand it holds only k= and p=.)
        raise Unverifiable(Value.PERMERROR, "key not for e-mail")
    if read.strict_identity and not _identity_domain_is_d(sig_tags):
        # RFC 6376 3.6.1 t=s: the i= domain MUST NOT be a subdomain of d=.
        raise Unverifiable(Value.PERMERROR, "i= domain not allowed by key (t=s)")
    if isinstance(read.key, tuple):
        raise Unverifiable(*read.key)
    return read.key


# (value, reason) of an Unverifiable: a cached problem is raised as a new exception each
# time, never the same object (a re-raised exception keeps growing its traceback).
_Problem = tuple[Value, str]


@dataclass(frozen=True)
class _Record:
    """What one key record says, read once: its tags as the checks against a signature
    need them, and the key dkimpy gets (or the problem with it)."""

    key_type: bytes
    hashes: frozenset[bytes] | None  # h=, None: any hash
    for_email: bool  # s= includes "email" or "*" (or is absent)
    strict_identity: bool  # t=s
    key: Key | _Problem


@functools.lru_cache(maxsize=256)
def _read_record(record: bytes) -> _Record | _Problem:
    """The checks of RFC 6376 3.6.1 and 6.1.2 and RFC 8301 that depend on the record alone;
    a problem found before any check against the signature is returned as such."""
    tags = parse_tags(record)
    if tags is None:
        return Value.PERMERROR, "key syntax error"
    version = tags.get(b"v")
    if version is not None and (version != b"DKIM1" or next(iter(tags)) != b"v"):
        # RFC 6376 3.6.1: v= if present MUST be DKIM1 and the first tag; 6.1.2: MUST
        # ignore keys with a version they do not implement.
        return Value.PERMERROR, "key syntax error"
    if b"p" not in tags:
        return Value.PERMERROR, "key syntax error"
    public_key = _WHITESPACE.sub(b"", tags[b"p"])
    if not public_key:
        # RFC 6376 3.6.1: "An empty value means that this public key has been revoked";
        # 6.1.2: PERMFAIL (key revoked), and "there is no defined semantic difference
        # between a key that has been revoked and a key record that has been removed",
        # so the same permerror as a missing key, with its own reason.
        return Value.PERMERROR, "key revoked"
    key_type = tags.get(b"k", b"rsa")
    return _Record(
        key_type=key_type,
        hashes=frozenset(_tag_list(tags[b"h"])) if b"h" in tags else None,
        for_email=b"s" not in tags or bool({b"*", b"email"} & _tag_list(tags[b"s"])),
        strict_identity=b"s" in _tag_list(tags.get(b"t", b"")),
        key=_usable_key(b"k=" + key_type + b"; p=" + public_key, key_type),
    )


def _usable_key(clean_record: bytes, key_type: bytes) -> Key | _Problem:
    try:
        evaluated = _evaluate(clean_record)
    except Unverifiable as problem:
        return problem.value, problem.reason
    keysize = evaluated[1]
    if key_type == b"rsa" and keysize < MIN_RSA_BITS:
        # RFC 8301 section 3.2: keys under 1024 bits MUST NOT be considered valid.
        return Value.PERMERROR, "key too small"
    return Key(clean_record, keysize, evaluated)


def _evaluate(record: bytes) -> tuple[Any, int, bytes, bool]:
    """dkimpy's reading of the key (key object, size in bits, k=, s=tlsrpt); Unverifiable
    if it cannot read it."""
    try:
        pk, keysize, ktag, tlsrpt = dkim.evaluate_pk(b"", record)
    except dkim.NaClNotFoundError as exc:
        # RFC 8463 requires Ed25519 of verifiers; dkimpy needs pynacl for it.
        raise Unverifiable(Value.PERMERROR, "ed25519 not supported") from exc
    except DKIMPY_INPUT_ERRORS as exc:
        # RFC 6376 6.1.2: PERMFAIL (key syntax error).
        raise Unverifiable(Value.PERMERROR, "key syntax error") from exc
    return pk, int(keysize), ktag, bool(tlsrpt)


def _tag_list(value: bytes) -> set[bytes]:
    return {item.strip().lower() for item in value.split(b":")}


def _identity_domain_is_d(sig_tags: dict[bytes, bytes]) -> bool:
    identity = sig_tags.get(b"i")
    if identity is None:
        return True  # RFC 6376 6.1.1: no i= means "@d"
    return identity.rpartition(b"@")[2].lower() == sig_tags[b"d"].lower()
