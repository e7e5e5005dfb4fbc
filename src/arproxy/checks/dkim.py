"""dkim (RFC 6376; RFC 8601 section 2.7.1; RFC 6008): verify every signature of the message.

One result per DKIM-Signature field, in header order, up to `max_signatures` (RFC 6376
section 6.1 lets a verifier limit how many it tries; a message can carry any number). dkimpy
does the canonicalisation, hashing and RSA arithmetic; everything that decides a result
value is ours, because dkimpy reports most outcomes as `False` or as one exception class:

- keys are fetched through our resolver before dkimpy runs (all signatures' keys at once) and
  judged here (RFC 6376 6.1.2, RFC 8301); dkimpy's `dnsfunc` then only replays the outcome,
  raising our own exception for "no usable key" or "DNS failed", which dkimpy lets through;
- the rules dkimpy does not enforce are checked before it runs: From must be signed (6.1.1),
  rsa-sha1 is refused (RFC 8301 section 3.1);
- dkimpy's `ValidationError` is told apart by its message (body hash versus syntax).

How RFC 6376's SUCCESS / PERMFAIL / TEMPFAIL become RFC 8601 values: a signature that was
checked and did not verify (signature or body hash) is `fail`; a signature that could not be
checked because of something permanent (syntax, missing tag, unusable or absent key, expiry)
is `permerror`; a DNS failure is `temperror`.

CPU: canonicalising and hashing the message (once per signature) and the RSA operations run
in a small thread pool of this module, never on the event loop: a 10 MB message with five
signatures costs seconds of hashing, during which every other session must go on. The keys
are fetched before (asynchronously, through our resolver), so a worker never waits for DNS.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
import dkim.util

from arproxy.authres import Property, ResInfo
from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.dns import Resolver, Status
from arproxy.header import CRLF, Header, normalize_newlines, read_header

log = logging.getLogger("arproxy.checks.dkim")
# Hashing and RSA off the event loop; a few threads, as a 2-core machine has no more to give.
_WORKERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="arproxy-dkim")

DEFAULT_MAX_SIGNATURES = 5
MIN_RSA_BITS = 1024  # RFC 8301 section 3.2: smaller keys MUST NOT be considered valid
HEADER_B_MIN_LENGTH = 8  # RFC 6008 section 4: at least the first eight characters of b=

_REQUIRED_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")  # RFC 6376 section 3.5
_ACCEPTED_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")  # RFC 6376 3.3, RFC 8463
_WHITESPACE = re.compile(rb"\s+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+=*")
# A key name label: letters, digits, hyphen, and the underscore of "_domainkey".
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")

# dkimpy parses hostile input and, besides its own DKIMException, lets these escape on
# malformed data: binascii.Error (a ValueError) for bad base64, ValueError from int() of an
# empty l=, IndexError from its i=/d= check when i= equals d=, AssertionError from its ASN.1
# reader on a mangled key.
_DKIMPY_INPUT_ERRORS = (dkim.DKIMException, ValueError, LookupError, AssertionError)

# dkimpy raises ValidationError for every problem it finds in a signature; only the message
# tells them apart. (message prefix, value, our reason); anything else is a syntax error.
_VALIDATION_OUTCOMES = (
    # RFC 6376 6.1.3: the body changed; the signature was checked and did not verify.
    ("body hash mismatch", Value.FAIL, "body hash did not verify"),
    # RFC 6376 6.1.1: "Verifiers MAY ignore the DKIM-Signature header field and return
    # PERMFAIL (signature expired)". An ignored signature was not checked at all, so this
    # is permerror ("could not be verified", RFC 8601 2.7.1), not fail ("failed the
    # verification test"). The same holds for a t= in the future (RFC 6376 3.5, t=).
    ("x= value is past", Value.PERMERROR, "signature expired"),
    ("t= value is in the future", Value.PERMERROR, "signature timestamp in the future"),
    ("missing ", Value.PERMERROR, "signature missing required tag"),
    ("unknown signature algorithm", Value.PERMERROR, "unknown algorithm"),
    ("v= value is not 1", Value.PERMERROR, "incompatible version"),
    ("i= domain is not a subdomain", Value.PERMERROR, "i= not within d="),
)


@dataclass(frozen=True)
class DkimResult:
    """The outcome of one signature; `value` NONE (no signature) carries nothing else.

    The tag values are the signature's own, decoded from UTF-8 with replacement: they are
    attacker-controlled and `to_resinfo` writes only those the formatter can carry.
    """

    value: Value
    domain: str | None = None  # d=
    identity: str | None = None  # i=
    selector: str | None = None  # s=
    algorithm: str | None = None  # a=
    b_prefix: str | None = None  # header.b: enough of b= to be unique in the message
    keysize: int | None = None
    reason: str | None = None  # ours, never the signer's text

    method = "dkim"

    def to_resinfo(self) -> ResInfo:
        if self.value is Value.NONE:
            return ResInfo("dkim", Value.NONE.value)
        tags = (
            ("d", self.domain),
            ("i", self.identity),
            ("s", self.selector),
            ("a", self.algorithm),
            ("b", self.b_prefix),
        )
        # A tag value with controls or non-ASCII text is left out rather than sent to the
        # formatter, which would refuse it (FormatError) and lose the whole field.
        properties = tuple(
            Property("header", name, text)
            for name, raw in tags
            if (text := _writable(raw)) is not None
        )
        return ResInfo(
            "dkim",
            self.value.value,
            reason=None if self.value is Value.PASS else _writable(self.reason),
            properties=properties,
            comment=f"{self.keysize}-bit key" if self.keysize else None,
        )


def _writable(text: str | None) -> str | None:
    """`text` if it is non-empty printable US-ASCII (quoting handles the rest), else None."""
    if text and text.isascii() and text.isprintable():
        return text
    return None


class _Unverifiable(Exception):
    """Verification of one signature stopped early: the result to report and why.

    Not a dkimpy exception, so dkimpy lets it through when our dnsfunc raises it.
    """

    def __init__(self, value: Value, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason


@dataclass(frozen=True)
class _Signature:
    """One DKIM-Signature field: its position among them and its tags (None: unparsable)."""

    index: int
    tags: dict[bytes, bytes] | None

    def text(self, tag: bytes) -> str | None:
        if self.tags is None or tag not in self.tags:
            return None
        return self.tags[tag].decode("utf-8", "replace")

    @property
    def b_value(self) -> str | None:
        """b= without its folding white space."""
        if self.tags is None or b"b" not in self.tags:
            return None
        return _WHITESPACE.sub(b"", self.tags[b"b"]).decode("utf-8", "replace")


@dataclass(frozen=True)
class _KeyQuery:
    """A signature that passed the checks made before DNS: where its key is, and its tags."""

    name: str
    tags: dict[bytes, bytes]


@dataclass(frozen=True)
class _Key:
    """A key record judged usable, rewritten to the tags dkimpy reads (k=, p=)."""

    record: bytes
    keysize: int


class _FieldName(bytes):
    """A field name as dkimpy needs it: the bytes as written, white space before the colon
    included, for simple canonicalisation, which hashes "the header fields exactly as they
    are in the message" (RFC 6376 section 3.4.1); compared by the name alone, because
    dkimpy selects the fields of h= by ``name.lower()`` (section 5.4: field names compare
    case-insensitively, and ``Subject :`` is a Subject field, RFC 5322 section 4.5)."""

    def lower(self) -> bytes:
        return bytes(self).rstrip(b" \t").lower()


def dkimpy_message(message: bytes, header: Header) -> tuple[list[list[bytes]], bytes]:
    """The message as dkimpy's ``DKIM.headers`` and ``DKIM.body`` hold it, from our reader.

    dkimpy's own splitter (``rfc822_parse``) refuses ``Name :`` and crashes (IndexError) on a
    header that starts with white space, and its lines end only at LF. So dkimpy is handed
    the fields arproxy reads: ``[name as written, value after the colon]``, every line end
    CRLF (as dkimpy itself writes them); stray lines belong to no field and are not there,
    as no signer could have hashed them. The body's line ends become CRLF too, which is what
    RFC 6376 section 3.4 canonicalises (behind intake, nothing changes: all are CRLF).
    """
    fields = [
        [_FieldName(field.raw[: field.colon]), normalize_newlines(field.value)]
        for field in header.fields
    ]
    for field in fields:
        if not field[1].endswith(CRLF):
            field[1] += CRLF  # the last field of a message without body: dkimpy adds it too
    return fields, normalize_newlines(message[header.body_start :])


class _Verifier:
    """dkimpy's verifier for one message, behind typed methods.

    Its DKIM object keeps per-signature state (signature_fields, pk, keysize) that each
    verify() overwrites, so signatures are verified one after the other, never interleaved.
    The message is read by ``arproxy.header`` and set on the object (``headers``, ``body``:
    attributes dkimpy's ``set_message`` fills and its verify reads; pinned dkimpy < 1.2, and
    tests/unit/checks/test_dkim.py fails if they change).
    """

    def __init__(self, message: bytes) -> None:
        self._dkim = dkim.DKIM(b"", logger=log, minkey=MIN_RSA_BITS)
        self._dkim.headers, self._dkim.body = dkimpy_message(message, read_header(message))

    def signatures(self) -> list[_Signature]:
        """Every DKIM-Signature field, in header order (dkimpy's own indexing)."""
        values = [
            bytes(value) for name, value in self._dkim.headers if name.lower() == b"dkim-signature"
        ]
        return [_Signature(index, _parse_tags(value)) for index, value in enumerate(values)]

    async def verify(self, signature: _Signature, key: _Key | _Unverifiable) -> bool:
        """dkimpy's verdict on one signature, its key lookup answered with `key`;
        the hashing and RSA work run in the module's worker threads."""

        def replay_key(name: bytes, timeout: float = 0.0) -> bytes:
            # The lookup already went through our resolver (with its own timeout). "No
            # key" is raised, not returned as None: dkimpy turns None into a KeyFormatError
            # that it logs and answers with False, the same False as a bad signature.
            if isinstance(key, _Unverifiable):
                raise _Unverifiable(key.value, key.reason)
            return key.record

        work = functools.partial(self._dkim.verify, idx=signature.index, dnsfunc=replay_key)
        return bool(await asyncio.get_running_loop().run_in_executor(_WORKERS, work))


def _parse_tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return None
    return tags


async def check(
    ctx: CheckContext, dns: Resolver, *, max_signatures: int = DEFAULT_MAX_SIGNATURES
) -> tuple[DkimResult, ...]:
    """One result per signature (header order), or a single `none` if there is none."""
    if ctx.message is None:
        raise ValueError("the dkim check runs on a complete message")
    # Reading the header and normalising the body's line ends walk the whole message: off
    # the loop too.
    verifier = await asyncio.get_running_loop().run_in_executor(_WORKERS, _Verifier, ctx.message)
    signatures = verifier.signatures()
    if not signatures:
        return (DkimResult(Value.NONE),)
    checked = signatures[:max_signatures]
    # Unique among all the message's signatures, checked or not (RFC 6008 section 4).
    prefixes = header_b_prefixes([sig.b_value for sig in signatures])[: len(checked)]
    queries = [_key_query(sig) for sig in checked]
    # All keys at once (dkimpy's own checks of the signatures come later, so a signature it
    # rejects may cost a lookup); the verifications, CPU work, one after the other.
    keys = await asyncio.gather(*(_key_for(dns, query) for query in queries))
    results: list[DkimResult] = []
    for sig, query, key, prefix in zip(checked, queries, keys, prefixes, strict=True):
        outcome = query if isinstance(query, _Unverifiable) else await _verify(verifier, sig, key)
        result = _result(sig, prefix, outcome, key)
        log.info(
            "dkim=%s d=%r s=%r b=%r: %s",
            result.value,
            result.domain,
            result.selector,
            result.b_prefix,
            result.reason or "verified",
        )
        results.append(result)
    if len(signatures) > max_signatures:
        results.append(_over_limit_result(len(signatures) - max_signatures, max_signatures))
    return tuple(results)


def _over_limit_result(unchecked: int, limit: int) -> DkimResult:
    """One `policy` result for all the signatures beyond the limit, none of them verified.

    RFC 8601 2.7.1: "policy: The message was signed, but some aspect of the signature or
    signatures was not acceptable to the ADMD". Our limit is such an aspect (RFC 6376 6.1
    lets a verifier limit the signatures it tries). `neutral` would suggest a defect in the
    signatures, which we never looked at. One aggregate result, not one per signature, so
    that a message with thousands of signatures cannot make our header field huge.
    """
    return DkimResult(
        Value.POLICY, reason=f"signatures over the limit of {limit} not verified: {unchecked}"
    )


def _key_query(sig: _Signature) -> _KeyQuery | _Unverifiable:
    """The checks made before any DNS lookup that dkimpy does not make itself."""
    if sig.tags is None:
        return _Unverifiable(Value.PERMERROR, "signature syntax error")  # RFC 6376 6.1.1
    if any(tag not in sig.tags for tag in _REQUIRED_TAGS):
        return _Unverifiable(Value.PERMERROR, "signature missing required tag")
    signed = {name.strip().lower() for name in sig.tags[b"h"].split(b":")}
    if b"from" not in signed:
        # RFC 6376 6.1.1: MUST ignore the signature, PERMFAIL (From field not signed).
        return _Unverifiable(Value.PERMERROR, "From field not signed")
    algorithm = sig.tags[b"a"]
    if algorithm == b"rsa-sha1":
        # RFC 8301 section 3.1: rsa-sha1 MUST NOT be used for signing or verifying.
        return _Unverifiable(Value.PERMERROR, "rsa-sha1 not accepted")
    if algorithm not in _ACCEPTED_ALGORITHMS:
        return _Unverifiable(Value.PERMERROR, "unknown algorithm")
    name = _key_name(sig.tags)
    if name is None:
        return _Unverifiable(Value.PERMERROR, "d= or s= not a domain name")
    return _KeyQuery(name, sig.tags)


def _key_name(tags: dict[bytes, bytes]) -> str | None:
    """<s>._domainkey.<d> as an ASCII DNS name (U-labels converted), or None if invalid."""
    try:
        name = f"{tags[b's'].decode()}._domainkey.{tags[b'd'].decode()}"
        labels = [
            label if label.isascii() else label.encode("idna").decode("ascii")
            for label in name.split(".")
        ]
    except UnicodeError:
        return None
    ascii_name = ".".join(labels)
    if len(ascii_name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_name


async def _key_for(dns: Resolver, query: _KeyQuery | _Unverifiable) -> _Key | _Unverifiable:
    """The signature's key through our resolver, judged by RFC 6376 6.1.2 and RFC 8301;
    a signature that failed the early checks gets its problem back, with no lookup."""
    if isinstance(query, _Unverifiable):
        return query
    lookup = await dns.lookup(query.name, "TXT")
    if lookup.status is Status.TEMPFAIL:
        # RFC 6376 6.1.2: TEMPFAIL (key unavailable); RFC 8601 2.7.1 temperror.
        return _Unverifiable(Value.TEMPERROR, "key lookup failed temporarily")
    records = lookup.texts()
    if not records:
        # NXDOMAIN or NODATA. RFC 6376 6.1.2: "MUST immediately return PERMFAIL (no key for
        # signature)"; RFC 8601 2.7.1 permerror: "could not be verified due to some error
        # that is unrecoverable".
        return _Unverifiable(Value.PERMERROR, "no key for signature")
    # Several records: RFC 6376 6.1.2 leaves the choice to us; the first usable one wins,
    # and if none is usable, the first one's problem is reported.
    problems: list[_Unverifiable] = []
    for record in records:
        try:
            return _judge_key(record, query.tags)
        except _Unverifiable as problem:
            problems.append(problem)
    return problems[0]


def _judge_key(record: bytes, sig_tags: dict[bytes, bytes]) -> _Key:
    """A usable key from one TXT record, or _Unverifiable (always permerror) saying why."""
    tags = _parse_tags(record)
    if tags is None:
        raise _Unverifiable(Value.PERMERROR, "key syntax error")
    version = tags.get(b"v")
    if version is not None and (version != b"DKIM1" or next(iter(tags)) != b"v"):
        # RFC 6376 3.6.1: v= if present MUST be DKIM1 and the first tag; 6.1.2: MUST
        # ignore keys with a version they do not implement.
        raise _Unverifiable(Value.PERMERROR, "key syntax error")
    if b"p" not in tags:
        raise _Unverifiable(Value.PERMERROR, "key syntax error")
    public_key = _WHITESPACE.sub(b"", tags[b"p"])
    if not public_key:
        # RFC 6376 3.6.1: "An empty value means that this public key has been revoked";
        # 6.1.2: PERMFAIL (key revoked), and "there is no defined semantic difference
        # between a key that has been revoked and a key record that has been removed",
        # so the same permerror as a missing key, with its own reason.
        raise _Unverifiable(Value.PERMERROR, "key revoked")
    key_type = tags.get(b"k", b"rsa")
    sig_key_type, _, sig_hash = sig_tags[b"a"].partition(b"-")
    if key_type != sig_key_type:
        # RFC 6376 6.1.2: PERMFAIL (inappropriate key algorithm).
        raise _Unverifiable(Value.PERMERROR, "inappropriate key algorithm")
    if b"h" in tags and sig_hash not in _tag_list(tags[b"h"]):
        # RFC 6376 6.1.2: PERMFAIL (inappropriate hash algorithm).
        raise _Unverifiable(Value.PERMERROR, "inappropriate hash algorithm")
    if b"s" in tags and not {b"*", b"email"} & _tag_list(tags[b"s"]):
        # RFC 6376 3.6.1 s=: a colon-separated list of service types; without "email" or
        # "*" the key is not for mail. (dkimpy reads s= as a single value, so it never
        # sees this tag: the record we hand it holds only k= and p=.)
        raise _Unverifiable(Value.PERMERROR, "key not for e-mail")
    if b"s" in _tag_list(tags.get(b"t", b"")) and not _identity_domain_is_d(sig_tags):
        # RFC 6376 3.6.1 t=s: the i= domain MUST NOT be a subdomain of d=.
        raise _Unverifiable(Value.PERMERROR, "i= domain not allowed by key (t=s)")
    clean_record = b"k=" + key_type + b"; p=" + public_key
    keysize = _keysize(clean_record)
    if key_type == b"rsa" and keysize < MIN_RSA_BITS:
        # RFC 8301 section 3.2: keys under 1024 bits MUST NOT be considered valid.
        raise _Unverifiable(Value.PERMERROR, "key too small")
    return _Key(clean_record, keysize)


def _keysize(record: bytes) -> int:
    """The key's size in bits as dkimpy parses it; _Unverifiable if it cannot."""
    try:
        _, keysize, _, _ = dkim.evaluate_pk(b"", record)
    except dkim.NaClNotFoundError as exc:
        # RFC 8463 requires Ed25519 of verifiers; dkimpy needs pynacl for it.
        raise _Unverifiable(Value.PERMERROR, "ed25519 not supported") from exc
    except _DKIMPY_INPUT_ERRORS as exc:
        # RFC 6376 6.1.2: PERMFAIL (key syntax error).
        raise _Unverifiable(Value.PERMERROR, "key syntax error") from exc
    return int(keysize)


def _tag_list(value: bytes) -> set[bytes]:
    return {item.strip().lower() for item in value.split(b":")}


def _identity_domain_is_d(sig_tags: dict[bytes, bytes]) -> bool:
    identity = sig_tags.get(b"i")
    if identity is None:
        return True  # RFC 6376 6.1.1: no i= means "@d"
    return identity.rpartition(b"@")[2].lower() == sig_tags[b"d"].lower()


async def _verify(
    verifier: _Verifier, sig: _Signature, key: _Key | _Unverifiable
) -> _Unverifiable | None:
    """Run dkimpy on one signature: None if it verified, else what to report."""
    try:
        verified = await verifier.verify(sig, key)
    except _Unverifiable as outcome:
        return outcome
    except dkim.ValidationError as exc:
        log.info("dkim: signature %d: %s", sig.index, exc)
        return _validation_outcome(str(exc))
    except dkim.KeyFormatError as exc:
        # The key passed our checks; dkimpy found it unusable for this signature.
        log.info("dkim: signature %d: %s", sig.index, exc)
        return _Unverifiable(Value.PERMERROR, "key unusable")
    except _DKIMPY_INPUT_ERRORS as exc:
        log.info("dkim: signature %d: %r", sig.index, exc)
        return _Unverifiable(Value.PERMERROR, "signature syntax error")  # RFC 6376 6.1.1
    except Exception as exc:
        # dkimpy parsing hostile input has more failure modes than the ones named above;
        # one of them must not cost the message its other signatures' results. The same
        # input would fail the same way again: permerror, never temperror. A fault on
        # content, not ours to page about: one line, not a traceback.
        log.warning("dkim: signature %d could not be processed: %r", sig.index, exc)
        log.debug("dkim: signature %d: traceback", sig.index, exc_info=True)
        return _Unverifiable(Value.PERMERROR, "signature could not be processed")
    if not verified:
        # RFC 6376 6.1.3: PERMFAIL (signature did not verify); RFC 8601 2.7.1 fail.
        return _Unverifiable(Value.FAIL, "signature did not verify")
    return None


def _validation_outcome(message: str) -> _Unverifiable:
    for prefix, value, reason in _VALIDATION_OUTCOMES:
        if message.startswith(prefix):
            return _Unverifiable(value, reason)
    return _Unverifiable(Value.PERMERROR, "signature syntax error")  # RFC 6376 6.1.1


def _result(
    sig: _Signature,
    b_prefix: str | None,
    outcome: _Unverifiable | None,
    key: _Key | _Unverifiable,
) -> DkimResult:
    return DkimResult(
        value=Value.PASS if outcome is None else outcome.value,
        domain=sig.text(b"d"),
        identity=sig.text(b"i"),
        selector=sig.text(b"s"),
        algorithm=sig.text(b"a"),
        b_prefix=b_prefix,
        keysize=key.keysize if isinstance(key, _Key) else None,
        reason=None if outcome is None else outcome.reason,
    )


def header_b_prefixes(b_values: Sequence[str | None]) -> list[str | None]:
    """header.b for each signature: the shortest prefix of its b= (at least 8 characters)
    that no other signature's b= starts with (RFC 6008 section 4), or all of b= if none is.

    None for a signature without b=, or whose b= is not base64 (nothing sensible to
    write). In sorted order the b= sharing the longest prefix with a value is its
    neighbour, so a message with many signatures costs a sort, not a comparison of all
    pairs.
    """
    others = sorted(value for value in b_values if value)
    prefixes: list[str | None] = []
    for value in b_values:
        if not value or _BASE64.fullmatch(value) is None:
            prefixes.append(None)
            continue
        prefixes.append(value[: _unique_length(value, others)])
    return prefixes


def _unique_length(value: str, all_values: list[str]) -> int:
    first = bisect.bisect_left(all_values, value)
    last = bisect.bisect_right(all_values, value)
    if last - first > 1:
        return len(value)  # the same b= twice: no prefix tells them apart
    neighbours = all_values[first - 1 : first] + all_values[last : last + 1]
    shared = max((_shared_prefix_length(value, other) for other in neighbours), default=0)
    return min(len(value), max(HEADER_B_MIN_LENGTH, shared + 1))


def _shared_prefix_length(one: str, other: str) -> int:
    for position, (a, b) in enumerate(zip(one, other, strict=False)):
        if a != b:
            return position
    return min(len(one), len(other))


def _on_timeout(ctx: CheckContext) -> tuple[DkimResult, ...]:
    return (DkimResult(Value.TEMPERROR, reason="timeout"),)


def _on_crash(ctx: CheckContext) -> tuple[DkimResult, ...]:
    """The check raised on this message: the same message would make it raise again, so
    nothing about it is temporary (RFC 8601 section 2.7.1 permerror, never temperror)."""
    if ctx.message is None or not read_header(ctx.message).named("dkim-signature"):
        return (DkimResult(Value.NONE),)
    return (DkimResult(Value.PERMERROR, reason="message could not be processed"),)


CHECK = Check("dkim", Stage.DATA, check, on_timeout=_on_timeout, on_crash=_on_crash)
