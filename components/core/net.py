"""Loopback ports for the local clusters (Beam's portable services, multi-worker training)."""
from __future__ import annotations

import contextlib
import socket

LOOPBACK = "localhost"


def free_ports(count: int) -> list[int]:
    """COUNT loopback ports nobody listens on now, all different (bound at once; the OS picks them,
    and the services bind them a moment later)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
