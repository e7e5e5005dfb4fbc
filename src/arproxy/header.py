"""The one raw header reader: where the header ends and what each of its fields is.

Every part of arproxy that looks at the message header (intake, the rewrite, DKIM, DMARC's
From reader, the trusted-results reader) reads it through ``read_header``, so they all see
the same fields with the same boundaries. Pure: no I/O, no logging, never raises.

How the bytes are read (RFC 5322 section 2.1, with the line ends real messages have):

- A line ends at CRLF, at a bare LF, or at a bare CR: the lines Python's email package and
  ``bytes.splitlines`` find, and exactly the lines ``normalize_newlines`` (intake's
  ``bare_newline = "normalize"``) turns into CRLF lines. Reading a message and reading its
  normalised form give the same fields. (arproxy's SMTP intake refuses or normalises bare
  CR and LF by default, so behind it every line ends in CRLF; the rule matters for
  ``arproxy check`` and ``arproxy results``, which read files.)
- The header ends at the first empty line; the body starts after it (RFC 5322 section 2.1).
  A message whose first line is empty has an empty header. A message without an empty line
  is all header.
- A field starts with a line ``name *WSP ":"`` (RFC 5322 section 3.6.8, and the obsolete
  white space before the colon of section 4.5, which a reader must accept); its name is
  printable US-ASCII except ':'. A following line that starts with SP or HT continues it
  (folding, section 2.2.3).
- A line that is neither a field start nor a continuation is a stray line, and so is a
  continuation with nothing to continue (a header whose first line starts with white
  space). A stray line takes its own continuations with it: a field never absorbs a line
  that a reader would not have folded into it, and a stray line is never part of a field.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

# RFC 5322 section 3.6.8 ftext (%d33-57 / %d59-126), then the obsolete WSP of section 4.5.
_FIELD_START = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Where an item starts in a header whose every line ends in CRLF: after a CRLF, at a line
# that does not start with white space (which would continue the item before it).
_CRLF_ITEM_START = re.compile(rb"\r\n(?![ \t])")
_EMPTY_LINE_AFTER_CRLF = b"\r\n\r\n"
_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_WSP = (b" ", b"\t")
CRLF = b"\r\n"

_LEADING_CONTINUATION = "leading-continuation"
# A field start (its match), a line that is not a field (None), or a leading continuation.
_Start = re.Match[bytes] | None | str


@dataclass(frozen=True)
class Field:
    """One header field, byte for byte as written.

    ``raw`` is ``message[start:stop]``: the name, any white space before the colon, the colon,
    the value, every folded line and the final line end (absent only for a header that ends
    the message without one).
    """

    name: bytes  # as written, without the white space before the colon
    raw: bytes
    start: int  # offsets into the message
    stop: int
    colon: int  # offset of the colon within ``raw``

    @functools.cached_property
    def lower_name(self) -> str:
        """The name in lower case, for comparisons (field names are case-insensitive).
        Computed once per field: every consumer's ``Header.named`` compares it."""
        return self.name.decode("ascii").lower()

    @property
    def value(self) -> bytes:
        """Everything after the colon as written: folds and the final line end included."""
        return self.raw[self.colon + 1 :]

    def unfolded(self) -> bytes:
        """The value unfolded (RFC 5322 section 2.2.3: every line end is removed, the white
        space after it stays), without the final line end."""
        return _LINE_END.sub(b"", self.value)

    def with_crlf(self) -> bytes:
        """``raw`` with every line end written as CRLF (the bytes a CRLF-only reader sees
        after intake's normalisation); identical to ``raw`` when the message used CRLF."""
        return normalize_newlines(self.raw)


@dataclass(frozen=True)
class Stray:
    """Lines that belong to no field: a line that is not a field, or continuation lines at
    the very top of the header, with their own continuation lines."""

    kind: Literal["not-a-field", "leading-continuation"]
    start: int
    stop: int


@dataclass(frozen=True)
class Header:
    """The header of a message: its fields and stray lines in order, and where it ends.

    ``message[:end]`` is the header block (every field's lines, line ends included);
    ``message[end:body_start]`` is the empty line that ends it (empty if there is none);
    ``message[body_start:]`` is the body.
    """

    items: tuple[Field | Stray, ...]
    end: int
    body_start: int

    # Cached (the dataclass stays frozen and compares by its fields only): one Header is
    # shared by every consumer of a message (``Message``), each asking for its fields.
    @functools.cached_property
    def fields(self) -> tuple[Field, ...]:
        return tuple(item for item in self.items if isinstance(item, Field))

    @functools.cached_property
    def strays(self) -> tuple[Stray, ...]:
        return tuple(item for item in self.items if isinstance(item, Stray))

    @functools.cached_property
    def _by_name(self) -> dict[str, tuple[Field, ...]]:
        by_name: dict[str, list[Field]] = {}
        for field in self.fields:
            by_name.setdefault(field.lower_name, []).append(field)
        return {name: tuple(fields) for name, fields in by_name.items()}

    def named(self, name: str) -> tuple[Field, ...]:
        """The fields called ``name`` (any case), in header order."""
        return self._by_name.get(name.lower(), ())


def read_header(message: bytes) -> Header:
    """Read the header of ``message`` as the module docstring says. Never raises.

    A header whose lines all end in CRLF (every message behind intake) is read by
    ``_read_crlf_header``, which finds the same items without a step per line; any other
    by ``read_any_header``, line by line.
    """
    crlf = _read_crlf_header(message)
    return read_any_header(message) if crlf is None else crlf


