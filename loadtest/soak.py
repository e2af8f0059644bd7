#!/usr/bin/env python3
"""Soak test for the tidings relay: a long mixed load, sampled, with a leak verdict.

Starts the relay (auth on, small queues, short auth timeout) and for --duration
seconds runs, all at once: steady wildcard subscribers that check `seq`
completeness, an HTTP publisher, connection churn, slow readers that must be
cut with 1008, auth failures (401, 4001, 4008), publish-token failures
(401, 403) and a restricted token asking for channels it may not have
(`forbidden`). Every --sample seconds it records the relay's RSS, open fds and
/metrics counters plus what the clients saw. Then it stops the load, lets the
relay go quiet, samples once more and decides: exit 0 (pass) or 1 (fail).

Python 3.11 standard library only: the WebSocket and HTTP clients are tiny
hand-rolled ones on raw non-blocking sockets and asyncio. Loopback only.
See loadtest/soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections
import datetime as dt
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, by design

TOKEN_ALL = "soak-admin-token-7f3c"  # every channel
TOKEN_JOBS = "soak-jobs-token-19ab"  # restricted to job.*
TOKEN_PUB = "soak-publish-token-42d0"
TOKEN_BAD = "soak-wrong-token-0000"

# Events per second per channel from the publisher (about 40/s in all).
PUBLISH_RATES = {
    "metrics.system": 16.0,
    "metrics.disk": 4.0,
    "job.progress": 10.0,
    "alert.warning": 3.0,
    "cluster.updated": 3.0,
    "index.production-vectors.shard_transition": 2.0,
    "audit.login": 2.0,  # matched by nobody but the slow readers' `>`
    # Big events only the slow readers' `>` matches: the relay's kernel send
    # buffer autotunes to tcp_wmem[2] (4 MiB by default) and swallows that much
    # before the relay's own queue even starts to fill, so the slow readers
    # need a real byte rate to be cut within their stall.
    "bulk.blob": 10.0,
}
BULK_BYTES = 16000
STEADY_PATTERN = "metrics.>"
CHURN_PATTERNS = ["job.*", "alert.>", "index.*.shard_transition"]
DEFAULT_CHANNELS = ["cluster.*"]

RSS_GROWTH_FRACTION = 0.20
RSS_GROWTH_FLOOR_KIB = 16 * 1024
FD_SLACK = 5

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONFIG_TEMPLATE = """\
# Written by loadtest/soak.py
listen = "{host}:{port}"
default_channels = ["cluster.*"]

[[auth.tokens]]
token = "{all}"

[[auth.tokens]]
token = "{jobs}"
channels = ["job.*"]

[publish]
tokens = ["{pub}"]

[limits]
max_queue_bytes = 65536
max_queue_messages = 512

[timeouts]
auth = "2s"
write_deadline = "5s"
handshake = "5s"
close_linger = "2s"
"""
AUTH_TIMEOUT_S = 2.0


# --------------------------------------------------------------------------
# Small helpers


def now() -> float:
    return time.monotonic()


def matches(pattern: str, channel: str) -> bool:
    """NATS-style match: `*` one segment, `>` (last) one or more."""
    p, c = pattern.split("."), channel.split(".")
    for i, seg in enumerate(p):
        if seg == ">":
            return len(c) > i
        if i >= len(c) or (seg != "*" and seg != c[i]):
            return False
    return len(p) == len(c)


def matches_any(patterns, channel: str) -> bool:
    return any(matches(p, channel) for p in patterns)


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame with FIN set."""
    n = len(payload)
    head = bytearray([0x80 | opcode])
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    key = os.urandom(4)
    return bytes(head) + key + mask_bytes(payload, key)


def close_payload(code: int) -> bytes:
    return struct.pack("!H", code)


def read_rss_kib(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def read_cpu_s(pid: int):
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def count_fds(pid: int):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def pick_free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ProtocolError(Exception):
    pass


# --------------------------------------------------------------------------
# Counters shared by every task (one asyncio thread: no locks needed)


class State:
    def __init__(self, port: int):
        self.port = port
        self.closes = collections.Counter()  # "role:code" seen by clients
        self.http = collections.Counter()  # "what:status"
        self.counts = collections.Counter()  # everything else
        self.unexpected = collections.Counter()
        self.examples: list[str] = []
        self.events_by_role = collections.Counter()
        self.stop = asyncio.Event()  # stop publisher, churn, slow, auth failures
        self.stop_steady = asyncio.Event()
        self.metric_seqs: list[int] = []  # seqs of metrics.* events, ascending
        self.max_seq = 0  # highest seq the publisher has been told
        self.steadies: list[Steady] = []
        self.churn_inflight = 0
        self.load_t0 = None
        self.load_start_t = 0.0  # seconds after the baseline clock started

    def bad(self, kind: str, detail: str = ""):
        self.unexpected[kind] += 1
        if self.unexpected[kind] <= 3:
            line = f"UNEXPECTED {kind}: {detail}"[:300]
            self.examples.append(line)
            print(line, flush=True)

    def steady_check(self, final: bool = False):
        """(subscribers checked, events missing, out-of-order or duplicate)."""
        checked = missing = extra = 0
        for s in self.steadies:
            if s.first is None:
                continue
            if not final and s.last > self.max_seq:
                continue  # the publisher has not heard this seq's reply yet
            lo = bisect.bisect_left(self.metric_seqs, s.first)
            hi = bisect.bisect_right(self.metric_seqs, s.last)
            diff = (hi - lo) - s.count
            checked += 1
            if diff > 0:
                missing += diff
            elif diff < 0:
                extra -= diff
        return checked, missing, extra


# --------------------------------------------------------------------------
# A tiny WebSocket client on a raw non-blocking socket


class WS:
    def __init__(self, loop, sock, initial: bytes):
        self.loop = loop
        self.sock = sock
        self.buf = bytearray(initial)
        self.pending = collections.deque()
        self.frag_op = None
        self.frag = bytearray()
        self.closed = False

    async def send_text(self, obj):
        data = json.dumps(obj, separators=(",", ":")).encode()
        await self.loop.sock_sendall(self.sock, encode_frame(1, data))

    async def send_close(self, code: int):
        await self.loop.sock_sendall(self.sock, encode_frame(8, close_payload(code)))

    def _parse(self):
        b, i, n = self.buf, 0, len(self.buf)
        while n - i >= 2:
            b0, b1 = b[i], b[i + 1]
            if b1 & 0x80:
                raise ProtocolError("masked frame from the server")
            if b0 & 0x70:
                raise ProtocolError("reserved bits set")
            length, h = b1 & 0x7F, 2
            if length == 126:
                if n - i < 4:
                    break
                length, h = struct.unpack_from("!H", b, i + 2)[0], 4
            elif length == 127:
                if n - i < 10:
                    break
                length, h = struct.unpack_from("!Q", b, i + 2)[0], 10
            if n - i < h + length:
                break
            payload = bytes(b[i + h : i + h + length])
            i += h + length
            op, fin = b0 & 0x0F, bool(b0 & 0x80)
            if op == 0:
                if self.frag_op is None:
                    raise ProtocolError("continuation without a message")
                self.frag += payload
                if fin:
                    self.pending.append((self.frag_op, bytes(self.frag)))
                    self.frag_op, self.frag = None, bytearray()
            elif op in (1, 2) and not fin:
                self.frag_op, self.frag = op, bytearray(payload)
            else:
                self.pending.append((op, payload))
        del b[:i]

    async def recv(self, timeout: float):
        """The next item: ("event", dict), ("reply", dict) or ("close", code).

        Answers pings. Raises EOFError on a close without a close frame,
        asyncio.TimeoutError when nothing complete arrives in time."""
        deadline = now() + timeout
        while True:
            while self.pending:
                op, payload = self.pending.popleft()
                if op == 1:
                    obj = json.loads(payload)
                    if not isinstance(obj, dict):
                        raise ProtocolError(f"non-object message {payload[:80]!r}")
                    return ("event" if "seq" in obj else "reply"), obj
                if op == 8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.closed = True
                    return "close", code
                if op == 9:
                    await self.loop.sock_sendall(self.sock, encode_frame(10, payload))
                    continue
                if op == 10:
                    continue
                raise ProtocolError(f"unexpected opcode {op}")
            remaining = deadline - now()
            if remaining <= 0:
                raise asyncio.TimeoutError
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), remaining)
            if not data:
                raise EOFError
            self.buf += data
            self._parse()

    def close_socket(self, reset: bool = False):
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


