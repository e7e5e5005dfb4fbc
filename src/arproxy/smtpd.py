"""The one place arproxy reaches into aiosmtpd's private parts.

`SMTPAdapter` is aiosmtpd's `SMTP` with each private hook arproxy needs turned into
a plain method a subclass (`server.ArproxySMTP`) implements. The hooks, and why:

- `line_length_limit` (class attribute read by `SMTP.__init__`): the DATA line
  bound follows `limits.max_line_length` (RFC 5321 section 4.5.3.1.6).
- `_create_session`: our session class, carrying the pipeline's `Session`.
- `_cb_client_connected` and `_reader`: the stream reader becomes
  `streams.ClientReader` (EOF ends reading, not the replies owed; bare LF refused).
- `eof_received`: aiosmtpd cancels the session on EOF; we keep answering.
- `_handler_coroutine`: the session task, observed so no exception goes unretrieved.
- `_tls_protocol`: the TLS layer STARTTLS built, switched to `HalfCloseSSLProtocol`.
- `_timeout_cb`: aiosmtpd closes an idle client without a word; RFC 5321 wants 421.
- `_reset_timeout`: one idle timer per session, moved only when it fires before the
  deadline (aiosmtpd makes a new one per command); DATA gets its own, longer bound.
- `_getparams`: MAIL/RCPT parameters read by the RFC 5321 grammar and our EHLO offer.
- `_authenticate`, `auth_PLAIN`, `auth_LOGIN`: the synchronous credential hook is
  bypassed so credentials are checked off the event loop.
- `push`: every reply passes here (enhanced codes on aiosmtpd's own replies, a log
  line for each refusal), and is written here: replies to pipelined commands go out
  in one write (RFC 2920), as do the lines of the EHLO reply.
- `smtp_EHLO`, `smtp_HELO`: no enhanced code inside the greeting reply.
- `smtp_STARTTLS`: refused inside TLS (RFC 3207 section 4.2: one TLS layer only).
- `smtp_MAIL`, `smtp_RCPT`: the path is read by RFC 5321 section 4.1.2 before
  aiosmtpd's lenient parser sees it, and the parameters are kept as the client
  sent them (aiosmtpd upper-cases them, values included).
- `_getaddr`: a plain path (`arproxy.envelope.plain_path`, what nearly every client
  sends) is read without aiosmtpd's e-mail header parser, which also builds a
  `typing.Protocol` class on every call (~0.3 s per 1000 messages under the bench
  load); its answer is the same (tests/unit/test_smtpd.py), anything else is its own.
- `smtp_DATA`: aiosmtpd's DATA with the data read in pieces (`streams.ClientReader.
  read_piece`, `smtpdata.DataScanner`) instead of an await and a debug log record
  per line (~15% of a worker's CPU); same replies, in the same order, same content,
  but for the size limit, counted as RFC 1870 says (no quoting dots).
  It calls aiosmtpd's `check_helo_needed`, `check_auth_needed`, `_call_handler_hook`
  and `_set_post_data_state`, and reads `_writer`, `_decode_data` and
  `_handle_hooks` (decoded data and the deprecated `process_message` are left to
  aiosmtpd's own smtp_DATA: arproxy uses neither).
- `challenge_auth`: the lines it reads are AUTH data, never to be logged.
- `sanitized_log` (as `aiosmtpd.smtp` names it): skipped when its logger would
  drop the record (`_sanitized_log`).
- `inspect` and `dir` (as `aiosmtpd.smtp` names them): `SMTP.__init__` builds its
  command, hook and AUTH tables on every connection with `inspect.getmembers` and
  `dir` on the instance and the handler, and reads the EHLO hook's signature (0.1 ms,
  most of the constructor, evaluating every property on the way). `_MemberTables`
  answers them from tables made once per class, listing only the names aiosmtpd
  keeps (`_DIR_PREFIXES`), and none for the adapter itself: its command table
  (`_smtp_methods`) is a `_CommandTable`, binding a method when it is looked up.
- `__smtp_syntax__` (set by aiosmtpd's `@syntax`, read by its HELP): each of our
  command overrides gets the original's (`_keep_help_syntax`).

`tests/unit/test_smtpd.py` fails if any of these disappears from aiosmtpd, and
pyproject pins aiosmtpd below 1.5.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any, AnyStr, NoReturn

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session

from arproxy.envelope import plain_path
from arproxy.replies import TLS_ALREADY_ACTIVE, too_many_errors
from arproxy.smtpdata import DataScanner, Verdict
from arproxy.streams import ClientReader, adopt_reader, adopt_tls_protocol

log = logging.getLogger("arproxy.server")

# What aiosmtpd itself provides and arproxy overrides, reads or calls (see above).
AIOSMTPD_HOOKS = (
    "line_length_limit",
    "_create_session",
    "_cb_client_connected",
    "eof_received",
    "_timeout_cb",
    "_reset_timeout",
    "_getparams",
    "_getaddr",
    "_authenticate",
    "auth_PLAIN",
    "auth_LOGIN",
    "push",
    "smtp_EHLO",
    "smtp_HELO",
    "smtp_MAIL",
    "smtp_RCPT",
    "smtp_DATA",
    "smtp_STARTTLS",
    "challenge_auth",
    "handle_exception",
    "check_helo_needed",  # called by our smtp_DATA, as by aiosmtpd's
    "check_auth_needed",
    "_set_post_data_state",
    "_call_handler_hook",
    "connection_made",
    "connection_lost",
    "_handle_client",
    "__init__",  # its use of inspect: _MemberTables
)
# Instance attributes set by aiosmtpd that arproxy reads.
AIOSMTPD_ATTRIBUTES = (
    "_handler_coroutine",
    "_tls_protocol",
    "_reader",
    "session",
    "envelope",
    "_auth_required",
    "_writer",
    "_decode_data",
    "_handle_hooks",
    "_smtp_methods",  # replaced by a _CommandTable
    "_timeout_handle",  # _reset_timeout's
    "_timeout_duration",
)

_PENDING = "arproxy: credentials to check"
# Octets of DATA taken from the reader at a time (asyncio receives up to 256 KiB).
_DATA_PIECE = 256 * 1024

# RFC 3463 codes for the replies aiosmtpd writes itself, which carry none.
_ENHANCED_BY_CODE = {
    221: "2.0.0",
    250: "2.0.0",
    252: "2.0.0",  # VRFY: "Cannot VRFY user" (Postfix: 252 2.0.0)
    421: "4.3.0",
    454: "4.7.0",  # STARTTLS: TLS not available (Postfix: 454 4.7.0)
    451: "4.3.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    538: "5.7.11",  # RFC 4954 section 6: encryption required for the mechanism
    552: "5.3.4",
    553: "5.1.3",
    554: "5.5.0",
    555: "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
# aiosmtpd closes the connection after this reply; RFC 5321 section 3.8 says a
# server that closes answers 421 (Postfix: "421 4.7.0 <host> Error: too many errors").
_AIOSMTPD_GOODBYE = "502 5.5.1 Too many unrecognized commands, goodbye."
# What a reply line may carry: printable ASCII. aiosmtpd echoes the client's command
# or argument in some replies (500 command "X" not recognized, 502 Could not VRFY X).
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
# The prefixes by which aiosmtpd's constructor filters `dir()` (its command and hook
# tables; tests/unit/test_smtpd.py checks its source says so).
_DIR_PREFIXES = ("smtp_", "handle_")


class _MemberTables(ModuleType):
    """`inspect` as aiosmtpd.smtp sees it: `getmembers` gives the `auth_` members
    (the only ones its constructor keeps) from a list of names made once per class,
    `signature` is computed once per function; the rest is `inspect` itself."""

    def __init__(self) -> None:
        super().__init__("inspect")
        self._auth_names: dict[type, tuple[str, ...]] = {}
        self._class_names: dict[type, tuple[tuple[str, ...], frozenset[str]]] = {}
        self._signatures: dict[Any, inspect.Signature] = {}
        self._commands: dict[type, dict[str, str]] = {}

    def names(self, obj: Any) -> list[str]:
        """`dir(obj)`'s names that aiosmtpd keeps (it filters them by the prefixes
        `_DIR_PREFIXES`; unsorted): the class's, listed once, and the instance's own.
        Only those: the ~300 others cost more to list and to filter than the tables
        aiosmtpd builds from them."""
        if isinstance(obj, SMTPAdapter):
            # Its command table is SMTPAdapter.__init__'s (_CommandTable, methods
            # bound on look-up): aiosmtpd gets no `smtp_` names to build its own.
            return []
        listed = self._class_names.get(type(obj))
        if listed is None:
            every = dir(type(obj))
            names = tuple(name for name in every if name.startswith(_DIR_PREFIXES))
            listed = self._class_names[type(obj)] = (names, frozenset(every))
        names, known = listed
        own = getattr(obj, "__dict__", None)
        if not own:
            return list(names)
        return [
            *names,
            *(name for name in own if name.startswith(_DIR_PREFIXES) and name not in known),
        ]

    def commands_of(self, cls: type) -> dict[str, str]:
        """aiosmtpd's command table keys ("MAIL") and the method names ("smtp_MAIL")
        of `cls`, listed once: what its constructor builds from `dir(self)`."""
        commands = self._commands.get(cls)
        if commands is None:
            commands = {m.replace("smtp_", ""): m for m in dir(cls) if m.startswith("smtp_")}
            _keep_help_syntax(cls, commands.values())
            self._commands[cls] = commands
        return commands

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    def getmembers(self, obj: Any) -> list[tuple[str, Any]]:
        names = self._auth_names.get(type(obj))
        if names is None:
            # Class attributes only: an instance's own `auth_` attribute (none in
            # aiosmtpd or arproxy) would come from its class's table, not from it.
            names = tuple(name for name in dir(type(obj)) if name.startswith("auth_"))
            self._auth_names[type(obj)] = names
        return [(name, getattr(obj, name)) for name in names]

    def signature(self, obj: Any) -> inspect.Signature:
        # A bound method's signature (self left out) is its function's, once bound.
        key = (getattr(obj, "__func__", obj), hasattr(obj, "__self__"))
        found = self._signatures.get(key)
        if found is None:
            found = self._signatures[key] = inspect.signature(obj)
        return found


# What aiosmtpd's `@syntax` decorator sets on a command method: its HELP text, the
# text added under ESMTP, and the attribute that must be true for HELP to list it.
_SYNTAX_ATTRIBUTES = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")


def _keep_help_syntax(cls: type, names: Iterable[str]) -> None:
    """Give each command method of `cls` that overrides one of aiosmtpd's the HELP
    text aiosmtpd's `@syntax` gave the original. aiosmtpd's HELP lists, and answers
    "HELP <command>" for, only methods carrying `__smtp_syntax__`; an override
    without it made HELP call DATA, MAIL, RCPT, EHLO and HELO unsupported (501),
    commands every SMTP server supports (RFC 5321 section 4.5.1). An override that
    sets its own text keeps it. Once per class (`_MemberTables.commands_of`)."""
    for name in names:
        method = getattr(cls, name)
        stock = getattr(SMTP, name, None)
        if hasattr(method, "__smtp_syntax__") or not hasattr(stock, "__smtp_syntax__"):
            continue
        function = getattr(method, "__func__", method)
        for attribute in _SYNTAX_ATTRIBUTES:
            setattr(function, attribute, getattr(stock, attribute))


# The logger methods aiosmtpd hands sanitized_log, and the level each logs at.
_LEVEL_OF: dict[Any, int] = {
    logging.Logger.debug: logging.DEBUG,
    logging.Logger.info: logging.INFO,
    logging.Logger.warning: logging.WARNING,
}


def _sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's `sanitized_log` (it masks AUTH data in a command line before
    logging it), skipped when its logger drops the record anyway: aiosmtpd calls
    it twice per command line, at debug and info (a regex match per line, ~0.04 s
    per 1000 messages), and arproxy keeps aiosmtpd's logger at errors (cli)."""
    level = _LEVEL_OF.get(getattr(func, "__func__", None))
    if level is not None and not func.__self__.isEnabledFor(level):  # type: ignore[attr-defined]
        return
    _STOCK_SANITIZED_LOG(func, msg, *args, **kwargs)


