"""Block network access from Python: samunet must run offline.

:func:`block_network` patches ``socket`` so that connecting or sending to a non-local
address, or resolving a host name other than this machine's, raises
:class:`NetworkBlockedError`. Loopback, unspecified and Unix-domain sockets keep working
(multiprocessing, torch.distributed on 127.0.0.1). ``tests/conftest.py`` applies it to every
test; subprocesses started by tests call it themselves (see ``tests/test_crash_resume.py``).
"""

from __future__ import annotations

import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


class NetworkBlockedError(ConnectionRefusedError):
    """Raised instead of reaching the network during tests."""


def _local_host(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES or host == socket.gethostname():
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: resolving it would already use the network
    return ip.is_loopback or ip.is_unspecified


def _local_address(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path (or abstract name)
        return True
    if isinstance(address, tuple) and address:
        return _local_host(address[0])
    return False


def block_network() -> callable:
    """Install the block; returns a function that removes it."""
    originals = {
        "connect": socket.socket.connect,
        "connect_ex": socket.socket.connect_ex,
        "sendto": socket.socket.sendto,
        "getaddrinfo": socket.getaddrinfo,
    }

    def refuse(what, target):
        raise NetworkBlockedError(f"network access is blocked in samunet's tests: {what} {target!r}")

    def connect(self, address):
        if self.family != getattr(socket, "AF_UNIX", None) and not _local_address(address):
            refuse("connect to", address)
        return originals["connect"](self, address)

    def connect_ex(self, address):
        if self.family != getattr(socket, "AF_UNIX", None) and not _local_address(address):
            refuse("connect to", address)
        return originals["connect_ex"](self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if self.family != getattr(socket, "AF_UNIX", None) and not _local_address(address):
            refuse("send to", address)
        return originals["sendto"](self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _local_host(host):
            refuse("resolve", host)
        return originals["getaddrinfo"](host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
    socket.getaddrinfo = getaddrinfo

    def unblock():
        socket.socket.connect = originals["connect"]
        socket.socket.connect_ex = originals["connect_ex"]
        socket.socket.sendto = originals["sendto"]
        socket.getaddrinfo = originals["getaddrinfo"]

    return unblock


def network_is_blocked() -> bool:
    return socket.socket.connect.__module__ == __name__
