"""A dependency-free readiness probe: one Kafka Metadata request on a raw socket.

`KafkaNode.start` must not return before the broker really serves clients.
An open port is not enough (the socket server binds before the broker has
registered with the controller); a Metadata response that lists at least one
broker is. Metadata v4 is spoken by every broker from 1.0 to 4.x (Kafka 4
removed only v0-v3), and it needs no client library in this synchronous code.
"""

from __future__ import annotations

import socket
import struct

_METADATA_API_KEY = 3
_METADATA_VERSION = 4
_CLIENT_ID = b"tokenpulse-probe"


def _metadata_request(correlation_id: int) -> bytes:
    header = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID)
    )
    # topics = null (all topics), allow_auto_topic_creation = false
    body = struct.pack(">ib", -1, 0)
    payload = header + _CLIENT_ID + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.extend(chunk)
    return bytes(chunks)


def metadata_broker_count(host: str, port: int, *, timeout_s: float = 2.0) -> int:
    """How many brokers a Metadata response lists; raises OSError if none answers."""
    correlation_id = 7
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(_metadata_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        response = _recv_exact(sock, size)
    got_id, _throttle_ms, brokers = struct.unpack(">iii", response[:12])
    if got_id != correlation_id:
        raise ConnectionError(f"unexpected correlation id {got_id}")
    return int(brokers)


def broker_ready(host: str, port: int) -> bool:
    try:
        return metadata_broker_count(host, port) > 0
    except (OSError, struct.error):
        return False
