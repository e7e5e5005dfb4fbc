"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

`Type=notify` units get $NOTIFY_SOCKET: a UNIX datagram socket (a path, or an abstract
name written with a leading "@") to which the service sends "READY=1" once it accepts
connections, "RELOADING=1"/"STOPPING=1" around reloads and shutdown. Without the
variable (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("arproxy.service")

NOTIFY_ENV = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=listening") to systemd; True when sent.

    A socket that cannot be reached is logged once per call, never raised: readiness
    reporting must not stop the service.
    """
    address = os.environ.get(NOTIFY_ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get(NOTIFY_ENV), exc)
        return False
    return True
