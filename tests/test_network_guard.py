"""The suite runs offline: prove that conftest's network block is active in every test."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from network_guard import NetworkBlockedError, network_is_blocked


def test_block_is_installed():
    assert network_is_blocked()


@pytest.mark.parametrize("address", [("203.0.113.7", 80), ("8.8.8.8", 53), ("2001:db8::1", 443)])
def test_connect_to_internet_address_is_refused_at_once(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    t0 = time.perf_counter()
    with socket.socket(family, socket.SOCK_STREAM) as s:
        with pytest.raises(NetworkBlockedError, match="network access is blocked"):
            s.connect(address)
        with pytest.raises(NetworkBlockedError):
            s.connect_ex(address)
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(address, timeout=5)
    assert time.perf_counter() - t0 < 1.0  # refused, not timed out


def test_name_resolution_and_http_are_refused():
    with pytest.raises(NetworkBlockedError):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(urllib.error.URLError) as exc:
        urllib.request.urlopen("http://example.com/", timeout=5)
    assert isinstance(exc.value.reason, NetworkBlockedError)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(NetworkBlockedError):
            s.sendto(b"x", ("192.0.2.1", 53))


def test_loopback_and_unix_sockets_still_work():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    a, b = socket.socketpair()  # what multiprocessing uses
    with a, b:
        a.sendall(b"ok")
        assert b.recv(2) == b"ok"
