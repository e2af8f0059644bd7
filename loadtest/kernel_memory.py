#!/usr/bin/env python3
"""Kernel memory per idle WebSocket on loopback.

Starts the relay, opens N idle subscribed WebSockets to it from this
process, and reads the kernel's slab memory (/proc/meminfo `Slab`) and TCP
buffer pages (/proc/net/sockstat `mem`) before and after. Both ends of each
connection live on this host and cost about the same (a socket, a file, an
inode, an epoll entry), so the relay's share is reported as half the growth
per connection. Other activity on the host adds noise: run it on a quiet one.

    python3 loadtest/kernel_memory.py --relay target/release/tidings --connections 10000
"""

import argparse
import base64
import os
import resource
import socket
import subprocess
import time


def meminfo_kib(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def tcp_mem_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return 0


def sample():
    return meminfo_kib("Slab") * 1024, tcp_mem_pages() * 4096


def upgrade(port, n):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection {n} closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    # A masked subscribe, then nothing: an idle, subscribed socket.
    payload = b'{"type":"subscribe","channels":["dash.%d"]}' % (n % 100)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", default="target/release/tidings")
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--port", type=int, default=18770)
    args = parser.parse_args()
    need = args.connections + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(need, hard)), hard))

    relay = subprocess.Popen(
        [args.relay, "--listen", f"127.0.0.1:{args.port}", "--reactors", "1"],
        stdout=subprocess.PIPE,
        env={**os.environ, "TIDINGS_LOG": "warn"},
    )
    try:
        relay.stdout.readline()
        time.sleep(1)
        slab0, tcp0 = sample()
        sockets = [upgrade(args.port, n) for n in range(args.connections)]
        time.sleep(2)  # subscribes answered, buffers drained
        for s in sockets:  # read the `subscribed` replies: idle, empty queues
            s.setblocking(False)
            try:
                while s.recv(65536):
                    pass
            except BlockingIOError:
                pass
        time.sleep(1)
        slab1, tcp1 = sample()
        n = args.connections
        print(f"connections: {n}")
        print(f"slab growth: {(slab1 - slab0) / n:.0f} B per connection (both ends)")
        print(f"TCP buffer pages growth: {(tcp1 - tcp0) / n:.0f} B per connection (both ends)")
        print(f"relay's share (half): {((slab1 - slab0) + (tcp1 - tcp0)) / n / 2:.0f} B per socket")
        for s in sockets:
            s.close()
    finally:
        relay.terminate()
        relay.wait()


if __name__ == "__main__":
    main()
