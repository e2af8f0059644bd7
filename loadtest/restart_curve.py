#!/usr/bin/env python3
"""The reconnect curve of a relay hand-over, with and without the spread.

Starts relay A, connects N subscribed WebSocket clients to it, starts relay B
on the same port (SO_REUSEPORT), then sends A a SIGTERM. Every client is
closed with 1001; with --honour it waits the close reason's retry_after_ms
before reconnecting (as client/tidings.js does), without it it reconnects at
once (a client that ignores the hint). Prints the upgrades B completed per
100 ms after the SIGTERM as an ASCII plot, and a summary line.

    python3 loadtest/restart_curve.py --relay target/release/tidings --clients 5000 --spread 10s --honour
    python3 loadtest/restart_curve.py --relay target/release/tidings --clients 5000 --spread 0
"""

import argparse
import asyncio
import base64
import json
import os
import resource
import signal
import subprocess
import tempfile
import time

BUCKET_S = 0.1


def upgrade_request():
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked_text(text):
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def connect(port):
    """An upgraded, subscribed connection, or an exception."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:40])
    writer.write(masked_text('{"type":"subscribe","channels":["dash.x"]}'))
    return reader, writer


async def close_reason(reader):
    """Reads frames until the close frame; returns its reason text."""
    while True:
        b0, b1 = await reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length)
        if b0 & 0x0F == 0x8:
            return payload[2:].decode(errors="replace")


async def client(port, honour, t0, back, failures):
    reader, writer = await connect(port)
    try:
        reason = await close_reason(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        reason = ""
    writer.close()
    wait = 0.0
    if honour:
        try:
            wait = json.loads(reason)["retry_after_ms"] / 1000
        except (ValueError, KeyError, TypeError):
            pass
    await asyncio.sleep(wait)
    while True:
        try:
            _, writer = await connect(port)
            back.append(time.monotonic() - t0[0])
            writer.close()
            return
        except (OSError, RuntimeError, asyncio.IncompleteReadError) as e:
            failures.append(repr(e))
            await asyncio.sleep(0.05)


def start_relay(binary, port, config):
    relay = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--config", config, "--reactors", "1"],
        stdout=subprocess.PIPE,
        env={**os.environ, "TIDINGS_LOG": "warn"},
    )
    relay.stdout.readline()
    return relay


async def run(args):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[shutdown]\nreconnect_spread = "{args.spread}"\n')
        f.write("[limits]\nlisten_backlog = 65535\n")
        config = f.name
    old = start_relay(args.relay, args.port, config)
    new = None
    try:
        t0 = [0.0]
        back, failures = [], []
        tasks = []
        for _ in range(args.clients):
            tasks.append(asyncio.create_task(client(args.port, args.honour, t0, back, failures)))
            await asyncio.sleep(0)
        await asyncio.sleep(2)  # every client upgraded and subscribed to A
        new = start_relay(args.relay, args.port, config)
        t0[0] = time.monotonic()
        old.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.deadline)
    finally:
        for relay in (old, new):
            if relay:
                relay.terminate()
                relay.wait()
        os.unlink(config)
    counts = [0] * (int(max(back) / BUCKET_S) + 1)
    for t in back:
        counts[int(t / BUCKET_S)] += 1
    peak = max(counts)
    label = f"spread {args.spread}, {'honoured' if args.honour else 'ignored'}"
    print(f"# {label}: {len(back)} clients back, last at {max(back):.2f} s, "
          f"peak {peak} per 100 ms ({peak * 10}/s), {len(failures)} failed attempts")
    step = max(1, len(counts) // 50)
    for i in range(0, len(counts), step):
        n = max(counts[i:i + step])
        print(f"{i * BUCKET_S:5.1f} s {n:5d} {'#' * round(60 * n / peak)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", default="target/release/tidings")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--port", type=int, default=18771)
    parser.add_argument("--spread", default="10s")
    parser.add_argument("--honour", action="store_true")
    parser.add_argument("--deadline", type=float, default=60)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.clients * 2 + 100), hard))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
