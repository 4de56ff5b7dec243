"""Which of this host's addresses the other hosts of a run reach it by."""

from __future__ import annotations

import ipaddress
import os
import socket


def route_interface(addr: str, port: int = 9) -> tuple[str, str] | None:
    """The local interface (name, address) this host reaches ``addr`` through, from the
    routing table (a UDP socket connected to it sends nothing); None where no interface
    carries that address (``addr`` unresolvable, no route)."""
    import socket

    import psutil

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, port))
            local = s.getsockname()[0]
    except OSError:
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local for a in addrs):
            return name, local
    return None


def node_address() -> str | None:
    """This host's address as the run's other hosts see it, where it can be told: inside a
    Ray worker the node's address in the Ray cluster; in a rank the address on the route to
    ``MASTER_ADDR`` (None on one machine, a loopback master, or outside both)."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    addr = os.environ.get("MASTER_ADDR")
    if not addr:
        return None
    try:
        master = socket.gethostbyname(addr)
    except OSError:
        return None
    if ipaddress.ip_address(master).is_loopback:
        return None
    found = route_interface(master)
    return found[1] if found else None
