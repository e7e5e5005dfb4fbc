"""dkimpy plumbing: the message as dkimpy holds it, its verifier off the event loop, and
its verdicts (False, or one of its exceptions) turned into our outcomes.

dkimpy does the canonicalisation, hashing and RSA arithmetic; it reports most outcomes as
`False` or as one exception class, which `verify_signature` tells apart (its
`ValidationError` by the message: body hash versus syntax).

CPU: canonicalising and hashing the message (once per signature) and the RSA operations run
in the thread pool the caller passes (the worker's `resources.dkim_pool`), not on the event
loop: a 10 MB message with five signatures costs seconds of hashing, during which every
other session must go on. A small message (up to INLINE_MAX_BYTES) is the exception: its
work takes less time than the hop to a thread and back, so it runs on the loop, yielding
between signatures. RSA is checked by OpenSSL (`checks.dkim.rsa`), not dkimpy's Python.
The keys are fetched before (checks.dkim.keys), so a worker never waits for DNS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import dkim

from arproxy.checks.base import Value
from arproxy.checks.dkim.keys import MIN_RSA_BITS
from arproxy.checks.dkim.rsa import install as use_openssl_rsa
from arproxy.checks.dkim.types import DKIMPY_INPUT_ERRORS, Key, Signature, Unverifiable, parse_tags
from arproxy.header import CRLF, Header, Message, header_of, normalize_newlines, only_crlf

log = logging.getLogger("arproxy.checks.dkim")

# dkimpy's ``dnsfunc(name, timeout=...)``: the key record's text.
DnsFunction = Callable[..., bytes]

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

    ``header`` is ``read_header(message)``. A message whose lines all end in CRLF (every
    ``Message`` from intake says so) is not scanned again field by field: its fields and
    body are taken as they are.
    """
    crlf = message.crlf_only if isinstance(message, Message) else only_crlf(message)
    normalize = _unchanged if crlf else normalize_newlines
    fields = [
        [_FieldName(field.raw[: field.colon]), normalize(field.value)] for field in header.fields
    ]
    if fields and not fields[-1][1].endswith(CRLF):
        # The last field of a message without body (only it can lack a line end, every
        # other one ends where the next begins): dkimpy adds the CRLF too.
        fields[-1][1] += CRLF
    return fields, normalize(message[header.body_start :])


def _unchanged(content: bytes) -> bytes:
    return content


# Up to this size a message is read and each of its signatures verified on the event loop
# thread: hashing 32 KiB and one RSA-2048 check (in C, checks.dkim.rsa) take well under a
# millisecond, less than handing the work to a thread and back. Larger ones go to the pool.
INLINE_MAX_BYTES = 32 * 1024


def runs_inline(message: bytes) -> bool:
    """Whether `message` is verified on the loop thread (see INLINE_MAX_BYTES)."""
    return len(message) <= INLINE_MAX_BYTES


