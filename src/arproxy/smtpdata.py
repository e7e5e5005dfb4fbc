"""The octets of DATA (RFC 5321 section 4.5.2), found in pieces as they arrive. Pure.

aiosmtpd 1.4.6 reads DATA one line at a time (an await, a reader call and a debug log
record per line: ~15% of a worker's CPU under the bench load). `DataScanner` takes what
the client sent in pieces of any size and gives aiosmtpd's answer, but for the size:

- The data ends at the first line that is exactly "." (CRLF "." CRLF, or "." CRLF as
  the very first line). Lines end only at CRLF: a bare CR or LF belongs to its line,
  as in aiosmtpd (the SMTP smuggling fix); `arproxy.intake` judges those.
- Transparency (section 4.5.2): one leading dot is removed from each line.
- aiosmtpd's two refusals, both given only once the whole data is read: TOO_MUCH when
  the message passes `size_limit` octets (falsy: no limit), counted as RFC 1870
  (section 4) defines a message's size: CRLFs counted, neither the final "." line nor
  the doubled quoting dots (aiosmtpd counts those: a message of exactly the SIZE we
  offer was refused when a line began with a dot); TOO_LONG for a line of more than
  `line_limit` octets with its CRLF. The first in the stream wins, in aiosmtpd's order
  within a line: a line whose text alone passes `line_limit` overruns aiosmtpd's stream
  reader before it is counted; one that passes only with its CRLF is counted (and may
  be TOO_MUCH) first.
  The exact RFC 5321 section 4.5.3.1.6 bound on the text of a line is checked later
  (`arproxy.pipeline.has_line_over`); this one keeps aiosmtpd's.
- Memory is bounded: nothing is kept once refused, and at most 4 octets (a possible
  start of CRLF "." CRLF) are held back between pieces.
"""

from __future__ import annotations

import enum

_END = b"\r\n.\r\n"
# How a piece may end with the start of _END, longest first: those octets wait for the
# next piece. (A CR alone also waits: it may start the CRLF that ends a line.)
_END_STARTS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_CRLF = b"\r\n"


class Verdict(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too long"  # aiosmtpd: 500 Line too long
    TOO_MUCH = "too much"  # aiosmtpd: 552 Too much mail data


class DataScanner:
    """One DATA transfer: `feed` it the client's octets until `done`; then `verdict`,
    and `content()` (transparency undone) when the verdict is NOMINAL."""

    def __init__(self, *, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit or 0
        self.line_limit = line_limit
        self.verdict = Verdict.NOMINAL
        self.done = False
        # Octets received but not judged yet. At first, a CRLF the client never sent:
        # the data's first line is then found like any other, after a CRLF.
        self._held = _CRLF
        self._virtual = len(_CRLF)  # octets of _held the client never sent
        # The data judged so far (while NOMINAL): one buffer, not a list of pieces,
        # so that a client sending an octet per segment costs no object per octet.
        self._kept = bytearray()
        self._size = 0  # octets of the message judged so far (RFC 1870: no quoting dots)
        self._line = 0  # octets judged so far of the line in progress
        self._open = b""  # what is kept of the line in progress (for `unfinished_line`)

    def feed(self, piece: bytes) -> int:
        """Take the client's next octets; how many of them belong to the data: all
        of `piece` until the end, then up to and including the final "." CRLF (what
        follows is the client's next command). Sets `done` at the end."""
        held = self._held
        data = held + piece if held else piece
        end = data.find(_END)
        if end >= 0:
            self._judge(data[: end + len(_CRLF)])  # the last line's CRLF is data
            self._held = b""
            self.done = True
            return end + len(_END) - len(held)
        wait = _end_start(data)
        self._judge(data[: len(data) - wait] if wait else data)
        self._held = data[len(data) - wait :] if wait else b""
        return len(piece)

    def content(self) -> bytes:
        """The data of a NOMINAL transfer, one leading dot taken from each line."""
        assert self.done and self.verdict is Verdict.NOMINAL
        kept = self._kept
        if kept.startswith(b"."):
            del kept[0]  # the first line has no CRLF before it
        return bytes(kept).replace(b"\r\n.", _CRLF)

    @property
    def unfinished_line(self) -> bytes:
        """The octets of the line in progress (for the log line of a client that
        leaves mid-DATA; at most `line_limit` + 5 of them)."""
        line = self._open + self._held[self._virtual :]
        start = line.rfind(_CRLF)
        return line[start + len(_CRLF) :] if start >= 0 else line

    def _judge(self, chunk: bytes) -> None:
        """Count and keep `chunk`, which never ends inside a CRLF."""
        if self._virtual:
            skip = min(self._virtual, len(chunk))
            chunk, self._virtual = chunk[skip:], self._virtual - skip
        if not chunk:
            return
        if self.verdict is not Verdict.NOMINAL:
            self._track_open_line(chunk)
            return
        lines = chunk.split(_CRLF)
        # The common case in one test: no line comes near line_limit and the size
        # stays under size_limit (the line-by-line walk below decides otherwise).
        fits = self.line_limit - len(_CRLF)
        size = len(chunk) - self._quoting_dots(chunk, lines)
        if (
            self._line + len(lines[0]) <= fits
            and max(map(len, lines)) <= fits
            and (not self.size_limit or self._size + size <= self.size_limit)
        ):
            self._take(chunk, lines, size)
            return
        verdict = self._walk(lines)
        if verdict is Verdict.NOMINAL:
            self._take(chunk, lines, size)
            return
        self.verdict = verdict
        self._kept.clear()  # nothing more is kept: memory stays bounded
        self._open = b""
        self._track_open_line(chunk)

    def _walk(self, lines: list[bytes]) -> Verdict:
        """aiosmtpd's verdict on the lines of a chunk (the first continues the line in
        progress, the last is unfinished), line by line in its order."""
        end = self._size  # octets of data up to the end of the line at hand
        line = self._line
        last = len(lines) - 1
        for index, text in enumerate(lines):
            line += len(text)
            if line > self.line_limit:
                return Verdict.TOO_LONG  # aiosmtpd's reader overruns before counting
            if index == last:
                break
            end += len(text) + len(_CRLF)
            if text[:1] == b"." and (index or not self._line):
                end -= 1  # a doubled quoting dot is no part of the size (RFC 1870)
            if self.size_limit and end > self.size_limit:
                return Verdict.TOO_MUCH
            if line + len(_CRLF) > self.line_limit:
                return Verdict.TOO_LONG
            line = 0
        return Verdict.NOMINAL

    def _quoting_dots(self, chunk: bytes, lines: list[bytes]) -> int:
        """How many lines start in `chunk` with a dot (section 4.5.2: one is a quoting
        dot, no part of the message or its size); the first line of `chunk` starts
        there only if nothing of it was judged before."""
        dots = chunk.count(b"\r\n.")
        if not self._line and lines[0][:1] == b".":
            dots += 1
        return dots

    def _take(self, chunk: bytes, lines: list[bytes], size: int) -> None:
        self._kept += chunk
        self._size += size
        if len(lines) == 1:
            self._line += len(chunk)
            self._open += chunk
        else:
            self._line = len(lines[-1])
            self._open = lines[-1]

    def _track_open_line(self, chunk: bytes) -> None:
        start = chunk.rfind(_CRLF)
        line = chunk[start + len(_CRLF) :] if start >= 0 else self._open + chunk
        self._open = line[-(self.line_limit + 1) :]


def _end_start(data: bytes) -> int:
    """How many final octets of `data` may start CRLF "." CRLF (or a CRLF)."""
    for start in _END_STARTS:
        if data.endswith(start):
            return len(start)
    return 0
