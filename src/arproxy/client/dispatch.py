"""One entry for the three procedures: the protocol picks which one runs."""

from __future__ import annotations

from .model import ProbeOptions, ProbeResult, Protocol
from .probe_imap import probe_imap
from .probe_pop3 import probe_pop3
from .probe_smtp import probe_smtp


def probe(
    protocol: Protocol, host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """Run the procedure of ``protocol``; raises ProbeError when there is no answer."""
    procedures = {"smtp": probe_smtp, "imap": probe_imap, "pop3": probe_pop3}
    return procedures[protocol](host, port, options)
