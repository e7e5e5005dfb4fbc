"""The users file for SMTP AUTH, and `arproxy passwd` to maintain it.

One `user:hash` per line; `#` starts a comment line, blank lines are ignored. The hash
is an argon2id PHC string as written by argon2-cffi's `PasswordHasher` with its
defaults: the RFC 9106 "second recommended" low-memory profile (64 MiB, t=3, p=4),
about 0.1 s per check on one core. That cost is the point (it makes a stolen file
expensive to attack), so checks run in a thread pool the caller passes (the worker's
`resources.hash_pool`, `auth.hash_threads`), never on the event loop.

Loading validates every line, hashes included, so a bad file is reported once, at
load or reload time, naming file and line; `verify` itself never raises.
"""

from __future__ import annotations

import asyncio
import binascii
import getpass
import re
import secrets
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

from arproxy.files import write_atomically

MAX_USER_LENGTH = 256
FILE_MODE = 0o600

EXIT_OK = 0
EXIT_FAILURE = 1  # the file could not be read or written
EXIT_USAGE = 2  # a user name or password we refuse
EXIT_INTERRUPTED = 130

# Printable US-ASCII without space and ':' (0x21-0x39, 0x3B-0x7E). User names end up
# in Authentication-Results as smtp.auth=<user>; the formatter quotes what needs it.
_USER = re.compile(r"[!-9;-~]+")
_B64 = r"[A-Za-z0-9+/]+"
_ARGON2ID = re.compile(rf"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$({_B64})\$({_B64})")
# argon2-cffi's defaults (what `PasswordHasher()` uses): RFC 9106's low-memory profile.
_PROFILE = profiles.RFC_9106_LOW_MEMORY


class UsersFileError(Exception):
    """A users file that cannot be used; `str()` names the file and, if known, the line."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + problem)


class CredentialError(ValueError):
    """A user name or password that cannot go into the users file."""


@dataclass(frozen=True)
class _Cost:
    """What an argon2id check costs: everything in a PHC string but salt and digest."""

    memory: int
    time: int
    parallelism: int
    salt_len: int
    hash_len: int


_DEFAULT_COST = _Cost(
    _PROFILE.memory_cost,
    _PROFILE.time_cost,
    _PROFILE.parallelism,
    _PROFILE.salt_len,
    _PROFILE.hash_len,
)


class UsersFile:
    """The users and their hashes, as loaded from one file; immutable.

    Reloading means loading again and swapping the object: a check already running
    finishes against the file it started with.
    """

    def __init__(self, path: str, hashes: Mapping[str, str]) -> None:
        self.path = path
        self._hashes: Mapping[str, str] = MappingProxyType(dict(hashes))
        self._dummy = _dummy_hash(hashes.values())

    @classmethod
    def load(cls, path: str | Path) -> UsersFile:
        """Read and validate `path`; raises UsersFileError. Blocking, but cheap (no hashing)."""
        source = str(path)
        return cls(source, parse_users(_read_text(source), source))

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, user: object) -> bool:
        return user in self._hashes

    async def verify(
        self, user: str | bytes, password: str | bytes, *, pool: Executor | None = None
    ) -> bool:
        """Whether `password` is `user`'s; False for a wrong password or an unknown user.

        An unknown user is checked against a dummy hash of the same cost as the real
        ones, so the time taken does not tell an attacker which users exist. The hash
        runs in `pool` (the worker's `hash_pool`; None: the loop's default executor, for
        tests and one-shot tools). Each check holds 64 MiB while it runs: a bounded pool
        caps that memory under a flood of AUTH attempts.
        """
        name = _decode_user(user)
        stored = self._hashes.get(name) if name is not None else None
        loop = asyncio.get_running_loop()
        matched = await loop.run_in_executor(pool, _matches, stored or self._dummy, password)
        return matched and stored is not None


def parse_users(text: str, source: str) -> dict[str, str]:
    """The `user -> hash` entries of a users file's text; raises UsersFileError."""
    hashes: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, stored = line.partition(":")
        if not colon:
            raise UsersFileError(source, number, "expected user:hash")
        problem = user_problem(user) or _hash_problem(stored)
        if problem:
            raise UsersFileError(source, number, problem)
        if user in hashes:
            raise UsersFileError(
                source, number, f"user {user!r} already defined on line {first_seen[user]}"
            )
        hashes[user] = stored
        first_seen[user] = number
    return hashes


def user_problem(user: str) -> str | None:
    """Why `user` cannot be a user name, or None if it can."""
    if not user:
        return "empty user name"
    if len(user) > MAX_USER_LENGTH:
        return f"user name longer than {MAX_USER_LENGTH} characters"
    if not _USER.fullmatch(user):
        return f"user name {user!r} must be printable ASCII without ':' or white space"
    if user.startswith("#"):
        return f"user name {user!r} must not start with '#' (it would read as a comment)"
    return None


# --- changing a password ---------------------------------------------------------------


