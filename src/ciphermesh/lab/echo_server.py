"""A TCP and UDP echo server for the connectivity check's pods; standard library only."""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading
from collections.abc import Sequence

IDLE_TIMEOUT = 30.0


class _TcpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        connection: socket.socket = self.request
        connection.settimeout(IDLE_TIMEOUT)
        try:
            while data := connection.recv(65536):
                connection.sendall(data)
        except OSError:
            return


class _UdpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        try:
            sock.sendto(data, self.client_address)
        except OSError:
            return


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(tcp_port: int, udp_port: int, host: str = "0.0.0.0") -> None:
    """Echo on both ports until killed; UDP is bound before TCP listens, so a TCP answer means both are up."""
    udp = socketserver.UDPServer((host, udp_port), _UdpEcho)
    threading.Thread(target=udp.serve_forever, name="udp-echo", daemon=True).start()
    with _TcpServer((host, tcp_port), _TcpEcho) as tcp:
        print(f"echo server: tcp {tcp_port}, udp {udp_port}", flush=True)
        tcp.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ciphermesh.lab.echo_server", description=__doc__)
    parser.add_argument("--tcp", type=int, default=7, help="TCP port (default 7)")
    parser.add_argument("--udp", type=int, default=7, help="UDP port (default 7)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default all)")
    args = parser.parse_args(argv)
    try:
        serve(args.tcp, args.udp, args.host)
    except OSError as exc:
        parser.exit(1, f"echo server: {exc.strerror or exc}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
