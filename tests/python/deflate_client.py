"""A Python `websockets` client against a relay with compression on.

Usage: deflate_client.py HOST:PORT

Checks that permessage-deflate is agreed with no context takeover either
way, that a compressed subscribe is read (the library compresses what it
sends once the extension is agreed), and that events published over HTTP
arrive intact. Exits non-zero, with the reason, on the first failure.
"""

import asyncio
import json
import sys
import urllib.request

import websockets

AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def publish(addr, channel, data):
    body = json.dumps({"channel": channel, "data": data}).encode()
    request = urllib.request.Request(
        f"http://{addr}/api/publish",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status


async def main(addr):
    async with websockets.connect(f"ws://{addr}/ws", compression="deflate") as ws:
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert agreed == AGREED, f"extensions: {agreed!r}"
        names = [e.name for e in ws.protocol.extensions]
        assert names == ["permessage-deflate"], names
        # Long enough that any compression threshold a library has is passed.
        channels = ["metrics.system", "job.*"] + [f"pad.channel{i}" for i in range(40)]
        await ws.send(json.dumps({"type": "subscribe", "channels": channels}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "subscribed", reply
        sample = {
            "cpu": 42.5, "memory": 68.2, "disk": 45.8, "load": [1.2, 1.5, 1.8],
            "network": {"rx_bytes_per_sec": 1250000, "tx_bytes_per_sec": 890000},
            "node": "worker-node-03",
        }
        for i in range(5):
            data = dict(sample, i=i)
            await asyncio.to_thread(publish, addr, "metrics.system", data)
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert event["type"] == "metrics.system", event
            assert event["data"] == data, event
            assert isinstance(event["seq"], int), event
        await ws.send(json.dumps({"type": "ping"}))
        pong = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert pong["type"] == "pong", pong
    print("ok: permessage-deflate agreed, 5 events received, compressed commands read")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
