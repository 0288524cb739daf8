"""A NETLINK_XFRM socket in the current network namespace: batched changes with per-request acks, dumps."""

from __future__ import annotations

import errno
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from ciphermesh.datapath.kernel.xfrm.constants import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_XFRM,
    NLM_F_ACK,
    NLM_F_DUMP_INTR,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_NETLINK,
)
from ciphermesh.datapath.kernel.xfrm.decode import decode, errno_name
from ciphermesh.datapath.kernel.xfrm.messages import (
    DoneMessage,
    ErrorMessage,
    Message,
    PolicyMessage,
    StateMessage,
)
from ciphermesh.datapath.kernel.xfrm.model import Policy, PolicyId, State, StateId
from ciphermesh.datapath.kernel.xfrm.requests import (
    Request,
    dump_policies,
    dump_states,
    encode_batch,
    get_policy,
    get_state,
)

# SO_RCVBUFFORCE/SO_SNDBUFFORCE (the kernel doubles them): room for every ack of a chunk.
BUFFER_BYTES = 4 << 20
# Requests per sendmsg, and bytes: the kernel handles one sendmsg's messages in that call and queues
# their acks, so a chunk is bounded by what the receive buffer holds.
CHUNK_REQUESTS = 256
CHUNK_BYTES = 256 << 10
# What a get answers when there is no such state or policy.
NOT_FOUND = frozenset({errno.ENOENT, errno.ESRCH})
# Netlink datagrams from the kernel are at most 32 KiB (dump parts); acks are tiny.
RECEIVE_BYTES = 64 << 10
TIMEOUT_S = 10.0
DUMP_ATTEMPTS = 3


@dataclass(frozen=True)
class Outcome:
    """What the kernel said to one request of a batch: errno 0 is success; ENOBUFS: its ack was lost."""

    index: int
    request: Request
    errno: int
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.errno == 0


class XfrmRequestError(OSError):
    """A request the kernel refused: errno, its index in the batch, what it was, and every other failure."""

    def __init__(self, failure: Outcome, failures: Sequence[Outcome] = ()) -> None:
        reason = f" ({failure.reason})" if failure.reason else ""
        others = f"; {len(failures) - 1} more requests failed" if len(failures) > 1 else ""
        text = (
            f"{failure.request.what} (request {failure.index}): {errno_name(failure.errno)}{reason}{others}"
        )
        super().__init__(failure.errno, text)
        self.index = failure.index
        self.request = failure.request
        self.reason = failure.reason
        self.failures = tuple(failures) or (failure,)

    def __str__(self) -> str:
        return str(self.strerror)


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


