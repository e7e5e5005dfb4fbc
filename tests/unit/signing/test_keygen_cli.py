"""`arproxy dkim-keygen` and the key checks of `check-config`."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from arproxy.cli import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, main
from arproxy.signing.keys import load_key

KEYS = Path(__file__).parents[2] / "fixtures" / "keys"


def test_keygen_writes_a_0600_key_and_prints_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dkim-keygen", "Example.ORG", "s1", "--out", str(tmp_path)]) == EXIT_OK
    key_file = tmp_path / "s1.example.org.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    line = capsys.readouterr().out.strip()
    assert line.startswith("s1._domainkey.example.org. IN TXT ")
    strings = re.findall(r'"([^"]*)"', line)
    assert all(len(s) <= 255 for s in strings)  # RFC 1035 section 3.3
    assert "".join(strings) == load_key(key_file).public_record()
    # Never over an existing key.
    assert main(["dkim-keygen", "example.org", "s1", "--out", str(tmp_path)]) == EXIT_ERROR
    assert "exists" in capsys.readouterr().err


def test_keygen_ed25519_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path)
    assert main(["dkim-keygen", "example.org", "e1", "--type", "ed25519", "--out", out]) == 0
    assert "k=ed25519; p=" in capsys.readouterr().out
    assert main(["dkim-keygen", "example.org", "s2", "--bits", "512", "--out", out]) == EXIT_ERROR
    assert "RFC 8301" in capsys.readouterr().err
    assert main(["dkim-keygen", "exa mple.org", "s3", "--out", out]) == EXIT_ERROR


def test_check_config_reports_a_bad_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "arproxy.toml"
    config.write_text(
        f'[dkim_sign]\ndomains = ["example.org"]\nselector = "s"\nkey = "{KEYS / "rsa512.pem"}"\n'
    )
    assert main(["check-config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "signing key error" in err and "512-bit RSA key" in err
    assert err.count("\n") == 1