def set_password(
    path: str | Path, user: str, password: str, *, hasher: PasswordHasher | None = None
) -> None:
    """Add `user` or change their password, keeping every other line as it was.

    The file is replaced atomically with mode 0600 (its owner and group are kept
    when we may, so `sudo arproxy passwd` leaves it readable by the daemon's user).
    `hasher` defaults to argon2-cffi's defaults; tests pass a cheap one. Blocking: it
    hashes (~0.1 s) and fsyncs. Raises CredentialError or UsersFileError.
    """
    problem = user_problem(user)
    if problem:
        raise CredentialError(problem)
    if not password:
        raise CredentialError("empty password")
    target = Path(path).resolve()  # a symlinked file is updated, not replaced by a file
    source = str(path)
    text = _read_text(source) if target.exists() else ""
    entry = f"{user}:{(hasher or PasswordHasher.from_parameters(_PROFILE)).hash(password)}"
    try:
        _write_atomically(target, _with_entry(text, user, entry))
    except OSError as exc:
        raise UsersFileError(source, None, f"cannot write: {exc.strerror or exc}") from exc


def _with_entry(text: str, user: str, entry: str) -> str:
    """`text` with `user`'s line replaced by `entry` (or `entry` appended)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the text ended with a newline (or was empty)
    kept: list[str] = []
    placed = False
    for line in lines:
        if _line_user(line) != user:
            kept.append(line)
        elif not placed:  # later duplicates would make the file unloadable: drop them
            kept.append(entry)
            placed = True
    if not placed:
        kept.append(entry)
    return "\n".join(kept) + "\n"


def _line_user(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    user, colon, _ = stripped.partition(":")
    return user if colon else None


def _write_atomically(target: Path, text: str) -> None:
    write_atomically(target, text.encode("utf-8"), FILE_MODE, keep_owner=True)


# --- arproxy passwd -------------------------------------------------------------------


def passwd_main(path: str, user: str, password: str | None) -> int:
    """`arproxy passwd FILE USER`: set USER's password, asked for unless given.

    On a terminal the password is asked twice, without echo; otherwise one line is
    read from standard input, for scripts. Exit codes: EXIT_OK, EXIT_USAGE (a user
    name or password we refuse), EXIT_FAILURE (the file), EXIT_INTERRUPTED.
    """
    try:
        problem = user_problem(user)
        if problem:
            raise CredentialError(problem)
        set_password(path, user, password if password is not None else _ask_password(user))
    except CredentialError as exc:
        print(f"arproxy passwd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsersFileError as exc:
        print(f"arproxy passwd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{path}: password set for {user}")
    return EXIT_OK


def _ask_password(user: str) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        first = getpass.getpass(f"New password for {user}: ")
        second = getpass.getpass("Retype the password: ")
    except EOFError as exc:
        raise CredentialError("no password given") from exc
    if first != second:
        raise CredentialError("the passwords do not match")
    return first


# --- helpers ---------------------------------------------------------------------------


def _read_text(source: str) -> str:
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise UsersFileError(source, None, f"cannot read: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsersFileError(source, line, "not UTF-8 text") from exc


def _hash_problem(stored: str) -> str | None:
    """Why `stored` is not a usable argon2id hash, or None. Never echoes the hash."""
    cost = _cost_of(stored)
    if cost is None:
        return "the hash is not an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$...)"
    if cost.time < 1 or cost.parallelism < 1 or cost.memory < 8 * cost.parallelism:
        return "the argon2id hash has impossible parameters"
    if cost.salt_len < 8 or cost.hash_len < 4:
        return "the argon2id hash has a too short salt or digest"
    return None


def _cost_of(stored: str) -> _Cost | None:
    match = _ARGON2ID.fullmatch(stored)
    if match is None:
        return None
    salt, digest = _b64_length(match[4]), _b64_length(match[5])
    if salt is None or digest is None:
        return None
    return _Cost(int(match[1]), int(match[2]), int(match[3]), salt, digest)


def _b64_length(text: str) -> int | None:
    try:
        return len(binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True))
    except binascii.Error:
        return None


def _dummy_hash(hashes: Iterable[str]) -> str:
    """A hash nothing matches, costing what the file's most common hash costs.

    It is made up rather than computed (random salt and digest), which is cheap and
    no less valid: a check recomputes the digest from the salt and compares.
    """
    costs = Counter(cost for cost in map(_cost_of, hashes) if cost is not None)
    cost = costs.most_common(1)[0][0] if costs else _DEFAULT_COST
    salt = _b64(secrets.token_bytes(cost.salt_len))
    digest = _b64(secrets.token_bytes(cost.hash_len))
    return f"$argon2id$v=19$m={cost.memory},t={cost.time},p={cost.parallelism}${salt}${digest}"


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii").rstrip("=")


def _decode_user(user: str | bytes) -> str | None:
    if isinstance(user, str):
        return user
    try:
        return user.decode("ascii")
    except UnicodeDecodeError:
        return None  # cannot be in the file: checked against the dummy like any stranger


def _matches(stored: str, password: str | bytes) -> bool:
    try:
        # The parameters come from `stored` itself; the hasher's own are not used.
        return PasswordHasher.from_parameters(_PROFILE).verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