class Verifier:
    """dkimpy's verifier for one message, behind typed methods.

    Its DKIM object keeps per-signature state (signature_fields, pk, keysize) that each
    verify() overwrites, so signatures are verified one after the other, never interleaved.
    The message is read by ``arproxy.header`` and set on the object (``headers``, ``body``:
    attributes dkimpy's ``set_message`` fills and its verify reads; pinned dkimpy < 1.2, and
    tests/unit/checks/test_dkim.py fails if they change), and verified through the methods
    ``DKIM.verify`` itself calls (`_verify`; the same test file compares both paths).
    """

    def __init__(self, message: bytes, pool: Executor | None = None) -> None:
        self._pool = pool  # where `verify` hashes; None: the loop's default executor
        self.inline = runs_inline(message)
        self._verified = 0  # signatures verified inline so far
        use_openssl_rsa()  # dkimpy's RSA check done by OpenSSL, same verdicts (checks.dkim.rsa)
        self._dkim = dkim.DKIM(b"", logger=log, minkey=MIN_RSA_BITS)
        header = header_of(message)  # intake's reading for a Message: not read again
        self._dkim.headers, self._dkim.body = dkimpy_message(message, header)
        # The DKIM-Signature values as dkimpy holds them, in its order (``headers`` has one
        # entry per field of ``header.fields``): dkimpy's ``idx`` counts these.
        self._signature_values = [
            value
            for field, (_, value) in zip(header.fields, self._dkim.headers, strict=True)
            if field.name.lower() == b"dkim-signature"
        ]

    def signatures(self) -> list[Signature]:
        """Every DKIM-Signature field, in header order (dkimpy's own indexing)."""
        return [
            Signature(index, parse_tags(value))
            for index, value in enumerate(self._signature_values)
        ]

    async def verify(self, signature: Signature, key: Key | Unverifiable) -> bool:
        """dkimpy's verdict on one signature, its key lookup answered with `key`;
        the hashing and RSA work run in the verifier's pool."""

        def replay_key(name: bytes, timeout: float = 0.0) -> bytes:
            # The lookup already went through our resolver (with its own timeout). "No
            # key" is raised, not returned as None: dkimpy turns None into a KeyFormatError
            # that it logs and answers with False, the same False as a bad signature.
            if isinstance(key, Unverifiable):
                raise Unverifiable(key.value, key.reason)
            return key.record

        work = functools.partial(self._verify, signature.index, key, replay_key)
        if self.inline:
            # A small message: a few hundred microseconds of CPU on the loop cost less than
            # two thread hops (and the GIL is one either way); yield between signatures
            # so that several never add up to one long stall. Not before the first: the
            # check then finishes at its first step, with no Task (checks.eager).
            if self._verified:
                await asyncio.sleep(0)
            self._verified += 1
            return bool(work())
        return bool(await asyncio.get_running_loop().run_in_executor(self._pool, work))

    def _verify(self, index: int, key: Key | Unverifiable, replay_key: DnsFunction) -> bool:
        """dkimpy's ``DKIM.verify(idx, dnsfunc)``, step by step through its own methods
        (``verify_headerprep``, then ``verify_sig_process``, as its async variant calls
        them), with the key as dkimpy read it when we judged it (`Key.evaluated`) instead of
        its ``load_pk_from_dns`` parsing the same record again (tags, base64, ASN.1): a sixth
        of dkimpy's time per message under the bench load. A Key without that
        reading, or none, goes through ``verify`` itself."""
        dkim_ = self._dkim
        if not isinstance(key, Key) or key.evaluated is None:
            return bool(dkim_.verify(idx=index, dnsfunc=replay_key))
        prep = dkim_.verify_headerprep(index)
        if not prep:
            return False
        sig, include_headers, sig_fields = prep
        # What verify_sig's load_pk_from_dns sets; evaluate_pk gave these for the record.
        dkim_.pk, dkim_.keysize, dkim_.ktag, dkim_.seqtlsrpt = key.evaluated
        return bool(dkim_.verify_sig_process(sig, include_headers, sig_fields[index], replay_key))


async def verify_signature(
    verifier: Verifier, sig: Signature, key: Key | Unverifiable
) -> Unverifiable | None:
    """Run dkimpy on one signature: None if it verified, else what to report."""
    try:
        verified = await verifier.verify(sig, key)
    except Unverifiable as outcome:
        return outcome
    except dkim.ValidationError as exc:
        log.info("dkim: signature %d: %s", sig.index, exc)
        return _validation_outcome(str(exc))
    except dkim.KeyFormatError as exc:
        # The key passed our checks; dkimpy found it unusable for this signature.
        log.info("dkim: signature %d: %s", sig.index, exc)
        return Unverifiable(Value.PERMERROR, "key unusable")
    except DKIMPY_INPUT_ERRORS as exc:
        log.info("dkim: signature %d: %r", sig.index, exc)
        return Unverifiable(Value.PERMERROR, "signature syntax error")  # RFC 6376 6.1.1
    except Exception as exc:
        # dkimpy parsing hostile input has more failure modes than the ones named above;
        # one of them must not cost the message its other signatures' results. The same
        # input would fail the same way again: permerror, never temperror. A fault on
        # content, not ours to page about: one line, not a traceback.
        log.warning("dkim: signature %d could not be processed: %r", sig.index, exc)
        log.debug("dkim: signature %d: traceback", sig.index, exc_info=True)
        return Unverifiable(Value.PERMERROR, "signature could not be processed")
    if not verified:
        # RFC 6376 6.1.3: PERMFAIL (signature did not verify); RFC 8601 2.7.1 fail.
        return Unverifiable(Value.FAIL, "signature did not verify")
    return None


def _validation_outcome(message: str) -> Unverifiable:
    for prefix, value, reason in _VALIDATION_OUTCOMES:
        if message.startswith(prefix):
            return Unverifiable(value, reason)
    return Unverifiable(Value.PERMERROR, "signature syntax error")  # RFC 6376 6.1.1