async def read_http_head(loop, sock, deadline: float, limit: int = 16384):
    """(status, headers dict lowercased, bytes after the head)."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        remaining = deadline - now()
        if remaining <= 0:
            raise asyncio.TimeoutError
        data = await asyncio.wait_for(loop.sock_recv(sock, 16384), remaining)
        if not data:
            raise EOFError("connection closed before a response head")
        buf += data
        if len(buf) > limit:
            raise ProtocolError("response head too long")
    head, rest = bytes(buf).split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


async def open_socket(loop, port: int, timeout: float, rcvbuf: int | None = None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def ws_connect(st: State, bearer: str | None, timeout: float = 5.0, rcvbuf=None):
    """Upgrade; returns (status, headers, WS or None). A non-101 socket is closed."""
    loop = asyncio.get_running_loop()
    deadline = now() + timeout
    sock = await open_socket(loop, st.port, timeout, rcvbuf)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET /ws HTTP/1.1\r\nHost: {HOST}:{st.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if bearer is not None:
            req += f"Sec-WebSocket-Protocol: Bearer, {bearer}\r\n"
        req += "\r\n"
        await loop.sock_sendall(sock, req.encode())
        status, headers, rest = await read_http_head(loop, sock, deadline)
    except BaseException:
        sock.close()
        raise
    if status != 101:
        sock.close()
        return status, headers, None
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != accept:
        st.bad("handshake", "wrong Sec-WebSocket-Accept")
    proto = headers.get("sec-websocket-protocol")
    if bearer is not None and proto != "Bearer":
        st.bad("handshake", f"Bearer offered, Sec-WebSocket-Protocol answered {proto!r}")
    if bearer is None and proto is not None:
        st.bad("handshake", f"no subprotocol offered, got {proto!r}")
    if bearer is not None and bearer in "".join(f"{k}:{v}" for k, v in headers.items()):
        st.bad("handshake", "token echoed in the response")
    return status, headers, WS(loop, sock, rest)


async def http_once(st: State, method: str, path: str, body: bytes | None = None,
                    headers: dict | None = None, timeout: float = 5.0):
    """One request on a fresh `Connection: close` socket: (status, body bytes)."""
    loop = asyncio.get_running_loop()
    deadline = now() + timeout
    sock = await open_socket(loop, st.port, timeout)
    try:
        req = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{st.port}\r\nConnection: close\r\n"
        for k, v in (headers or {}).items():
            req += f"{k}: {v}\r\n"
        if body is not None:
            req += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        req = req.encode() + b"\r\n" + (body or b"")
        await loop.sock_sendall(sock, req)
        status, hdrs, rest = await read_http_head(loop, sock, deadline)
        want = int(hdrs.get("content-length", "0"))
        data = bytearray(rest)
        while len(data) < want:
            remaining = deadline - now()
            if remaining <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), remaining)
            if not chunk:
                break
            data += chunk
        return status, bytes(data[:want])
    finally:
        sock.close()


async def fetch_metrics(st: State) -> dict:
    status, body = await http_once(st, "GET", "/metrics", timeout=5.0)
    if status != 200:
        raise ProtocolError(f"/metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.partition(" ")
        try:
            out[name.removeprefix("tidings_")] = int(float(value))
        except ValueError:
            pass
    return out


# --------------------------------------------------------------------------
# Load: steady subscribers


class Steady:
    __slots__ = ("i", "ws", "first", "last", "count", "open", "task")

    def __init__(self, i):
        self.i, self.ws, self.first, self.last, self.count = i, None, None, 0, 0
        self.open, self.task = False, None


async def authenticate_by_message(st: State, ws: WS, token: str, role: str) -> bool:
    await ws.send_text({"type": "auth", "token": token})
    deadline = now() + 5.0
    while True:
        kind, obj = await ws.recv(max(0.01, deadline - now()))
        if kind == "reply" and obj.get("type") == "authenticated":
            return True
        if kind == "close":
            st.closes[f"{role}:{obj}"] += 1
            st.bad(f"{role}_auth", f"closed {obj} after a good auth message")
            return False
        st.bad(f"{role}_auth", f"before 'authenticated' got {kind} {str(obj)[:120]}")
        return False


async def subscribe(st: State, ws: WS, patterns, current, role: str, ok_codes=()):
    """Sends subscribe and waits for the answer, checking the events that come
    first against `current` (the patterns in force until the answer).
    Returns ("subscribed", None), ("error", code) or ("fail", None)."""
    await ws.send_text({"type": "subscribe", "channels": patterns})
    deadline = now() + 5.0
    while True:
        kind, obj = await ws.recv(max(0.01, deadline - now()))
        if kind == "event":
            st.events_by_role[role] += 1
            if not matches_any(current, obj.get("type", "")):
                st.bad(f"{role}_wrong_channel", f"{obj.get('type')} with {current}")
            continue
        if kind == "close":
            st.closes[f"{role}:{obj}"] += 1
            st.bad(f"{role}_closed", f"closed {obj} while subscribing")
            return "fail", None
        if obj.get("type") == "subscribed":
            if obj.get("channels") != patterns:
                st.bad(f"{role}_subscribe", f"subscribed {obj.get('channels')} for {patterns}")
            return "subscribed", None
        if obj.get("type") == "error":
            code = obj.get("data", {}).get("code")
            if code not in ok_codes:
                st.bad(f"{role}_subscribe", f"error {code} for {patterns}")
            return "error", code
        st.bad(f"{role}_subscribe", f"unexpected reply {str(obj)[:120]}")
        return "fail", None


async def steady_run(st: State, s: Steady):
    role = "steady"
    by_proto = s.i % 2 == 0
    try:
        status, _, ws = await ws_connect(st, TOKEN_ALL if by_proto else None)
        st.http[f"steady_upgrade:{status}"] += 1
        if ws is None:
            st.bad("steady_upgrade", f"status {status}")
            return
        s.ws = ws
        current = list(DEFAULT_CHANNELS) if by_proto else []
        if not by_proto:
            if not await authenticate_by_message(st, ws, TOKEN_ALL, role):
                return
            current = list(DEFAULT_CHANNELS)
        result, _ = await subscribe(st, ws, [STEADY_PATTERN], current, role)
        if result != "subscribed":
            return
        s.open = True
        st.counts["steady_subscribed"] += 1
        while not st.stop_steady.is_set():
            try:
                kind, obj = await ws.recv(1.0)
            except asyncio.TimeoutError:
                continue
            if kind == "event":
                seq, ch = obj.get("seq"), obj.get("type", "")
                if not ch.startswith("metrics."):
                    st.bad("steady_wrong_channel", ch)
                    continue
                if s.first is None:
                    s.first = seq
                elif seq <= s.last:
                    st.bad("steady_seq_order", f"seq {seq} after {s.last}")
                s.last = seq
                s.count += 1
                st.events_by_role[role] += 1
            elif kind == "close":
                st.closes[f"{role}:{obj}"] += 1
                st.bad("steady_closed", f"subscriber {s.i} closed by the relay with {obj}")
                s.open = False
                return
            else:
                st.bad("steady_reply", str(obj)[:120])
        # Stopping: close politely and expect the echo.
        s.open = False
        await polite_close(st, ws, role)
    except (EOFError, ConnectionError) as e:
        s.open = False
        st.closes[f"{role}:eof"] += 1
        st.bad("steady_dropped", f"subscriber {s.i}: {type(e).__name__}")
    except asyncio.TimeoutError:
        s.open = False
        st.bad("steady_timeout", f"subscriber {s.i} timed out in setup")
    except (ProtocolError, ValueError, OSError) as e:
        s.open = False
        st.bad("steady_error", f"subscriber {s.i}: {e!r}")
    finally:
        s.open = False
        if s.ws is not None:
            s.ws.close_socket()


async def polite_close(st: State, ws: WS, role: str):
    """Sends close 1000 and expects the relay to echo 1000 within 3 s."""
    await ws.send_close(1000)
    deadline = now() + 3.0
    while True:
        try:
            kind, obj = await ws.recv(max(0.01, deadline - now()))
        except EOFError:
            st.closes[f"{role}:eof"] += 1
            st.bad(f"{role}_close_echo", "EOF instead of the close echo")
            return
        except asyncio.TimeoutError:
            st.bad(f"{role}_close_echo", "no close echo within 3 s")
            return
        if kind == "close":
            st.closes[f"{role}:{obj}"] += 1
            if obj != 1000:
                st.bad(f"{role}_close_echo", f"echo {obj}")
            return
        if kind == "event":
            st.events_by_role[role] += 1


# --------------------------------------------------------------------------
# Load: publisher


class Publisher:
    """Keep-alive POST /api/publish with arrays, 10 times a second."""

    def __init__(self, st: State):
        self.st = st
        self.sock = None
        self.buf = bytearray()
        self.n = 0

    async def _connect(self):
        loop = asyncio.get_running_loop()
        self.sock = await open_socket(loop, self.st.port, 5.0)
        self.buf = bytearray()

    def _drop(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    async def post(self, events):
        loop = asyncio.get_running_loop()
        if self.sock is None:
            await self._connect()
        body = json.dumps(events, separators=(",", ":")).encode()
        req = (
            f"POST /api/publish HTTP/1.1\r\nHost: {HOST}:{self.st.port}\r\n"
            f"Authorization: Bearer {TOKEN_PUB}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        deadline = now() + 5.0
        await loop.sock_sendall(self.sock, req)
        while b"\r\n\r\n" not in self.buf:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), max(0.01, deadline - now()))
            if not data:
                raise EOFError("publish connection closed")
            self.buf += data
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        hdrs = {l.partition(":")[0].strip().lower(): l.partition(":")[2].strip() for l in lines[1:]}
        want = int(hdrs.get("content-length", "0"))
        rest = bytearray(rest)
        while len(rest) < want:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), max(0.01, deadline - now()))
            if not data:
                raise EOFError("publish connection closed mid-body")
            rest += data
        self.buf = rest[want:]
        if hdrs.get("connection", "").lower() == "close":
            self._drop()
        return status, bytes(rest[:want])

    async def run(self):
        st = self.st
        acc = {ch: random.random() for ch in PUBLISH_RATES}
        tick = 0.1
        next_at = now()
        while not st.stop.is_set():
            batch = []
            for ch, rate in PUBLISH_RATES.items():
                acc[ch] += rate * tick
                while acc[ch] >= 1.0:
                    acc[ch] -= 1.0
                    self.n += 1
                    pad = "x" * (BULK_BYTES if ch.startswith("bulk.") else random.randint(100, 400))
                    batch.append({"channel": ch, "data": {"n": self.n, "t": int(time.time() * 1000), "p": pad}})
            if batch:
                try:
                    status, body = await self.post(batch)
                    st.http[f"publish:{status}"] += 1
                    if status == 200:
                        seqs = json.loads(body).get("seqs") if len(batch) > 1 else [json.loads(body).get("seq")]
                        if not isinstance(seqs, list) or len(seqs) != len(batch):
                            st.bad("publish_reply", body[:120].decode(errors="replace"))
                        else:
                            if seqs != sorted(seqs) or (seqs and seqs[0] <= st.max_seq):
                                st.bad("publish_seq_order", f"{seqs[:5]} after {st.max_seq}")
                            for ev, seq in zip(batch, seqs):
                                if ev["channel"].startswith("metrics."):
                                    st.metric_seqs.append(seq)
                            st.max_seq = max(st.max_seq, seqs[-1])
                            st.counts["published"] += len(batch)
                    else:
                        st.bad("publish_status", f"{status} {body[:120]!r}")
                except (OSError, EOFError, asyncio.TimeoutError, ProtocolError, ValueError) as e:
                    self._drop()
                    st.bad("publish_error", repr(e))
            next_at += tick
            delay = next_at - now()
            if delay < -1.0:  # far behind (a stall): do not burst to catch up
                next_at = now()
                delay = 0
            try:
                await asyncio.wait_for(st.stop.wait(), max(0.0, delay))
            except asyncio.TimeoutError:
                pass
        self._drop()


# --------------------------------------------------------------------------
# Load: churn


async def churn_client(st: State, i: int):
    role = "churn"
    rng = random.Random(i * 7919 + 13)
    restricted = i % 5 == 4
    by_proto = i % 2 == 0
    token = TOKEN_JOBS if restricted else TOKEN_ALL
    ws = None
    try:
        status, _, ws = await ws_connect(st, token if by_proto else None)
        st.http[f"churn_upgrade:{status}"] += 1
        if ws is None:
            st.bad("churn_upgrade", f"status {status}")
            return
        defaults = [] if restricted else list(DEFAULT_CHANNELS)
        current = defaults if by_proto else []
        if not by_proto:
            if not await authenticate_by_message(st, ws, token, role):
                return
            current = defaults
        if restricted:
            # Outside the token's patterns: all or nothing, `forbidden`.
            ask = ["alert.>"] if rng.random() < 0.5 else ["job.*", "alert.>"]
            result, code = await subscribe(st, ws, ask, current, role, ok_codes=("forbidden",))
            if result != "error" or code != "forbidden":
                st.bad("restricted_not_forbidden", f"{ask} -> {result} {code}")
                return
            st.counts["forbidden"] += 1
            result, _ = await subscribe(st, ws, ["job.*"], current, role)
            if result != "subscribed":
                return
            current = ["job.*"]
        elif rng.random() < 0.75:
            patterns = [p for p in CHURN_PATTERNS if rng.random() < 0.5] or [rng.choice(CHURN_PATTERNS)]
            result, _ = await subscribe(st, ws, patterns, current, role)
            if result != "subscribed":
                return
            current = patterns
        else:
            st.counts["churn_defaults_only"] += 1
        want_pong = rng.random() < 0.3
        if want_pong:
            await ws.send_text({"type": "ping"})
        hold_until = now() + rng.uniform(0.3, 2.0)
        got_pong = False
        while True:
            remaining = hold_until - now()
            if remaining <= 0:
                break
            try:
                kind, obj = await ws.recv(remaining)
            except asyncio.TimeoutError:
                break
            if kind == "event":
                st.events_by_role[role] += 1
                if not matches_any(current, obj.get("type", "")):
                    st.bad("churn_wrong_channel", f"{obj.get('type')} with {current} (restricted={restricted})")
            elif kind == "close":
                st.closes[f"{role}:{obj}"] += 1
                st.bad("churn_closed", f"closed {obj} while reading")
                return
            elif obj.get("type") == "pong":
                got_pong = True
            else:
                st.bad("churn_reply", str(obj)[:120])
        if want_pong and not got_pong:
            # Give the pong a last moment: it may be behind the hold deadline.
            try:
                while True:
                    kind, obj = await ws.recv(2.0)
                    if kind == "reply" and obj.get("type") == "pong":
                        got_pong = True
                        break
                    if kind == "close":
                        st.closes[f"{role}:{obj}"] += 1
                        st.bad("churn_closed", f"closed {obj} waiting for pong")
                        return
            except asyncio.TimeoutError:
                st.bad("churn_no_pong", "no pong within 2 s")
        mode = rng.random()
        if mode < 0.5:
            await polite_close(st, ws, role)
            st.counts["churn_polite"] += 1
        elif mode < 0.75:
            ws.close_socket()
            st.counts["churn_abrupt_fin"] += 1
        else:
            ws.close_socket(reset=True)
            st.counts["churn_abrupt_rst"] += 1
        st.counts["churn_done"] += 1
    except (EOFError, ConnectionError) as e:
        st.closes[f"{role}:eof"] += 1
        st.bad("churn_dropped", type(e).__name__)
    except asyncio.TimeoutError:
        st.bad("churn_timeout", f"client {i}")
    except (ProtocolError, ValueError, OSError) as e:
        st.bad("churn_error", repr(e))
    finally:
        if ws is not None:
            ws.close_socket()


# --------------------------------------------------------------------------
# Load: slow readers


async def slow_reader(st: State, i: int, stall_s: float):
    """Subscribes to everything with a tiny receive buffer and does not read
    for `stall_s`; then drains and expects the relay to have cut it (1008)."""
    role = "slow"
    ws = None
    try:
        status, _, ws = await ws_connect(st, TOKEN_ALL, rcvbuf=4096)
        st.http[f"slow_upgrade:{status}"] += 1
        if ws is None:
            st.bad("slow_upgrade", f"status {status}")
            return
        await ws.send_text({"type": "subscribe", "channels": [">"]})
        st.counts["slow_started"] += 1
        try:
            await asyncio.wait_for(st.stop.wait(), stall_s)
            return  # stopping: not judged
        except asyncio.TimeoutError:
            pass
        deadline = now() + 20.0
        events = 0
        while True:
            try:
                kind, obj = await ws.recv(max(0.01, deadline - now()))
            except EOFError:
                st.closes[f"{role}:eof"] += 1
                st.counts["slow_cut"] += 1
                break
            except ConnectionResetError:
                st.closes[f"{role}:reset"] += 1
                st.counts["slow_cut"] += 1
                break
            except asyncio.TimeoutError:
                st.bad("slow_not_cut", f"slow reader {i} still open {stall_s + 20:.0f} s after it stopped reading")
                break
            if kind == "close":
                st.closes[f"{role}:{obj}"] += 1
                if obj == 1008:
                    st.counts["slow_cut"] += 1
                else:
                    st.bad("slow_close_code", f"{obj}")
                break
            events += 1
        st.events_by_role[role] += events
    except asyncio.TimeoutError:
        st.bad("slow_timeout", f"reader {i} timed out in setup")
    except (ProtocolError, ValueError, OSError, EOFError) as e:
        st.bad("slow_error", repr(e))
    finally:
        if ws is not None:
            ws.close_socket()


# --------------------------------------------------------------------------
# Load: auth failures


async def auth_failure(st: State, i: int):
    kind = i % 4
    ws = None
    try:
        if kind == 0:  # bad token in the subprotocol: 401 before the upgrade
            status, _, ws = await ws_connect(st, TOKEN_BAD)
            st.http[f"bad_bearer:{status}"] += 1
            if status != 401:
                st.bad("bad_bearer_status", f"{status}")
            return
        if kind == 1:  # bad token in the auth message: close 4001
            status, _, ws = await ws_connect(st, None)
            if ws is None:
                st.bad("authfail_upgrade", f"{status}")
                return
            await ws.send_text({"type": "auth", "token": TOKEN_BAD})
            code = await wait_close(ws, 5.0)
            st.closes[f"bad_auth_msg:{code}"] += 1
            if code != 4001:
                st.bad("bad_auth_msg_close", f"{code}")
            return
        # No auth within timeouts.auth: 4008 (kind 3 first tries a subscribe).
        # The relay starts the clock at the upgrade, somewhere between our
        # connect and our reading the 101: a correct relay never closes less
        # than the timeout after the connect, nor much later than the timeout
        # after the 101 (so a stall in this client cannot fail the check).
        t_connect = now()
        status, _, ws = await ws_connect(st, None)
        if ws is None:
            st.bad("authfail_upgrade", f"{status}")
            return
        t0 = now()
        if kind == 3:
            await ws.send_text({"type": "subscribe", "channels": ["job.*"]})
            k, obj = await ws.recv(3.0)
            if not (k == "reply" and obj.get("type") == "error"
                    and obj.get("data", {}).get("code") == "not_authenticated"):
                st.bad("unauth_subscribe", f"{k} {str(obj)[:120]}")
            else:
                st.counts["not_authenticated"] += 1
        code = await wait_close(ws, AUTH_TIMEOUT_S + 5.0)
        t_close = now()
        st.closes[f"no_auth:{code}"] += 1
        if code != 4008:
            st.bad("no_auth_close", f"{code}")
        elif t_close - t_connect < AUTH_TIMEOUT_S - 0.05:
            st.bad("no_auth_early", f"4008 {t_close - t_connect:.3f} s after connecting (timeout {AUTH_TIMEOUT_S} s)")
        elif t_close - t0 > AUTH_TIMEOUT_S + 3.0:
            st.bad("no_auth_late", f"4008 {t_close - t0:.2f} s after the 101 (timeout {AUTH_TIMEOUT_S} s)")
        st.counts["no_auth_wait_ms_max"] = max(st.counts["no_auth_wait_ms_max"], int(1000 * (t_close - t0)))
        if code == 4008:
            st.counts["no_auth_wait_ms_min"] = min(st.counts.get("no_auth_wait_ms_min", 10**9),
                                                   int(1000 * (t_close - t_connect)))
    except asyncio.TimeoutError:
        st.bad("authfail_timeout", f"kind {kind}")
    except (ProtocolError, ValueError, OSError, EOFError) as e:
        st.bad("authfail_error", f"kind {kind}: {e!r}")
    finally:
        if ws is not None:
            ws.close_socket()


async def wait_close(ws: WS, timeout: float):
    """The close code the relay sends (events and replies before it skipped)."""
    deadline = now() + timeout
    while True:
        try:
            kind, obj = await ws.recv(max(0.01, deadline - now()))
        except EOFError:
            return "eof"
        except ConnectionResetError:
            return "reset"
        except asyncio.TimeoutError:
            return "timeout"
        if kind == "close":
            return obj


async def publish_auth_probe(st: State):
    """POST without a token (401) and with a wrong one (403)."""
    body = json.dumps({"channel": "job.progress", "data": {"probe": True}}).encode()
    for token, want in ((None, 401), (TOKEN_BAD, 403)):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        try:
            status, _ = await http_once(st, "POST", "/api/publish", body, headers)
            st.http[f"publish_{'no' if token is None else 'bad'}_token:{status}"] += 1
            if status != want:
                st.bad("publish_auth_status", f"expected {want}, got {status}")
        except (OSError, EOFError, asyncio.TimeoutError, ProtocolError) as e:
            st.bad("publish_auth_error", repr(e))


# --------------------------------------------------------------------------
# Spawners: each bounded by the stop event and a count


async def spawn_at_rate(st: State, rate: float, max_inflight: int, make, max_count: int, name: str):
    tasks = set()
    interval = 1.0 / rate
    next_at = now()
    for i in range(max_count):
        if st.stop.is_set():
            break
        if len(tasks) < max_inflight:
            t = asyncio.create_task(asyncio.wait_for(make(i), 30.0))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            t.add_done_callback(lambda t, name=name: _task_done(st, t, name))
        else:
            st.counts[f"{name}_skipped"] += 1
        next_at += interval
        delay = next_at - now()
        if delay < -1.0:
            next_at, delay = now(), 0
        try:
            await asyncio.wait_for(st.stop.wait(), max(0.0, delay))
        except asyncio.TimeoutError:
            pass
    # Let the clients in flight finish (each is bounded), then cancel the rest.
    if tasks:
        await asyncio.wait(set(tasks), timeout=25.0)
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.wait(set(tasks), timeout=5.0)


def _task_done(st: State, t: asyncio.Task, name: str):
    if t.cancelled():
        return
    e = t.exception()
    if isinstance(e, asyncio.TimeoutError):
        st.bad(f"{name}_overall_timeout", "client took over 30 s")
    elif e is not None:
        st.bad(f"{name}_crash", repr(e))


async def slow_spawner(st: State, concurrent: int, stall_s: float, max_count: int):
    tasks = set()
    for i in range(max_count):
        if st.stop.is_set():
            break
        while len(tasks) >= concurrent and not st.stop.is_set():
            await asyncio.wait(set(tasks), timeout=1.0)
        if st.stop.is_set():
            break
        t = asyncio.create_task(asyncio.wait_for(slow_reader(st, i, stall_s), stall_s + 40.0))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        t.add_done_callback(lambda t: _task_done(st, t, "slow"))
        try:  # stagger
            await asyncio.wait_for(st.stop.wait(), stall_s / max(1, concurrent))
        except asyncio.TimeoutError:
            pass
    if tasks:
        await asyncio.wait(set(tasks), timeout=10.0)
        for t in list(tasks):
            t.cancel()
        await asyncio.wait(set(tasks), timeout=5.0)


async def lag_probe(st: State, max_count: int):
    """How late the event loop wakes a 100 ms sleep: the script's own stalls."""
    for _ in range(max_count):
        if st.stop_steady.is_set():
            return
        t = now()
        await asyncio.sleep(0.1)
        lag_ms = int(1000 * (now() - t - 0.1))
        st.counts["loop_lag_ms_max"] = max(st.counts["loop_lag_ms_max"], lag_ms)
        st.counts["loop_lag_ms_window"] = max(st.counts["loop_lag_ms_window"], lag_ms)


