#!/usr/bin/env python3
"""Smoke check of one server speaking the tidings protocol subset.

    python3 check-peer.py PORT

Opens two WebSocket clients on 127.0.0.1:PORT, subscribes them to different
channels, publishes a single event and an array over POST /api/publish, and
checks each client gets exactly its own events with the expected fields.
Needs the `websocket-client` package. Exits non-zero on the first failure.
"""
import json
import sys
import urllib.request

import websocket


def post(port, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/publish",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, json.loads(r.read())


def recv_json(ws):
    return json.loads(ws.recv())


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)


def main():
    port = int(sys.argv[1])
    url = f"ws://127.0.0.1:{port}/ws"
    a = websocket.create_connection(url, timeout=5)
    b = websocket.create_connection(url, timeout=5)
    a.send(json.dumps({"type": "subscribe", "channels": ["job.progress", "x.y"]}))
    got = recv_json(a)
    check(got == {"type": "subscribed", "channels": ["job.progress", "x.y"]}, f"subscribed reply: {got}")
    b.send(json.dumps({"type": "subscribe", "channels": ["alert.fired"]}))
    check(recv_json(b)["type"] == "subscribed", "b subscribed")
    a.send(json.dumps({"type": "unsubscribe", "channels": ["x.y"]}))
    got = recv_json(a)
    check(got == {"type": "unsubscribed", "channels": ["x.y"]}, f"unsubscribed reply: {got}")

    status, body = post(port, {"channel": "job.progress", "data": {"jobId": "abc", "progress": 0.45}})
    check(status == 200 and isinstance(body.get("seq"), int), f"single publish answer: {status} {body}")
    ev = recv_json(a)
    check(list(ev) == ["type", "timestamp", "seq", "data"], f"event keys/order: {list(ev)}")
    check(ev["type"] == "job.progress" and ev["seq"] == body["seq"], f"event: {ev}")
    check(ev["data"] == {"jobId": "abc", "progress": 0.45}, f"event data: {ev}")
    check(ev["timestamp"].endswith("Z") and len(ev["timestamp"]) == 24, f"timestamp: {ev['timestamp']}")

    status, body = post(
        port,
        [
            {"channel": "alert.fired", "data": {"n": 1}},
            {"channel": "x.y", "data": {"n": 2}},
            {"channel": "job.progress", "type": "job.done", "data": {"n": 3}},
        ],
    )
    check(status == 200 and len(body.get("seqs", [])) == 3, f"array publish answer: {status} {body}")
    seqs = body["seqs"]
    check(seqs == sorted(seqs) and len(set(seqs)) == 3, f"seqs rise: {seqs}")
    ev = recv_json(b)
    check(ev["type"] == "alert.fired" and ev["seq"] == seqs[0] and ev["data"] == {"n": 1}, f"b event: {ev}")
    ev = recv_json(a)
    check(ev["type"] == "job.done" and ev.get("channel") == "job.progress" and ev["seq"] == seqs[2], f"a typed event: {ev}")
    # Nothing else may arrive: x.y was unsubscribed, alert.fired is b's.
    a.settimeout(0.5)
    try:
        extra = a.recv()
        check(False, f"unexpected extra message on a: {extra}")
    except websocket.WebSocketTimeoutException:
        pass

    try:
        post(port, {"data": 1})
        check(False, "publish without channel accepted")
    except urllib.error.HTTPError as e:
        check(e.code == 400, f"publish without channel: {e.code}")

    # 200 more events; each must arrive, in order.
    for i in range(200):
        post(port, {"channel": "alert.fired", "data": {"i": i}})
    last = seqs[0]
    for i in range(200):
        ev = recv_json(b)
        check(ev["data"] == {"i": i} and ev["seq"] > last, f"burst event {i}: {ev}")
        last = ev["seq"]
    a.close()
    b.close()
    print(f"OK: port {port} passes subscribe/unsubscribe/publish/delivery checks")


if __name__ == "__main__":
    main()
