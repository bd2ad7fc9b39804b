"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), spoken directly over ``$NOTIFY_SOCKET``.

The protocol is one datagram of ``KEY=VALUE`` lines on a unix socket, so it needs no libsystemd binding. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op. The watchdog is pinged from the event loop itself: a loop
that is stuck stops pinging and systemd restarts the agent.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

from bridge.logs import get_logger

log = get_logger("bridge.systemd")


class Notifier:
    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self.address = address or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        return cls((environ if environ is not None else os.environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one message; False if there is no systemd to tell or the socket refused it (never raises: a
        missed notification must not take the agent down)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:
            log.warning("sd_notify_failed", error=str(e))
            return False
        return True

    def ready(self, status: str = "serving") -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1", "STATUS=reloading the HIS profile")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping: finishing calls in flight")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``WatchdogSec``), or None when systemd expects none from this process."""
    env = environ if environ is not None else os.environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog_loop(notifier: Notifier, interval_s: float, healthy: Callable[[], bool]) -> None:
    """Ping while ``healthy()`` holds; an unhealthy agent (e.g. a dead journal writer) stops pinging so that
    systemd restarts it."""
    while True:
        if healthy():
            notifier.watchdog()
        else:
            log.error("watchdog_withheld", reason="agent unhealthy")
        await asyncio.sleep(interval_s)
