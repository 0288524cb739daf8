"""The apiserver relay on real node namespaces: a connection made inside a node to 127.0.0.1:<port> reaches
the host's 127.0.0.1:<port> both ways, half-closes pass through, and a node namespace made anew (a
repaired node) gets a listener again."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from ciphermesh.lab import netns, topology
from ciphermesh.lab.kube.relay import Relay, reaches_apiserver
from ciphermesh.lab.topology import TopologyPlan
from tests.support.netns import built_lab
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


class EchoServer:
    """A TCP server on the host's loopback: echoes what it gets, closes its side at the client's EOF."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(client,), daemon=True).start()

    @staticmethod
    def _echo(client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):
            while data := client.recv(65536):
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)


Relayed = tuple[TopologyPlan, Relay, EchoServer]


@pytest.fixture
def relayed() -> Iterator[Relayed]:
    echo = EchoServer()
    stop = threading.Event()
    with built_lab(2) as plan:
        relay = Relay([node.netns for node in plan.nodes], echo.port)
        assert relay.converge() == []
        runner = threading.Thread(target=relay.run, args=(stop,), daemon=True)
        runner.start()
        try:
            yield plan, relay, echo
        finally:
            stop.set()
            runner.join(10)
            echo.listener.close()


def _round_trip(namespace: str, port: int, payload: bytes) -> bytes:
    """Send `payload` from inside `namespace`, half-close, and read until the far end closes."""
    with netns.entered(namespace):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    with conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def test_a_node_reaches_the_host_loopback_through_the_relay(relayed: Relayed) -> None:
    plan, _, echo = relayed
    payload = os.urandom(300_000)
    for node in plan.nodes:
        assert _round_trip(node.netns, echo.port, payload) == payload
    # The host's own port is the echo server itself, not a second relay listener.
    with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as direct:
        direct.sendall(b"ping")
        assert direct.recv(4) == b"ping"


def test_a_node_namespace_made_anew_is_listened_in_again(relayed: Relayed) -> None:
    plan, _, echo = relayed
    node = plan.nodes[1]
    netns.delete(node.netns)
    assert not reaches_apiserver(node.netns, echo.port)
    topology.build(plan)
    wait_until(lambda: reaches_apiserver(node.netns, echo.port), 10.0, f"the relay in the new {node.netns}")
    assert _round_trip(node.netns, echo.port, b"again") == b"again"
    assert _round_trip(plan.nodes[0].netns, echo.port, b"kept") == b"kept"