_STOCK_SANITIZED_LOG = aiosmtpd.smtp.sanitized_log


def _install_member_tables() -> _MemberTables:
    """Give aiosmtpd.smtp the `inspect` above and `_sanitized_log` (once; at the
    first connection, not at import, so importing arproxy changes nothing)."""
    module: Any = aiosmtpd.smtp
    tables = module.inspect
    if not isinstance(tables, _MemberTables):
        tables = _MemberTables()
        module.inspect = tables
        module.dir = tables.names  # a module global: found before the builtin
        module.sanitized_log = _sanitized_log
    return tables


class _CommandTable(Mapping[str, Any]):
    """aiosmtpd's `_smtp_methods` of one session ({"MAIL": session.smtp_MAIL, ...}),
    each method bound when aiosmtpd looks a command up (`get`, as its command loop
    and HELP do) rather than all of them per connection."""

    __slots__ = ("_names", "_owner")

    def __init__(self, owner: SMTP, names: dict[str, str]) -> None:
        self._owner = owner
        self._names = names  # "MAIL" -> "smtp_MAIL", shared by the class's sessions

    def get(self, command: str, default: Any = None) -> Any:
        name = self._names.get(command)
        return default if name is None else getattr(self._owner, name)

    def __getitem__(self, command: str) -> Any:
        return getattr(self._owner, self._names[command])

    def __contains__(self, command: object) -> bool:
        return command in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class SMTPAdapter(SMTP, metaclass=abc.ABCMeta):
    """aiosmtpd's SMTP with its private hooks turned into methods for a subclass
    (abstract: `on_client_eof` and `on_bare_newline` are the subclass's)."""

    def __init__(self, handler: Any, *, max_line_length: int, **kwargs: Any) -> None:
        # aiosmtpd's DATA line limit (read by its constructor): the text of a line,
        # plus CRLF, plus a transparency dot (RFC 5321 section 4.5.2).
        self.line_length_limit = max_line_length + 3
        # The idle timer (_reset_timeout): when it is due, and whether it waits.
        self._deadline = 0.0
        self._timer_pending = False
        tables = _install_member_tables()
        super().__init__(handler, **kwargs)
        commands: Any = _CommandTable(self, tables.commands_of(type(self)))
        self._smtp_methods = commands
        self._in_greeting_reply = False
        self._parameters_of = "MAIL"  # the command whose parameters _getparams reads
        # The MAIL/RCPT parameters as the client wrote them (aiosmtpd upper-cases).
        self.command_parameters: list[str] = []
        self.reading_auth_data = False  # inside an AUTH exchange (challenge_auth)
        # Replies written but not yet sent: while the client's next command is
        # already buffered, or within the EHLO reply (one write for all of them).
        self._held: list[bytes] = []

    # --- what a subclass provides (the reader's owner: arproxy.streams.LineOwner) ---

    reject_bare_newline = True

    @abc.abstractmethod
    async def on_client_eof(self, partial: bytes) -> NoReturn:
        """The client sent nothing more; `partial` is an unfinished last line."""

    @abc.abstractmethod
    async def on_bare_newline(self, line: bytes) -> NoReturn:
        """A command or AUTH line ended in LF without CR."""

    def new_session(self) -> Session:
        return Session(self.loop)

    def on_idle_timeout(self) -> None:
        """The client was idle for longer than the command timeout."""

    def screen_parameters(self, verb: str, params: Sequence[str]) -> dict[str, str | bool] | None:
        """MAIL or RCPT parameters (as the client wrote them) as aiosmtpd's dict, or
        None for its 501."""
        return SMTP._getparams(self, params)

    def screen_path(self, verb: str, arg: str | None) -> str | None:
        """A refusal (reply line) for the MAIL or RCPT argument, or None to go on."""
        return None

    async def decide_auth(self, parsed: AuthResult) -> AuthResult:
        """Credentials parsed by aiosmtpd (`auth_data` a LoginPassword) to decide."""
        return parsed

    def log_reply(self, status: str) -> None:
        """Every reply, as written (CRLF between lines)."""

    def after_reply(self) -> None:
        """A reply was written."""

    def closes_after(self, response: bytes) -> bool:
        """Whether the connection closes once `response` is written: 221 (RFC 5321
        section 4.1.1.10) and 421 (section 3.8)."""
        return response[:3] in (b"221", b"421")

    def before_last_reply(self) -> None:
        """The session's last reply is about to be written (`closes_after`): the
        client may connect again as soon as it reads it."""

    # --- what aiosmtpd's private parts give access to ---

    @property
    def reading_over(self) -> bool:
        """The connection is closing (QUIT answered, or closed after a reply): the
        reader reads nothing more (arproxy.streams.ClientReader)."""
        transport = self.transport
        return transport is None or transport.is_closing()

    @property
    def session_task(self) -> asyncio.Task[None] | None:
        task: asyncio.Task[None] | None = self._handler_coroutine
        return task

    @property
    def replies_held(self) -> bool:
        return bool(self._held)

    def flush_replies(self) -> None:
        """Send the replies held back (before waiting for the client, and before
        any close that does not pass through `push`)."""
        if self._held:
            data, self._held = b"".join(self._held), []
            self._writer.write(data)

    def set_timeout(self, seconds: float | None = None) -> None:
        """The idle bound from now on (None: the command timeout)."""
        self._reset_timeout(seconds)

    # --- the overrides ---

    def _create_session(self) -> Session:
        return self.new_session()

    def _timeout_cb(self) -> None:
        self.on_idle_timeout()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The idle bound is `duration` (default: the command timeout) from now.

        aiosmtpd cancels its timer and makes a new one on every command (~0.3 s per
        1000 messages under the bench load); here one timer waits, and only moves
        when the new deadline is earlier than its own. A timer that fires before
        the deadline is re-armed for the rest (`_on_timer`); at or after it, the
        client is told so (`_timeout_cb`) as in aiosmtpd.
        """
        loop = self.loop
        deadline = loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        handle = self._timeout_handle
        if handle is not None:
            if self._timer_pending and not handle.cancelled() and handle.when() <= deadline:
                return  # fires first, and re-arms for the rest
            handle.cancel()
        self._timer_pending = True
        self._timeout_handle = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # The handle that fired is the one armed last: armed for `when()`.
        fired = self._timeout_handle
        if fired is not None and self._deadline > fired.when():
            self._timeout_handle = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._timer_pending = False
        self._timeout_cb()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._tls_protocol is not None:
            # After STARTTLS: give the TLS layer our EOF handling (arproxy.streams).
            adopt_tls_protocol(self._tls_protocol)

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super()._cb_client_connected(adopt_reader(reader, self), writer)

    def eof_received(self) -> bool | None:
        """The client closed its sending side: stop reading, but keep answering.

        aiosmtpd cancels the session here, losing the replies owed for the
        commands already buffered (a pipelined end of DATA and QUIT, RFC 5321
        section 3.8). The reader hands those over first and then reports the EOF
        (`on_client_eof`), which closes the connection. True keeps a plain TCP
        socket half-open; over TLS, arproxy.streams keeps it open.
        """
        asyncio.StreamReaderProtocol.eof_received(self)  # feeds EOF to the reader
        # Over TLS the return value means nothing (asyncio warns about True); the
        # transport may be closing already, so its extra info is not asked.
        session = self.session
        return session is None or session.ssl is None

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._path_command("MAIL", super().smtp_MAIL, arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._path_command("RCPT", super().smtp_RCPT, arg)

    async def _path_command(
        self, verb: str, command: Callable[[str | None], Awaitable[None]], arg: str | None
    ) -> None:
        # aiosmtpd checks HELO, AUTH and the command order first; the path is ours
        # only once those passed, so the refusal is given where aiosmtpd would parse.
        if arg is not None and self._ready_for(verb):
            refusal = self.screen_path(verb, arg)
            if refusal is not None:
                await self.push(refusal)
                return
        self._parameters_of = verb
        self.command_parameters = _parameters_as_sent(arg)
        await command(arg)

    def _ready_for(self, verb: str) -> bool:
        """Whether aiosmtpd would get as far as parsing the path of `verb`."""
        session, envelope = self.session, self.envelope
        if session is None or envelope is None or not session.host_name:
            return False
        if self._auth_required and not session.authenticated:
            return False
        return bool(envelope.mail_from) if verb == "RCPT" else not envelope.mail_from

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's (address, rest) for the path at the start of `arg` (stripped
        of the keyword): a plain path read here, anything else by aiosmtpd."""
        found = plain_path(arg)
        if found is None:
            return self._library_getaddr(arg)
        mailbox, rest = found
        if not mailbox:
            return "<>", rest  # the header parser's null path: the rest as it is
        if rest[:1] in (" ", "\t"):
            # The header parser takes the white space after the path (str.lstrip's).
            rest = rest.lstrip()
        if rest[:1] == "(":
            return self._library_getaddr(arg)  # and comments: left to it
        if self.local_part_limit and len(mailbox.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return mailbox, rest

    def _library_getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own reading of `arg`. Its e-mail header parser catches its own
        HeaderParseError but raises others on some hostile paths (AttributeError for
        `<a@[1.2.3.4>`, an address literal without its "]"): any exception of the
        parser is a malformed address (None: aiosmtpd's 553 5.1.3), with one log line,
        never a traceback and a 451."""
        try:
            return SMTP._getaddr(self, arg)
        except Exception as exc:  # noqa: BLE001  # the library's fault, not ours: a refusal
            log.info("path %r refused: the e-mail header parser failed (%s)", arg[:80], exc)
            return None, None

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4.6's DATA, reading the data in pieces (see the module doc)."""
        reader = self._reader
        if (
            self._decode_data
            or "DATA" not in self._handle_hooks
            or not isinstance(reader, ClientReader)
        ):
            await super().smtp_DATA(arg)  # what arproxy never uses: aiosmtpd's own
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        scanner = DataScanner(size_limit=self.data_size_limit, line_limit=self.line_length_limit)
        try:
            await self._read_data(reader, scanner)
        except asyncio.CancelledError:
            # As aiosmtpd: the connection was lost during DATA.
            aiosmtpd.smtp.log.info("Connection lost during DATA")
            self._writer.close()
            raise
        # RFC 5321 section 4.2.5 as aiosmtpd reads it: refused once all is read.
        if scanner.verdict is Verdict.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        elif scanner.verdict is Verdict.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
        if scanner.verdict is not Verdict.NOMINAL:
            self._new_envelope()
            return
        content = scanner.content()
        envelope.content = content
        envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._new_envelope()
        await self.push("250 OK" if status is MISSING else status)

    def _new_envelope(self) -> None:
        reset: Callable[[], None] = self._set_post_data_state  # untyped in aiosmtpd
        reset()

    async def _read_data(self, reader: ClientReader, scanner: DataScanner) -> None:
        """Feed `scanner` until the end of the data; what follows goes back."""
        while True:
            piece = await reader.read_piece(_DATA_PIECE)
            if not piece:
                await self.on_client_eof(scanner.unfinished_line)
            used = scanner.feed(piece)
            if scanner.done:
                reader.unread(piece[used:])
                return

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # aiosmtpd hands its upper-cased copy; the client's own spelling is read
        # (keywords are case-insensitive, values such as ENVID and ORCPT are not).
        as_sent = self.command_parameters
        if [p.upper() for p in as_sent] != list(params):
            as_sent = list(params)  # not the same words: trust aiosmtpd's
        screened = self.screen_parameters(self._parameters_of, as_sent)
        if screened is None:
            return None
        # aiosmtpd compares BODY's value with upper-case literals itself.
        return {
            k: v.upper() if k == "BODY" and isinstance(v, str) else v for k, v in screened.items()
        }

    async def smtp_STARTTLS(self, arg: str) -> None:
        session = self.session
        if not arg and (self._tls_protocol is not None or (session and session.ssl)):
            # RFC 3207 section 4.2: no second TLS layer (Postfix's reply).
            await self.push(str(TLS_ALREADY_ACTIVE))
            return
        await super().smtp_STARTTLS(arg)

    async def challenge_auth(self, *args: Any, **kwargs: Any) -> Any:
        # The client's answer to a 334 challenge is a credential (RFC 4954 section 4).
        self.reading_auth_data = True
        try:
            return await super().challenge_auth(*args, **kwargs)
        finally:
            self.reading_auth_data = False

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's hook is synchronous; hand the credentials back to the async
        # auth_PLAIN / auth_LOGIN below, which decide off the event loop.
        return AuthResult(success=False, handled=False, message=_PENDING, auth_data=auth_data)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._decide(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._decide(await super().auth_LOGIN(server, args))

    async def _decide(self, parsed: AuthResult) -> AuthResult:
        if parsed.message is not _PENDING:
            return parsed  # cancelled by the client, or already answered by aiosmtpd
        return await self.decide_auth(parsed)

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting(super().smtp_EHLO, hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting(super().smtp_HELO, hostname)

    async def _greeting(self, command: Callable[[str], Awaitable[None]], hostname: str) -> None:
        # The EHLO lines (250-PIPELINING...) and the HELO reply get no enhanced code,
        # and go out in one write (aiosmtpd pushes one line at a time).
        self._in_greeting_reply = True
        try:
            await command(hostname)
        finally:
            self._in_greeting_reply = False
            if not self._reader_has_line():
                self.flush_replies()

    def _reader_has_line(self) -> bool:
        reader = self._reader
        return isinstance(reader, ClientReader) and reader.has_line()

    async def push(self, status: AnyStr) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():  # self.reading_over, inlined
            # Closing (after 221, or a reply that ends the session): nothing more
            # is said or logged, e.g. a second "421 ... sent too many times".
            return
        response = self._wire_form(status) if isinstance(status, str) else status
        if self.closes_after(response):
            self.before_last_reply()
        self._held.append(response + b"\r\n")
        if not self._may_hold(response):
            self.flush_replies()
            await self._writer.drain()
        self.after_reply()

    def _wire_form(self, status: str) -> bytes:
        """The reply line(s) `status` as written, logged (`log_reply`)."""
        if status == _AIOSMTPD_GOODBYE:
            status = str(too_many_errors(self.hostname))
        elif not self._in_greeting_reply:
            status = with_enhanced_code(status)
        status = wire_safe(status)
        self.log_reply(status)
        # As aiosmtpd's push encodes (UTF-8 only once SMTPUTF8 is offered).
        return status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")

    def _may_hold(self, response: bytes) -> bool:
        """Whether a reply may wait for the next one: within the EHLO reply, or while
        the client's next command is already buffered (RFC 2920 section 3.2: the
        server may buffer replies to a group of pipelined commands). Never a reply
        after which the connection closes or the TLS layer starts (221, 421, 220):
        it goes out at once, with those held before it."""
        if response[:3] in (b"220", b"221", b"421"):
            return False
        return self._in_greeting_reply or self._reader_has_line()


def with_enhanced_code(status: str) -> str:
    """aiosmtpd's own reply `status` with the RFC 3463 code its reply code implies;
    a reply that has one (or where none belongs: 220, 235, 334, 354) is unchanged."""
    if _HAS_ENHANCED.match(status) or len(status) < 4 or not status[:3].isdigit():
        return status
    enhanced = _ENHANCED_BY_CODE.get(int(status[:3]))
    if enhanced is None:
        return status  # 220, 235, 334, 354: no enhanced code belongs there
    return f"{status[:4]}{enhanced} {status[4:]}"


def wire_safe(status: str) -> str:
    """`status` (lines joined by CRLF) with every character that is not printable
    ASCII escaped as `\\xNN` (`\\uNNNN`): aiosmtpd echoes client bytes in some
    replies, and a NUL, a bare CR or a byte that was not UTF-8 must not go back."""
    if status.isascii() and (status.isprintable() or status.replace("\r\n", "").isprintable()):
        # Nearly every reply (ours, the downstream's, cleaned by arproxy.replies): for
        # ASCII, isprintable() is exactly \x20-\x7e, what _NOT_PRINTABLE leaves alone;
        # without the CRLFs between lines, the lines' characters are left, in order.
        return status
    return "\r\n".join(_NOT_PRINTABLE.sub(_escape, line) for line in status.split("\r\n"))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        code -= 0xDC00
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _parameters_as_sent(arg: str | None) -> list[str]:
    """The words after the path of a MAIL or RCPT argument, as the client sent them."""
    if not arg:
        return []
    _, closing, rest = arg.partition(">")
    return rest.split() if closing else arg.split()[1:]
