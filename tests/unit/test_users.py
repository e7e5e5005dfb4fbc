from __future__ import annotations

import asyncio
import io
import os
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from arproxy import users
from arproxy.users import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CredentialError,
    UsersFile,
    UsersFileError,
    passwd_main,
    set_password,
)

# Real argon2id, cheap parameters: most tests are about the file, not the cost.
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
A_HASH = CHEAP.hash("x")


def verify(path: Path, user: str | bytes, password: str | bytes) -> bool:
    return asyncio.run(UsersFile.load(path).verify(user, password))


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "users"
    set_password(path, "alice@example.org", "correct horse", hasher=CHEAP)
    loaded = UsersFile.load(path)
    assert loaded.users == {"alice@example.org"}
    assert asyncio.run(loaded.verify("alice@example.org", "correct horse"))
    assert asyncio.run(loaded.verify(b"alice@example.org", b"correct horse"))  # as from SASL


def test_wrong_password_and_unknown_user(tmp_path: Path) -> None:
    path = tmp_path / "users"
    set_password(path, "alice", "secret", hasher=CHEAP)
    assert not verify(path, "alice", "Secret")
    assert not verify(path, "alice", "")
    assert not verify(path, "bob", "secret")
    assert not verify(path, b"\xffalice", "secret")  # not even ASCII


def test_unknown_user_costs_the_same_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown user is checked against a hash with the file's own parameters."""
    path = tmp_path / "users"
    set_password(path, "alice", "secret", hasher=CHEAP)
    checked: list[str] = []
    real = users._matches

    def spy(stored: str, password: str | bytes) -> bool:
        checked.append(stored)
        return real(stored, password)

    monkeypatch.setattr(users, "_matches", spy)
    loaded = UsersFile.load(path)
    assert not asyncio.run(loaded.verify("mallory", "secret"))
    (dummy,) = checked
    assert dummy.split("$")[1:4] == ["argon2id", "v=19", "m=8,t=1,p=1"]
    assert dummy != path.read_text().split(":", 1)[1].strip()


def test_change_password_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "users"
    before = f"# mail users\n\nbob:{A_HASH}\n# alice is the admin\nalice:{A_HASH}\ncarol:{A_HASH}\n"
    path.write_text(before)
    set_password(path, "alice", "new secret", hasher=CHEAP)
    lines = path.read_text().split("\n")
    assert lines[:4] == before.split("\n")[:4]
    assert lines[5:] == [f"carol:{A_HASH}", ""]
    assert lines[4].startswith("alice:$argon2id$")
    assert verify(path, "alice", "new secret")
    assert verify(path, "bob", "x")
    assert verify(path, "carol", "x")


def test_add_user_to_a_file_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"bob:{A_HASH}")
    set_password(path, "alice", "pw", hasher=CHEAP)
    assert UsersFile.load(path).users == {"alice", "bob"}


