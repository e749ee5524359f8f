"""Where an endpoint can be reached from: this host only (loopback, ipc) or beyond it."""

from __future__ import annotations

import ipaddress
import re


def is_local(endpoint: str) -> bool:
    """Whether only this host can reach `endpoint`: ipc://, inproc:// or tcp on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = re.fullmatch(r"tcp://(\[[^\]]*\]|[^:]*):[^:]*", endpoint)
    if m is None:
        return False
    host = m[1].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', a host name or an interface name: beyond this host


def uses_curve(auth: str, endpoint: str) -> bool:
    """server.auth resolved: 'curve', 'none', or 'auto' = CURVE when server.endpoint reaches beyond this host."""
    return auth == "curve" or (auth == "auto" and not is_local(endpoint))


def shard_endpoint(endpoint: str, shard: int) -> str:
    """Where server shard `shard` binds when server.endpoint is `endpoint` (docs/design.md, Shards): a tcp port
    0 stays 0 (every shard picks a free port), a fixed port P becomes P + shard, an ipc path gets '-<shard>'."""
    if shard == 0:
        return endpoint
    m = re.fullmatch(r"(tcp://.*):(\d+)", endpoint)
    if m is not None:
        port = int(m[2])
        return endpoint if port == 0 else f"{m[1]}:{port + shard}"
    return f"{endpoint}-{shard}" if endpoint.startswith("ipc://") else endpoint