class XfrmSocket:
    """Requests to the kernel's XFRM over one netlink socket, opened in the caller's network namespace."""

    def __init__(self, *, chunk_requests: int = CHUNK_REQUESTS, receive_buffer: int = BUFFER_BYTES) -> None:
        self.chunk_requests = chunk_requests
        self._receive_buffer = receive_buffer
        self._seq = secrets.randbelow(1 << 30) + 1
        self._buffer = bytearray(RECEIVE_BYTES)
        self._sock = self._open()

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_XFRM)
        try:
            # Capped acks do not echo a failed request back (a NEWSA carries its key), extended acks say why.
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, self._receive_buffer)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, BUFFER_BYTES)
            sock.settimeout(TIMEOUT_S)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _next_seq(self, count: int) -> int:
        if self._seq + count >= 1 << 31:
            self._seq = 1
        first = self._seq
        self._seq += count
        return first

    def _send(self, data: bytes) -> None:
        sent = self._sock.send(data)
        if sent != len(data):
            raise OSError(errno.EIO, f"netlink took {sent} of {len(data)} bytes")

    def _receive(self) -> list[Message]:
        size = self._sock.recv_into(self._buffer, len(self._buffer), socket.MSG_TRUNC)
        if size > len(self._buffer):
            raise OSError(errno.EMSGSIZE, f"a netlink datagram of {size} bytes exceeds {len(self._buffer)}")
        return decode(memoryview(self._buffer)[:size])

    def _chunk_end(self, requests: Sequence[Request], start: int) -> int:
        """Where the chunk from `start` ends: at most chunk_requests requests and CHUNK_BYTES bytes."""
        end, size = start, 0
        while end < len(requests) and end - start < self.chunk_requests:
            size += 16 + len(requests[end].payload) + 3
            if size > CHUNK_BYTES and end > start:
                break
            end += 1
        return end

    def execute(self, requests: Sequence[Request]) -> list[Outcome]:
        """Send every request (many per sendmsg) and return each one's outcome, in order."""
        for request in requests:
            if not request.flags & NLM_F_ACK:
                raise ValueError(f"{request.what}: a batched request needs NLM_F_ACK")
        outcomes: list[Outcome] = []
        start = 0
        while start < len(requests):
            end = self._chunk_end(requests, start)
            first = self._next_seq(end - start)
            self._send(encode_batch(list(requests[start:end]), first))
            pending = {first + offset: start + offset for offset in range(end - start)}
            found: dict[int, Outcome] = {}
            try:
                while pending:
                    self._settle(self._receive(), pending, requests, found)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._settle_overrun(pending, requests, found)
            outcomes.extend(found[index] for index in sorted(found))
            start = end
        return outcomes

    @staticmethod
    def _settle(
        messages: list[Message],
        pending: dict[int, int],
        requests: Sequence[Request],
        found: dict[int, Outcome],
    ) -> None:
        for message in messages:
            if isinstance(message, ErrorMessage) and message.request.seq in pending:
                index = pending.pop(message.request.seq)
                found[index] = Outcome(index, requests[index], message.errno, message.reason)

    def _settle_overrun(
        self, pending: dict[int, int], requests: Sequence[Request], found: dict[int, Outcome]
    ) -> None:
        """The receive buffer overflowed: read the acks that made it; the rest are lost, outcome unknown.

        Later chunks are half the size, so one overflow does not repeat for every chunk of the batch.
        """
        self._sock.setblocking(False)
        try:
            while pending:
                self._settle(self._receive(), pending, requests, found)
        except BlockingIOError:
            pass
        finally:
            self._sock.settimeout(TIMEOUT_S)
        for index in pending.values():
            found[index] = Outcome(index, requests[index], errno.ENOBUFS, "ack lost: outcome unknown")
        self.chunk_requests = max(1, self.chunk_requests // 2)

    def apply(self, requests: Sequence[Request]) -> None:
        """Send every request; if any failed, raise XfrmRequestError for the first, listing all."""
        failures = [outcome for outcome in self.execute(requests) if not outcome.ok]
        if failures:
            raise XfrmRequestError(failures[0], failures)

    def _dump(self, request: Request) -> list[Message]:
        for _attempt in range(DUMP_ATTEMPTS):
            seq = self._next_seq(1)
            self._send(request.encode(seq))
            parts: list[Message] = []
            complete = True
            while True:
                try:
                    messages = self._receive()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    # Some of the dump was dropped: read on to its end (the socket stays usable), then again.
                    complete = False
                    continue
                # The objects changed while the kernel dumped them: the parts may not add up.
                complete &= not any(m.header.flags & NLM_F_DUMP_INTR for m in messages)
                if self._take(messages, seq, request, parts):
                    break
            if complete:
                return parts
        raise OSError(errno.EAGAIN, f"{request.what}: incomplete {DUMP_ATTEMPTS} times (changes, ENOBUFS)")

    @staticmethod
    def _take(messages: list[Message], seq: int, request: Request, parts: list[Message]) -> bool:
        for message in messages:
            if message.header.seq != seq:
                continue
            if isinstance(message, ErrorMessage):
                raise XfrmRequestError(Outcome(0, request, message.errno, message.reason))
            if isinstance(message, DoneMessage):
                if message.errno:
                    raise XfrmRequestError(Outcome(0, request, message.errno))
                return True
            parts.append(message)
        return False

    def states(self) -> list[State]:
        """Every state in this namespace, with its counters."""
        return [m.state for m in self._dump(dump_states()) if isinstance(m, StateMessage)]

    def policies(self) -> list[Policy]:
        """Every policy in this namespace."""
        return [m.policy for m in self._dump(dump_policies()) if isinstance(m, PolicyMessage)]

    def _get(self, request: Request) -> Message | None:
        seq = self._next_seq(1)
        self._send(request.encode(seq))
        while True:
            for message in self._receive():
                if message.header.seq != seq:
                    continue
                if isinstance(message, ErrorMessage):
                    if message.errno in NOT_FOUND:
                        return None
                    raise XfrmRequestError(Outcome(0, request, message.errno, message.reason))
                return message

    def state(self, state: StateId) -> State | None:
        """The state with this id (with its counters), or None."""
        message = self._get(get_state(state))
        return message.state if isinstance(message, StateMessage) else None

    def policy(self, policy: PolicyId) -> Policy | None:
        """The policy with this selector, direction and mark (or index), or None."""
        message = self._get(get_policy(policy))
        return message.policy if isinstance(message, PolicyMessage) else None