async def probe_loop(st: State, every_s: float, max_count: int):
    for _ in range(max_count):
        try:
            await asyncio.wait_for(st.stop.wait(), every_s)
            return
        except asyncio.TimeoutError:
            pass
        await publish_auth_probe(st)


# --------------------------------------------------------------------------
# The relay


def build(no_build: bool):
    if no_build:
        return
    cmd = ["cargo", "build", "--release", "-p", "tidings"]
    print(f"building: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, cwd=REPO, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"build failed ({r.returncode})")


def start_relay(binary: Path, config: Path, log: Path, pin: bool):
    cmd = [str(binary), "--config", str(config)]
    if pin and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0"] + cmd
    env = dict(os.environ, TIDINGS_LOG=os.environ.get("TIDINGS_LOG", "warn"))
    logf = open(log, "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    logf.close()
    print(f"relay pid {proc.pid}: {' '.join(cmd)}", flush=True)
    return proc


def stop_relay(proc, timeout=10.0):
    """SIGTERM, wait, SIGKILL. Returns the exit code (or None if it was killed)."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        os.kill(proc.pid, signal.SIGTERM)
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        return None
    except ProcessLookupError:
        return proc.poll()


async def wait_ready(st: State, proc, timeout=15.0):
    deadline = now() + timeout
    while now() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode} at startup")
        try:
            status, _ = await http_once(st, "GET", "/healthz", timeout=1.0)
            if status == 200:
                return
        except (OSError, EOFError, asyncio.TimeoutError, ProtocolError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("relay not ready within 15 s")


# --------------------------------------------------------------------------
# Sampling


async def take_sample(st: State, proc, phase: str, t0: float) -> dict:
    pid = proc.pid
    # /proc first, so the /metrics request's own socket is not in the fd count.
    rss, fds, cpu = read_rss_kib(pid), count_fds(pid), read_cpu_s(pid)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    try:
        metrics = await fetch_metrics(st)
    except (OSError, EOFError, asyncio.TimeoutError, ProtocolError) as e:
        metrics = {}
        if proc.poll() is None:
            st.bad("metrics_error", repr(e))
    checked, missing, extra = st.steady_check()
    return {
        "type": "sample",
        "phase": phase,
        "t": round(now() - t0, 1),
        "wall": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "relay_alive": proc.poll() is None,
        "rss_kib": rss,
        "fds": fds,
        "relay_cpu_s": cpu,
        "client_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "relay": metrics,
        "client": {
            "closes": dict(st.closes),
            "http": dict(st.http),
            "counts": dict(st.counts),
            "events": dict(st.events_by_role),
            "steady_open": sum(1 for s in st.steadies if s.open),
            "steady_checked": checked,
            "steady_missing": missing,
            "steady_extra": extra,
            "unexpected": sum(st.unexpected.values()),
            "loop_lag_ms": st.counts.pop("loop_lag_ms_window", 0),
        },
    }


def print_sample(s: dict, prev: dict | None):
    r, c = s["relay"], s["client"]
    dtime = (s["t"] - prev["t"]) if prev else 0
    rate = ""
    if prev and dtime > 0 and "deliveries_total" in r and "deliveries_total" in prev["relay"]:
        rate = f"{(r['deliveries_total'] - prev['relay']['deliveries_total']) / dtime:7.0f}/s"
    cpu = ""
    if prev and dtime > 0 and s.get("relay_cpu_s") is not None and prev.get("relay_cpu_s") is not None:
        cpu = (f" cpu relay {100 * (s['relay_cpu_s'] - prev['relay_cpu_s']) / dtime:3.0f}%"
               f" client {100 * (s['client_cpu_s'] - prev['client_cpu_s']) / dtime:3.0f}%")
    rss = f"{s['rss_kib'] / 1024:6.1f}MiB" if s["rss_kib"] else "   ?   "
    closes = " ".join(f"{k}={v}" for k, v in sorted(c["closes"].items()))
    print(
        f"[{s['phase']:>9} t={s['t']:7.1f}s] rss {rss} fds {s['fds']}{cpu} "
        f"conns {r.get('connections', '?')} ws {r.get('websockets', '?')} "
        f"deliv {r.get('deliveries_total', '?')} {rate} pub {r.get('events_published_total', '?')} "
        f"slow {r.get('slow_consumer_closes_total', '?')} authfail {r.get('auth_failures_total', '?')} "
        f"proto {r.get('protocol_closes_total', '?')} rej {r.get('rejected_connections_total', '?')} | "
        f"steady {c['steady_open']} miss {c['steady_missing']} churn {c['counts'].get('churn_done', 0)} "
        f"unexpected {c['unexpected']} lag {c['loop_lag_ms']}ms | {closes}",
        flush=True,
    )


# --------------------------------------------------------------------------
# The run


async def run(args, proc, st: State, out):
    samples: list[dict] = []

    def record(s):
        samples.append(s)
        out.write(json.dumps(s) + "\n")
        out.flush()
        print_sample(s, samples[-2] if len(samples) > 1 and samples[-2]["phase"] == s["phase"] else None)

    await wait_ready(st, proc)
    t0 = now()
    await asyncio.sleep(1.0)
    baseline = await take_sample(st, proc, "baseline", t0)
    record(baseline)
    lag_task = asyncio.create_task(lag_probe(st, int((args.duration + 300) * 10)))

    # Steady subscribers, opened at about 100/s.
    for i in range(args.steady):
        s = Steady(i)
        st.steadies.append(s)
        s.task = asyncio.create_task(steady_run(st, s))
        if i % 10 == 9:
            await asyncio.sleep(0.1)
    ready_deadline = now() + 30.0
    while now() < ready_deadline and st.counts["steady_subscribed"] + sum(st.unexpected.values()) < args.steady:
        await asyncio.sleep(0.2)
    print(f"steady subscribers: {st.counts['steady_subscribed']}/{args.steady} subscribed", flush=True)

    load_t0 = now()
    st.load_t0 = load_t0
    st.load_start_t = load_t0 - t0
    end = load_t0 + args.duration
    max_events = int(args.duration * 4) + 100
    load = [
        asyncio.create_task(Publisher(st).run()),
        asyncio.create_task(spawn_at_rate(st, args.churn_rate, 200, lambda i: churn_client(st, i),
                                          int(args.duration * args.churn_rate) + 10, "churn")),
        asyncio.create_task(slow_spawner(st, args.slow, args.slow_stall, max_events)),
        asyncio.create_task(spawn_at_rate(st, args.authfail_rate, 50, lambda i: auth_failure(st, i),
                                          int(args.duration * args.authfail_rate) + 10, "authfail")),
        asyncio.create_task(probe_loop(st, 5.0, max_events)),
    ]

    crashed = False
    next_sample = load_t0 + args.sample
    while now() < end:
        # Wake at least once a second to notice a relay that died.
        await asyncio.sleep(max(0.0, min(next_sample, end, now() + 1.0) - now()))
        if proc.poll() is not None:
            crashed = True
            st.bad("relay_exited", f"relay exited with {proc.returncode} during the load")
            break
        if now() >= next_sample - 0.01:
            record(await take_sample(st, proc, "load", t0))
            next_sample += args.sample
    if not crashed:
        record(await take_sample(st, proc, "load-end", t0))

    # Stop everything: spawners finish their clients, steady subscribers close.
    print("stopping the load", flush=True)
    st.stop.set()
    await asyncio.wait(load, timeout=45.0)
    for t in load:
        t.cancel()
    st.stop_steady.set()
    steady_tasks = [s.task for s in st.steadies if s.task]
    await asyncio.wait(steady_tasks, timeout=10.0)
    for t in steady_tasks:
        t.cancel()
    lag_task.cancel()
    await asyncio.sleep(0)

    quiet = None
    if proc.poll() is None:
        # At least 10 s for closes and lingering sockets, then until the
        # relay reports no WebSocket and only the /metrics socket, at most 30 s.
        await asyncio.sleep(10.0)
        settle_deadline = now() + 20.0
        while now() < settle_deadline:
            try:
                m = await fetch_metrics(st)
                if m.get("websockets") == 0 and m.get("connections", 99) <= 1:
                    break
            except (OSError, EOFError, asyncio.TimeoutError, ProtocolError):
                pass
            await asyncio.sleep(1.0)
        quiet = await take_sample(st, proc, "quiescent", t0)
        record(quiet)
    elif not crashed:
        st.bad("relay_exited", f"relay exited with {proc.returncode} while stopping")
    return samples, baseline, quiet


def verdict(args, st: State, samples, baseline, quiet, exit_code, log_path: Path):
    failures = []
    load = [s for s in samples if s["phase"] in ("load", "load-end") and s["rss_kib"]]
    if st.unexpected.get("relay_exited") or exit_code not in (0, None) or quiet is None:
        failures.append(f"relay did not survive (exit {exit_code})")
    if exit_code is None and quiet is not None:
        failures.append("relay did not exit within 10 s of SIGTERM (killed)")
    # Leak rule 1: fds after quiescence vs before any load.
    if quiet and baseline and quiet["fds"] is not None and baseline["fds"] is not None:
        if quiet["fds"] > baseline["fds"] + FD_SLACK:
            failures.append(f"fd leak: {baseline['fds']} before load, {quiet['fds']} after (slack {FD_SLACK})")
    # Leak rule 2: gauges back to zero.
    if quiet and quiet["relay"]:
        if quiet["relay"].get("websockets") != 0 or quiet["relay"].get("connections", 99) > 1:
            failures.append(f"gauges not back to idle: connections {quiet['relay'].get('connections')} "
                            f"websockets {quiet['relay'].get('websockets')}")
    # Leak rule 3: RSS growth from the 25 % sample to the last sample under load.
    rss_25 = rss_end = None
    if load:
        target = st.load_start_t + 0.25 * args.duration
        at25 = next((s for s in load if s["t"] >= target - 0.01), load[-1])
        rss_25 = at25["rss_kib"]
        # The end: the last sample under load or the quiescent one, the larger.
        rss_end = max(load[-1]["rss_kib"], (quiet or {}).get("rss_kib") or 0)
        limit = max(RSS_GROWTH_FRACTION * rss_25, RSS_GROWTH_FLOOR_KIB)
        if rss_end - rss_25 > limit:
            failures.append(f"RSS grew {(rss_end - rss_25) / 1024:.1f} MiB from the 25 % sample "
                            f"(t={at25['t']} s) to the end (limit {limit / 1024:.1f} MiB)")
    # Relay counters that must agree with what the clients did.
    if quiet and quiet["relay"]:
        r = quiet["relay"]
        slow = r.get("slow_consumer_closes_total", 0)
        if not (st.counts["slow_cut"] <= slow <= st.counts["slow_started"]):
            failures.append(f"slow-consumer closes {slow} outside [{st.counts['slow_cut']} cut, "
                            f"{st.counts['slow_started']} slow readers started]: someone else was cut")
        for key in ("protocol_closes_total", "rejected_connections_total", "dropped_frames_total"):
            if r.get(key, 0):
                failures.append(f"relay {key} = {r[key]}, expected 0 (no client breaks the protocol "
                                f"or reaches max_connections)")
    # Steady completeness, final.
    checked, missing, extra = st.steady_check(final=True)
    if missing or extra:
        st.bad("steady_seq_gaps", f"{missing} events missing, {extra} extra over {checked} subscribers")
    # Coverage: every kind of load must actually have happened.
    c = st.closes
    need = {
        "steady subscribers subscribed": st.counts["steady_subscribed"] == args.steady,
        "churn clients completed": st.counts["churn_done"] > 0,
        "slow readers cut": st.counts["slow_cut"] > 0,
        "401 on a bad Bearer subprotocol": st.http["bad_bearer:401"] > 0,
        "4001 on a bad auth message": c["bad_auth_msg:4001"] > 0,
        "4008 without auth": c["no_auth:4008"] > 0,
        "forbidden for the restricted token": st.counts["forbidden"] > 0,
        "publish 401/403": st.http["publish_no_token:401"] > 0 and st.http["publish_bad_token:403"] > 0,
        "events delivered": st.events_by_role["steady"] > 0,
    }
    for what, ok in need.items():
        if not ok and args.duration >= 60:
            failures.append(f"coverage: no {what}")
    if sum(st.unexpected.values()):
        failures.append(f"{sum(st.unexpected.values())} unexpected outcomes: {dict(st.unexpected)}")
    try:
        log_text = log_path.read_text(errors="replace")
        if "panic" in log_text.lower():
            failures.append("the relay log mentions a panic")
    except OSError:
        pass
    return failures, rss_25, rss_end


def summary(args, st, samples, baseline, quiet, failures, rss_25, rss_end, exit_code, out_path):
    load = [s for s in samples if s["phase"] in ("load", "load-end")]
    rss = [s["rss_kib"] for s in samples if s["rss_kib"]]
    fds = [s["fds"] for s in samples if s["fds"] is not None]
    last = (quiet or (load[-1] if load else samples[-1]))["relay"]
    first_load = load[0] if load else None
    mib = lambda k: f"{k / 1024:.1f} MiB" if k else "?"
    # RSS slope over the second half of the load, informational.
    half = [s for s in load if s["rss_kib"]][len(load) // 2:]
    slope = ""
    if len(half) >= 2 and half[-1]["t"] > half[0]["t"]:
        slope = f"{(half[-1]['rss_kib'] - half[0]['rss_kib']) / ((half[-1]['t'] - half[0]['t']) / 60):+.0f} KiB/min"
    rows = [
        ("duration (load)", f"{args.duration:.0f} s, sampled every {args.sample:.0f} s, {len(samples)} samples"),
        ("events published", f"{last.get('events_published_total', '?')} (relay), {st.counts['published']} (script)"),
        ("deliveries", f"{last.get('deliveries_total', '?')} (relay); client events {dict(st.events_by_role)}"),
        ("steady subscribers", f"{st.counts['steady_subscribed']}/{args.steady}; "
                               f"seq check: {st.steady_check(final=True)[1]} missing"),
        ("churn", f"{st.counts['churn_done']} done (polite {st.counts['churn_polite']}, "
                  f"FIN {st.counts['churn_abrupt_fin']}, RST {st.counts['churn_abrupt_rst']}), "
                  f"skipped {st.counts['churn_skipped']}"),
        ("slow readers", f"{st.counts['slow_started']} started, {st.counts['slow_cut']} cut; "
                         f"relay slow-consumer closes {last.get('slow_consumer_closes_total', '?')}"),
        ("auth", f"relay auth failures {last.get('auth_failures_total', '?')}; forbidden "
                 f"{st.counts['forbidden']}; not_authenticated {st.counts['not_authenticated']}"),
        ("closes seen by clients", " ".join(f"{k}={v}" for k, v in sorted(st.closes.items()))),
        ("HTTP statuses", " ".join(f"{k}={v}" for k, v in sorted(st.http.items()))),
        ("relay counters", f"accepted {last.get('accepted_total', '?')} rejected "
                           f"{last.get('rejected_connections_total', '?')} protocol closes "
                           f"{last.get('protocol_closes_total', '?')} http {last.get('http_requests_total', '?')}"),
        ("client loop lag", f"max {st.counts['loop_lag_ms_max']} ms (the script's own stalls); "
                            f"4008 after {st.counts.get('no_auth_wait_ms_min', '?')}..{st.counts['no_auth_wait_ms_max']} ms"),
        ("CPU", f"relay {quiet['relay_cpu_s'] if quiet else '?'} s, client {quiet['client_cpu_s'] if quiet else '?'} s"),
        ("RSS", f"min {mib(min(rss) if rss else None)} max {mib(max(rss) if rss else None)} "
                f"baseline {mib(baseline['rss_kib'])} first-load {mib(first_load['rss_kib'] if first_load else None)} "
                f"25% {mib(rss_25)} end-of-load {mib(rss_end)} quiescent {mib(quiet['rss_kib'] if quiet else None)}"
                + (f"; 2nd-half slope {slope}" if slope else "")),
        ("fds", f"baseline {baseline['fds']} max {max(fds) if fds else '?'} "
                f"quiescent {quiet['fds'] if quiet else '?'} (allowed +{FD_SLACK})"),
        ("relay exit", f"{exit_code}"),
        ("unexpected", f"{sum(st.unexpected.values())} {dict(st.unexpected) if st.unexpected else ''}"),
        ("samples", str(out_path)),
        ("verdict", "PASS" if not failures else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * 78)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for f in failures:
        print(f"  FAIL: {f}")
    print("=" * 78, flush=True)
    return {k: v for k, v in rows}


def main():
    ap = argparse.ArgumentParser(description="Soak test for the tidings relay (loopback only).")
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 1800)")
    ap.add_argument("--sample", type=float, default=None, help="seconds between samples (default 10; 5 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a 120 s smoke run")
    ap.add_argument("--relay-bin", default="target/release/tidings", help="relay binary (relative to the repo)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--out", default=None, help="JSON lines of samples (default loadtest/results/soak-DATE.jsonl)")
    ap.add_argument("--steady", type=int, default=200, help="steady subscribers (default 200)")
    ap.add_argument("--churn-rate", type=float, default=25.0, help="churn connections per second (default 25)")
    ap.add_argument("--slow", type=int, default=3, help="slow readers at a time (default 3)")
    ap.add_argument("--slow-stall", type=float, default=40.0,
                    help="seconds a slow reader does not read (default 40; under the 60 s pong_wait)")
    ap.add_argument("--authfail-rate", type=float, default=2.0, help="auth failures per second (default 2)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the relay to CPU 0")
    args = ap.parse_args()
    if args.quick and args.duration == 1800.0:
        args.duration = 120.0
    if args.sample is None:
        args.sample = 5.0 if args.quick else 10.0
    if not (10 <= args.duration <= 24 * 3600) or not (1 <= args.sample <= 600):
        sys.exit("--duration must be 10..86400 s and --sample 1..600 s")
    if not (1 <= args.steady <= 2000 and 0.1 <= args.churn_rate <= 200 and 0 < args.slow <= 50
            and 0.1 <= args.authfail_rate <= 50 and 5 <= args.slow_stall <= 55):
        sys.exit("a load flag is out of its range (see --help)")

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_path = Path(args.out) if args.out else REPO / "loadtest" / "results" / f"soak-{stamp}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    binary = Path(args.relay_bin)
    if not binary.is_absolute():
        binary = REPO / binary

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))

    build(args.no_build)
    if not binary.exists():
        sys.exit(f"{binary} does not exist (build it or pass --relay-bin)")

    port = args.port or pick_free_port()
    tmp = Path(tempfile.mkdtemp(prefix="tidings-soak-"))
    config = tmp / "soak.toml"
    config.write_text(CONFIG_TEMPLATE.format(host=HOST, port=port, all=TOKEN_ALL, jobs=TOKEN_JOBS, pub=TOKEN_PUB))
    log_path = tmp / "relay.log"

    pin = not args.no_pin
    if pin and (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        try:  # keep the clients off the relay's CPU
            os.sched_setaffinity(0, set(range(1, os.cpu_count())))
        except OSError:
            pass

    print(f"soak: {args.duration:.0f} s of load on {HOST}:{port}, config {config}, samples -> {out_path}", flush=True)
    proc = None
    exit_code = None
    st = None
    samples, baseline, quiet = [], None, None
    interrupted = False
    try:
        proc = start_relay(binary, config, log_path, pin)
        st_holder = {}

        async def amain():
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            st_holder["st"] = State(port)
            with open(out_path, "a") as out:
                return await run(args, proc, st_holder["st"], out)

        try:
            samples, baseline, quiet = asyncio.run(amain())
        except asyncio.CancelledError:
            interrupted = True
        st = st_holder.get("st")
    finally:
        if proc is not None:
            exit_code = stop_relay(proc)
            print(f"relay stopped: exit {exit_code}", flush=True)
    if interrupted or st is None or baseline is None:
        print(f"interrupted; relay log kept in {tmp}", flush=True)
        return 2
    failures, rss_25, rss_end = verdict(args, st, samples, baseline, quiet, exit_code, log_path)
    table = summary(args, st, samples, baseline, quiet, failures, rss_25, rss_end, exit_code, out_path)
    with open(out_path, "a") as out:
        out.write(json.dumps({"type": "summary", "pass": not failures, "failures": failures,
                              "unexpected_examples": st.examples, "table": table}) + "\n")
    if failures:
        tail = log_path.read_text(errors="replace").splitlines()[-20:] if log_path.exists() else []
        if tail:
            print("relay log (last lines):\n  " + "\n  ".join(tail))
        print(f"relay log and config kept in {tmp}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