def test_file_mode_is_0600_even_if_it_was_wider(tmp_path: Path) -> None:
    path = tmp_path / "users"
    set_password(path, "alice", "pw", hasher=CHEAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    set_password(path, "alice", "pw2", hasher=CHEAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temporary left behind


def test_a_symlinked_file_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real-users"
    link = tmp_path / "users"
    link.symlink_to(real.name)
    set_password(link, "alice", "pw", hasher=CHEAP)
    assert link.is_symlink()
    assert UsersFile.load(real).users == {"alice"}


@pytest.mark.parametrize(
    "user", ["", "al ice", "al:ice", "al\tice", "élise", "#alice", "a" * 257, "al\nice"]
)
def test_set_password_refuses_bad_user_names(tmp_path: Path, user: str) -> None:
    path = tmp_path / "users"
    with pytest.raises(CredentialError):
        set_password(path, user, "pw", hasher=CHEAP)
    assert not path.exists()


def test_set_password_refuses_an_empty_password(tmp_path: Path) -> None:
    with pytest.raises(CredentialError):
        set_password(tmp_path / "users", "alice", "", hasher=CHEAP)


def test_longest_user_name_accepted(tmp_path: Path) -> None:
    path = tmp_path / "users"
    set_password(path, "a" * 256, "pw", hasher=CHEAP)
    assert verify(path, "a" * 256, "pw")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("alice\n", 1, "expected user:hash"),
        (f"# users\n\nal ice:{A_HASH}\n", 3, "white space"),
        (f":{A_HASH}\n", 1, "empty user name"),
        ("alice:secret\n", 1, "not an argon2id PHC string"),
        ("alice:\n", 1, "not an argon2id PHC string"),
        (f"alice:{A_HASH.replace('argon2id', 'argon2i')}\n", 1, "not an argon2id"),
        ("alice:$argon2id$v=19$m=8,t=1,p=1$!!!!!!!!$abcdabcd\n", 1, "not an argon2id"),
        ("alice:$argon2id$v=19$m=8,t=0,p=1$c2FsdHNhbHQ$abcdabcd\n", 1, "impossible"),
        ("alice:$argon2id$v=19$m=8,t=1,p=1$c2FsdA$abcdabcd\n", 1, "too short salt"),
        (f"alice:{A_HASH}\r\nbob:{A_HASH}\nalice:{A_HASH}\n", 3, "already defined on line 1"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = tmp_path / "users"
    path.write_text(text, newline="")
    with pytest.raises(UsersFileError) as caught:
        UsersFile.load(path)
    assert (caught.value.path, caught.value.line) == (str(path), line)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert problem in caught.value.problem
    assert "c2FsdHNhbHQ" not in str(caught.value)  # hashes are not echoed


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read") as caught:
        UsersFile.load(tmp_path / "missing")
    assert caught.value.line is None
    path = tmp_path / "users"
    path.write_bytes(f"bob:{A_HASH}\n\xe9lise:{A_HASH}\n".encode("latin-1"))
    with pytest.raises(UsersFileError, match="not UTF-8") as caught:
        UsersFile.load(path)
    assert caught.value.line == 2


def test_comments_blank_lines_and_crlf_load(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"# a comment\r\n\r\n  bob:{A_HASH}  \r\n   # indented comment\r\n")
    assert verify(path, "bob", "x")


def test_verify_runs_off_the_event_loop(tmp_path: Path) -> None:
    """With argon2-cffi's real (slow) defaults, the loop keeps running meanwhile."""
    path = tmp_path / "users"
    set_password(path, "alice", "secret")  # default parameters: ~0.1 s per check
    loaded = UsersFile.load(path)

    async def main() -> tuple[bool, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            return await loaded.verify("alice", "secret"), ticks
        finally:
            task.cancel()

    matched, ticks = asyncio.run(main())
    assert matched
    assert ticks >= 5


def test_verify_never_raises_on_a_malformed_hash() -> None:
    loaded = UsersFile("memory", {"alice": "$argon2id$garbage"})
    assert not asyncio.run(loaded.verify("alice", "x"))


# --- arproxy passwd ----------------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_passwd_reads_one_line_from_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users"
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert passwd_main(str(path), "alice", None) == EXIT_OK
    assert capsys.readouterr().out == f"{path}: password set for alice\n"
    assert verify(path, "alice", "s3cret pass")


def test_passwd_asks_twice_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users"
    answers = iter(["one", "two"])
    monkeypatch.setattr("sys.stdin", FakeTty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert passwd_main(str(path), "alice", None) == EXIT_USAGE  # they differ
    assert not path.exists()


def test_passwd_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert passwd_main(str(path), "alice", None) == EXIT_USAGE
    assert "empty password" in capsys.readouterr().err
    assert passwd_main(str(path), "bad user", "pw") == EXIT_USAGE
    assert passwd_main(str(tmp_path / "no" / "such" / "dir"), "alice", "pw") == EXIT_FAILURE
    assert "cannot write" in capsys.readouterr().err
    assert not path.exists()
    assert os.listdir(tmp_path) == []
