#!/usr/bin/env python3
"""Container health check: greeting, NOOP, QUIT on arproxy's SMTP listener.

Usage: arproxy-healthcheck HOST PORT. Sends the PROXY protocol v2 LOCAL header first
(a health check of the proxy itself, section 2.2 of the PROXY protocol
specification), as the listener expects one from every trusted peer (HOST must be in
server.trusted_proxies: the image's configuration lists 127.0.0.1/32). Exit 0 when
every reply has the expected code (220, 250, 221), else 1 with the reason on stderr.
"""

from __future__ import annotations

import socket
import sys
from typing import BinaryIO

# v2 signature, version 2 / command LOCAL, family UNSPEC, no address block.
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"


def reply_code(stream: BinaryIO) -> int:
    """The code of one (possibly multi-line) SMTP reply."""
    while True:
        line = stream.readline()
        if len(line) < 4:
            raise ConnectionError(f"short reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


def main(host: str, port: int) -> int:
    try:
        with socket.create_connection((host, port), timeout=4) as sock:
            stream = sock.makefile("rb")
            sock.sendall(PROXY_V2_LOCAL)
            for command, expected in ((None, 220), (b"NOOP\r\n", 250), (b"QUIT\r\n", 221)):
                if command is not None:
                    sock.sendall(command)
                code = reply_code(stream)
                if code != expected:
                    print(f"expected {expected}, got {code}", file=sys.stderr)
                    return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
