"""A real authoritative DNS server for tests: Knot DNS (Debian package `knot`).

`KnotServer` serves the zone files in a folder on a free loopback port, UDP and TCP
(large TXT answers such as 4096-bit DKIM keys come over TCP). A zone whose file is
missing is still declared, so Knot answers SERVFAIL for every name in it: that is
how tests get a temporary DNS error from a real server. `stop()` gives the other
kind, a server that does not answer at all.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
FIXTURE_ZONES = Path(__file__).parent / "fixtures" / "zones"


def _free_port() -> int:
    # Knot needs UDP and TCP on the same port: find one free for both.
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for UDP and TCP")


class KnotServer:
    def __init__(
        self,
        zones: Mapping[str, str] | None = None,
        *,
        zone_dir: Path = FIXTURE_ZONES,
        servfail_zones: tuple[str, ...] = ("servfail.test",),
    ) -> None:
        """Serve every `<zone>.zone` in `zone_dir`, plus `zones` (origin -> text)."""
        self.workdir = Path(tempfile.mkdtemp(prefix="arproxy-knot-"))
        self.port = _free_port()
        files: dict[str, Path] = {p.name.removesuffix(".zone"): p for p in zone_dir.glob("*.zone")}
        for origin, text in (zones or {}).items():
            path = self.workdir / f"{origin}.zone"
            path.write_text(text)
            files[origin] = path
        for origin in servfail_zones:
            files[origin] = self.workdir / "missing" / f"{origin}.zone"
        self.config = self.workdir / "knot.conf"
        self.config.write_text(self._config_text(files))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "knot.log"
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config_text(self, files: Mapping[str, Path]) -> str:
        zones = "".join(
            f"  - domain: {origin}\n    file: {path}\n" for origin, path in sorted(files.items())
        )
        return (
            "server:\n"
            f"    listen: 127.0.0.1@{self.port}\n"
            f"    rundir: {self.workdir}\n"
            "log:\n  - target: stderr\n    any: warning\n"
            f"database:\n    storage: {self.workdir}/db\n"
            "template:\n  - id: default\n    semantic-checks: off\n"
            f"zone:\n{zones}"
        )

    def start(self) -> None:
        (self.workdir / "db").mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([KNOTD, "-c", str(self.config)], stderr=log)
        self._wait_until_answering()

    def _wait_until_answering(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        query = _soa_query("test")
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"knotd exited: {self.log_path.read_text()}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(0.1)
                try:
                    udp.sendto(query, ("127.0.0.1", self.port))
                    udp.recv(512)
                    return
                except OSError:
                    time.sleep(0.02)
        raise TimeoutError(f"knotd not answering on {self.address}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _soa_query(name: str) -> bytes:
    header = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return header + labels + b"\x00\x06\x00\x01"
