"""Outgoing signatures: DKIM signing of submitted mail and ARC sealing of relayed mail.

`load_signing(config)` reads the keys (at start-up, and again at reload) and returns the
`Signing` the pipeline applies after its rewrite: `Signing.stamp` puts the new fields on
top of the message as relayed (RFC 6376 section 5; RFC 8617 section 5.1):

    ARC-Seal / ARC-Message-Signature / ARC-Authentication-Results   ([arc] seal)
    DKIM-Signature                                                  ([dkim_sign])
    Authentication-Results / Received                               (ours, as always)

The CPU work (hashing, one RSA or Ed25519 signature each) runs on the event loop for a
small message and in the worker's DKIM pool for a large one, as DKIM verification does
(`checks.dkim.dkimpy.runs_inline`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import dkim

from arproxy.checks.base import MethodResult, Value
from arproxy.checks.dkim.dkimpy import runs_inline
from arproxy.checks.dkim.rsa import install as use_openssl_rsa
from arproxy.checks.dmarc.author import AuthorError, author_domains
from arproxy.config import Config
from arproxy.dns import Resolver, Status
from arproxy.signing.arc_seal import MAX_INSTANCE, ArcSealer, Chain, key_names, read_chain
from arproxy.signing.dkim_sign import DkimSigner
from arproxy.signing.keys import SigningKeyError, load_key
from arproxy.signing.signature import Body, Fields, read_fields, read_for_signing

__all__ = ["Signing", "SigningKeyError", "load_signing"]

log = logging.getLogger("arproxy.signing")

_AR_NAME = b"Authentication-Results:"
# A chain naming more keys than this is abuse, not forwarding: it is failed unread.
MAX_KEY_LOOKUPS = 20
_CV_OF = {Value.PASS: b"pass", Value.FAIL: b"fail"}


def load_signing(config: Config) -> Signing:
    """The signers `[dkim_sign]` and `[arc]` describe, their keys read now.
    Raises SigningKeyError (one line naming the file) when a key cannot be used."""
    dkim_signer = None
    if config.dkim_sign.domains:
        assert config.dkim_sign.key is not None  # config.py requires it with domains
        dkim_signer = DkimSigner(
            domains=frozenset(config.dkim_sign.domains),
            selector=config.dkim_sign.selector,
            key=load_key(config.dkim_sign.key),
            headers=config.dkim_sign.headers,
            canonicalization=config.dkim_sign.canonicalization.encode("ascii"),
        )
    sealer = None
    if config.arc.seal:
        assert config.arc.key is not None  # config.py requires it with seal
        key = load_key(config.arc.key)
        if key.kind != "rsa":
            # dkimpy's arc_verify and Mail::DKIM's ARC verifier refuse any other a=
            # than rsa-sha256 in an ARC set: an Ed25519 seal would fail everywhere.
            raise SigningKeyError(
                f"{config.arc.key}: an Ed25519 key; ARC verifiers accept only RSA seals"
            )
        sealer = ArcSealer(config.arc.domain, config.arc.selector, key)
    return Signing(dkim_signer, sealer)


@dataclass(frozen=True)
class Signing:
    """What is signed on the way out; `Signing()` signs nothing."""

    dkim: DkimSigner | None = None
    arc: ArcSealer | None = None

    async def stamp(
        self,
        message: bytes,
        field: str,
        results: Sequence[MethodResult],
        *,
        authenticated: bool,
        resolver: Resolver,
        pool: Executor | None,
    ) -> bytes:
        """`message` (as relayed: our `field` and Received on top) with the new
        signature fields prepended; `message` itself when nothing is to be signed.

        `authenticated`: the session passed SMTP AUTH (only then is DKIM signing
        considered); `results`: our checks' results, whose `arc` result (if any) gives
        the chain's state for cv=. Never raises on the message's content: what cannot
        be signed is relayed unsigned, and logged.
        """
        if self.dkim is None and self.arc is None:
            return message
        domain = self._dkim_domain(message) if authenticated and self.dkim else None
        plan = _Plan(domain=domain)
        if self.arc is not None:
            plan.cv = await self._chain_state(message, results, resolver, pool)
        if plan.domain is None and plan.cv is None:
            return message
        payload = field.encode("utf-8")[len(_AR_NAME) :].lstrip(b" \t")
        work = _Work(self, message, plan, payload, int(time.time()))
        if runs_inline(message):
            await asyncio.sleep(0)  # several messages never add up to one long stall
            return work.run()
        return await asyncio.get_running_loop().run_in_executor(pool, work.run)

    def _dkim_domain(self, message: bytes) -> str | None:
        """The author domain to sign for, or None (logged) when it is not ours."""
        assert self.dkim is not None
        try:
            domains = author_domains(message)
        except AuthorError as exc:
            log.info("dkim_sign: From unreadable (%s): not signed", exc)
            return None
        if len(domains) != 1:
            log.info("dkim_sign: %d author domains: not signed", len(domains))
            return None
        if not self.dkim.signs_for(domains[0]):
            log.info("dkim_sign: From domain %s not in dkim_sign.domains: not signed", domains[0])
            return None
        return domains[0]

    async def _chain_state(
        self,
        message: bytes,
        results: Sequence[MethodResult],
        resolver: Resolver,
        pool: Executor | None,
    ) -> bytes | None:
        """cv= for our seal (none, pass, fail), or None when no seal is to be added."""
        chain = read_chain(read_fields(message))
        if chain.latest == 0 and not chain.broken:
            return b"none"
        if chain.latest_cv == b"fail":
            log.info("arc: the chain already failed (cv=fail at i=%d): not sealed", chain.latest)
            return None  # RFC 8617 section 5.1.1
        if chain.latest >= MAX_INSTANCE:
            log.info("arc: i=%d would exceed %d: not sealed", chain.latest + 1, MAX_INSTANCE)
            return None
        if not chain.complete():
            return b"fail"
        verdicts = [result for result in results if result.method == "arc"]
        if verdicts:  # the ARC verification check's verdict on this very chain
            if getattr(verdicts[0], "temporary", False):
                # A key lookup failed for now: cv=fail would end the chain for good at
                # every later hop (RFC 8617 section 5.1.1); leave it unsealed instead.
                log.info("arc: the chain's keys are unavailable for now: not sealed")
                return None
            return _CV_OF.get(verdicts[0].value, b"fail")
        return await _verify_chain(message, chain, resolver, pool)


@dataclass
class _Plan:
    domain: str | None  # d= of the DKIM signature, None: no DKIM signature
    cv: bytes | None = None  # cv= of the ARC seal, None: no seal


@dataclass(frozen=True)
class _Work:
    """The CPU part of a stamp, run on the loop or in the pool."""

    signing: Signing
    message: bytes
    plan: _Plan
    payload: bytes
    timestamp: int

    def run(self) -> bytes:
        fields, data = read_for_signing(self.message)
        body = Body(data)  # one bh= per canonicalisation, shared by DKIM and ARC
        message = self.message
        if self.plan.domain is not None and self.signing.dkim is not None:
            signature = self.signing.dkim.signature(fields, body, self.plan.domain, self.timestamp)
            message = signature + message
            fields = read_fields(message)
        if self.plan.cv is not None and self.signing.arc is not None:
            arc_set = self.signing.arc.seal(
                fields, body, read_chain(fields), self.plan.cv, self.payload, self.timestamp
            )
            message = b"".join(arc_set) + message
        return message


async def _verify_chain(
    message: bytes, chain: Chain, resolver: Resolver, pool: Executor | None
) -> bytes | None:
    """pass or fail for the existing chain (RFC 8617 section 5.2), by dkimpy's ARC
    verifier with the keys fetched first through our resolver; None (no seal, logged)
    when a key lookup failed temporarily: a later hop can still judge the chain."""
    records: dict[str, bytes | None] = {}
    wanted = key_names(chain)
    if len(wanted) > MAX_KEY_LOOKUPS:
        log.info("arc: the chain names %d keys (over %d): failed", len(wanted), MAX_KEY_LOOKUPS)
        return b"fail"
    for name in wanted:
        lookup = await resolver.lookup(name, "TXT")
        if lookup.status is Status.TEMPFAIL:
            log.info("arc: key %s unavailable (temporary DNS failure): not sealed", name)
            return None
        texts = lookup.texts()
        records[name] = texts[0] if texts else None

    def dnsfunc(name: bytes, timeout: float = 0.0) -> bytes | None:
        return records.get(name.decode("ascii", "replace").lower().rstrip("."))

    def verify() -> bytes:
        use_openssl_rsa()
        arc = dkim.ARC(b"", logger=log, minkey=1024)
        fields: Fields
        fields, arc.body = read_for_signing(message)
        arc.headers = fields
        try:
            cv, _, reason = arc.verify(dnsfunc=dnsfunc)
        except Exception as exc:  # noqa: BLE001  # dkimpy on hostile input: chain invalid
            log.info("arc: the chain could not be verified: %r", exc)
            return b"fail"
        if cv != dkim.CV_Pass:
            log.info("arc: the chain did not verify: %s", reason)
            return b"fail"
        return b"pass"

    if runs_inline(message):
        return verify()
    return await asyncio.get_running_loop().run_in_executor(pool, verify)
