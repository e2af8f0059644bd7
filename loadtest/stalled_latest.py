#!/usr/bin/env python3
"""How deep a stalled reader's queue gets under a `latest` delivery rule.

Starts the relay (target/release/tidings) with

    [[delivery]]
    pattern = "metrics.>"
    policy = "latest"
    key = "data.node"

and a small send buffer per socket, connects READERS raw WebSocket readers that
subscribe to `metrics.>` and then stop reading, and publishes `--rate`
events/s over `--nodes` node keys for `--duration` seconds. Reader k reads
again only at its checkpoint (--duration * (k+1) / READERS) and counts what
is waiting for it: its kernel buffers plus its queue in the relay. Under
`latest` that count stays flat however long the reader stalled (one event
per node); under `all` it grows until the slow-consumer limit.

Standard library only; loopback only. Usage:
    loadtest/stalled_latest.py [--policy latest|all] [--duration 60] [--rate 1000]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

READERS = 6
# The reader's receive buffer. Much smaller ones (4 KiB) stall the TCP window
# updates themselves, and the reader then gets nothing more when it reads again.
RCVBUF = 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stalled_reader(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps({"type": "subscribe", "channels": ["metrics.>"]}).encode()
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(frame)
    return s


def drain(s: socket.socket) -> int:
    """Text frames waiting for the reader (the subscribe reply included)."""
    s.settimeout(1.0)
    buf = b""
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        pass
    count, at = 0, 0
    while at + 2 <= len(buf):
        op, n = buf[at] & 0x0F, buf[at + 1] & 0x7F
        hdr = 2
        if n == 126:
            n, hdr = struct.unpack(">H", buf[at + 2 : at + 4])[0], 4
        elif n == 127:
            n, hdr = struct.unpack(">Q", buf[at + 2 : at + 10])[0], 10
        if at + hdr + n > len(buf):
            break
        count += op == 0x1
        at += hdr + n
    return count


def publish(port: int, events: list[dict]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/publish",
        data=json.dumps(events).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", choices=["latest", "all"], default="latest")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--relay", default="target/release/tidings")
    args = parser.parse_args()

    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    rule = f'[[delivery]]\npattern = "metrics.>"\npolicy = "{args.policy}"\n'
    if args.policy == "latest":
        rule += 'key = "data.node"\n'
    config.write(
        "[limits]\nsocket_send_buffer = 4096\nmax_queue_messages = 100000\n"
        "max_queue_bytes = 67108864\n"
        '[timeouts]\nwrite_deadline = "10m"\n' + rule
    )
    config.close()
    relay = subprocess.Popen(
        [args.relay, "--listen", f"127.0.0.1:{port}", "--config", config.name],
        stdout=subprocess.PIPE,
        env={"TIDINGS_LOG": "warn", **os.environ},
    )
    try:
        relay.stdout.readline()
        readers = [stalled_reader(port) for _ in range(READERS)]
        checkpoints = [args.duration * (k + 1) / READERS for k in range(READERS)]
        start = time.monotonic()
        published = 0
        tick = 0.05
        sample = {"cpu": 42.5, "memory": 68.2, "disk": 45.8, "load": [1.2, 1.5, 1.8]}
        print(f"policy {args.policy}, {args.rate} events/s over {args.nodes} nodes")
        print("| stalled for | events published | waiting for the reader |")
        print("|---|---|---|")
        while readers:
            elapsed = time.monotonic() - start
            # At most a second's worth per request (a drain may take a while).
            due = min(int(elapsed * args.rate) - published, args.rate)
            if due > 0:
                batch = [
                    {"channel": "metrics.system",
                     "data": {**sample, "node": f"node-{(published + i) % args.nodes}"}}
                    for i in range(due)
                ]
                publish(port, batch)
                published += due
            if elapsed >= checkpoints[0]:
                waiting = drain(readers.pop(0)) - 1
                print(f"| {checkpoints.pop(0):.0f} s | {published} | {waiting} |", flush=True)
            time.sleep(tick)
    finally:
        relay.terminate()
        relay.wait()
        os.unlink(config.name)


if __name__ == "__main__":
    main()