def _read_crlf_header(message: bytes) -> Header | None:
    """``read_any_header(message)`` when the header block up to the first empty line has
    only CRLF line ends and the message does not start with one; None otherwise.

    There, an empty line is a CRLF right after a CRLF (the first CRLFCRLF), and an item
    starts at offset 0 and after each CRLF not followed by SP or HT: the same lines the
    line-by-line reader classifies, found by one search in C.
    """
    empty_line = message.find(_EMPTY_LINE_AFTER_CRLF)
    if empty_line < 0 or message.startswith(CRLF):
        return None  # no body, or an empty header: the general reader (rare)
    end = empty_line + len(CRLF)
    pairs = message.count(CRLF, 0, end)
    if message.count(b"\r", 0, end) != pairs or message.count(b"\n", 0, end) != pairs:
        return None  # a bare CR or LF in the header: the general reader decides
    starts = [0] + [found.end() for found in _CRLF_ITEM_START.finditer(message, 0, empty_line)]
    stops = [*starts[1:], end]
    items: list[Field | Stray] = []
    for start, stop in zip(starts, stops, strict=True):
        if start == 0 and message[:1] in _WSP:
            items.append(Stray("leading-continuation", start, stop))
            continue
        line_end = message.find(CRLF, start, stop)
        items.append(_item(message, start, stop, _FIELD_START.match(message, start, line_end)))
    return Header(tuple(items), end, end + len(CRLF))


def read_any_header(message: bytes) -> Header:
    """``read_header`` line by line, for any line ends (the general reader)."""
    starts: list[tuple[int, _Start]] = []  # where each item's first line starts, and what it is
    pos = 0
    end = body_start = len(message)
    while pos < len(message):
        line_end = _LINE_END.search(message, pos)
        content_end, next_pos = line_end.span() if line_end else (len(message), len(message))
        if content_end == pos:
            end, body_start = pos, next_pos  # the empty line: the body follows it
            break
        if message[pos : pos + 1] not in _WSP:
            starts.append((pos, _FIELD_START.match(message, pos, content_end)))
        elif not starts:
            starts.append((pos, _LEADING_CONTINUATION))
        # else: a continuation line of the item before it
        pos = next_pos
    stops = [start for start, _ in starts[1:]] + [end] if starts else []
    return Header(
        tuple(
            _item(message, start, stop, kind)
            for (start, kind), stop in zip(starts, stops, strict=True)
        ),
        end,
        body_start,
    )


def _item(message: bytes, start: int, stop: int, kind: _Start) -> Field | Stray:
    if kind is None:
        return Stray("not-a-field", start, stop)
    if isinstance(kind, str):
        return Stray("leading-continuation", start, stop)
    return Field(kind.group(1), message[start:stop], start, stop, kind.end() - 1 - start)


class Message(bytes):
    """Message content with its header read once: ``header`` is ``read_header(self)``.

    Intake reads the header of each message once and hands this object on; everything that
    reads the header later (the checks through their context, the rewrite) takes
    ``header_of(message)``, which for a ``Message`` is that one reading, not another pass
    over the bytes. A ``bytes`` subclass, so that it travels wherever the content did
    (``CheckContext.message``, the runner) unchanged; immutable like bytes: its attributes
    are set once, by ``__new__``. Slices and joins of it are plain bytes.

    ``crlf_only``: every line of the content ends in CRLF (behind intake: always), so
    consumers that need CRLF lines (dkimpy) can skip their own normalisation.
    """

    header: Header
    crlf_only: bool

    def __new__(
        cls, content: bytes, header: Header | None = None, *, crlf_only: bool | None = None
    ) -> Message:
        """``content`` as a Message. ``header`` and ``crlf_only``, when given, must be
        ``read_header(content)`` and ``only_crlf(content)`` (intake has just found them);
        else they are found here. One copy of ``content`` (a bytes subclass cannot share
        its buffer): a memcpy, against the passes over the bytes it saves."""
        message = super().__new__(cls, content)
        attributes = vars(message)
        attributes["header"] = read_header(content) if header is None else header
        attributes["crlf_only"] = only_crlf(content) if crlf_only is None else crlf_only
        return message

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Message is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Message is immutable: cannot delete {name!r}")


def header_of(message: bytes) -> Header:
    """The header of ``message``: read once already for a ``Message``, else read now."""
    if isinstance(message, Message):
        return message.header
    return read_header(message)


def as_message(content: bytes) -> Message:
    """``content`` as a ``Message`` (itself if it already is one): for the paths that
    start from a file (``arproxy check``), which read the header once here."""
    return content if isinstance(content, Message) else Message(content)


def normalize_newlines(content: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF: the lines ``read_header`` reads, all CRLF.

    ``content`` itself (no copy) when it has no bare CR or LF, the common case behind intake.
    """
    if only_crlf(content):
        return content
    return _BARE_NEWLINE.sub(CRLF, content)


def only_crlf(content: bytes) -> bool:
    """Whether every CR and LF of ``content`` is part of a CRLF pair.

    Three counts in C (no copy, no regex engine): every CRLF holds one CR and one LF, so
    when there are as many CRs and as many LFs as CRLFs, no CR or LF stands alone.
    """
    pairs = content.count(CRLF)
    return content.count(b"\r") == pairs and content.count(b"\n") == pairs


def first_bare_newline(content: bytes) -> int | None:
    """The offset of the first bare CR or bare LF in ``content``, or None."""
    if only_crlf(content):
        return None
    found = _BARE_NEWLINE.search(content)
    return None if found is None else found.start()
