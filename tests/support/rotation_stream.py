"""A paced TCP stream for rotation tests, run in pods: `recv IP PORT` prints "listening", then at EOF one JSON
line (longest silence, bytes, intact); `send IP PORT` sends until SIGTERM, then prints one JSON line."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time

CHUNK = 4096
INTERVAL = 0.01
PATTERN_PERIOD = 251  # prime: an offset error of any size below it shows as a mismatch
_PATTERN = bytes(i % PATTERN_PERIOD for i in range(PATTERN_PERIOD + 65536))


def _expected(offset: int, size: int) -> bytes:
    start = offset % PATTERN_PERIOD
    return _PATTERN[start : start + size]


def receive(ip: str, port: int) -> dict[str, object]:
    with socket.create_server((ip, port)) as server:
        print("listening", flush=True)
        conn, _ = server.accept()
    with conn:
        received = 0
        intact = True
        max_gap = 0.0
        first = last = None
        while True:
            data = conn.recv(65536)
            now = time.monotonic()
            if not data:
                break
            if last is not None:
                max_gap = max(max_gap, now - last)
            first = now if first is None else first
            last = now
            if intact and data != _expected(received, len(data)):
                intact = False
            received += len(data)
    duration = (last - first) if first is not None and last is not None else 0.0
    return {"bytes": received, "maxGap": round(max_gap, 4), "intact": intact, "seconds": round(duration, 3)}


def send(ip: str, port: int) -> dict[str, object]:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sent = 0
    longest_send = 0.0
    with socket.create_connection((ip, port), timeout=30) as conn:
        conn.settimeout(None)
        next_at = time.monotonic()
        while not stop.is_set():
            began = time.monotonic()
            conn.sendall(_expected(sent, CHUNK))
            longest_send = max(longest_send, time.monotonic() - began)
            sent += CHUNK
            next_at += INTERVAL
            stop.wait(max(0.0, next_at - time.monotonic()))
        conn.shutdown(socket.SHUT_WR)
        # Wait for the receiver to close: every byte sent has then been read.
        conn.settimeout(30)
        conn.recv(1)
    return {"bytes": sent, "longestSend": round(longest_send, 4)}


def main(argv: list[str]) -> int:
    mode, ip, port = argv[0], argv[1], int(argv[2])
    result = receive(ip, port) if mode == "recv" else send(ip, port)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
