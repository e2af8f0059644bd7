// Comparison peer for tidings-swarm: Node's `ws` library behind a plain
// `http` server. Speaks the subset of docs/protocol.md the swarm uses:
// GET /ws, subscribe/unsubscribe with exact channel names, and
// POST /api/publish with one event or an array of events. Publishing loops
// over the channel's subscriber set and calls ws.send() with one pre-built
// buffer per event.
//
//   node node-ws-server.js [PORT]   (or PORT=... ; HOST defaults to 127.0.0.1)
"use strict";

const http = require("http");
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT || process.argv[2] || 8080);
const host = process.env.HOST || "127.0.0.1";
const MAX_BODY = 1024 * 1024;

let seq = 0;
/** channel -> Set<WebSocket> */
const subscribers = new Map();

function badChannel(c) {
  return typeof c !== "string" || c.length === 0 || c.length > 255 || /[\s*>]/.test(c);
}

function checkEvent(ev) {
  if (ev === null || typeof ev !== "object" || Array.isArray(ev)) return "event is not an object";
  if (badChannel(ev.channel)) return "missing or invalid channel";
  if (ev.type !== undefined && typeof ev.type !== "string") return "type is not a string";
  if (!("data" in ev)) return "missing data";
  return null;
}

function encode(ev) {
  seq += 1;
  const timestamp = new Date().toISOString();
  const out =
    ev.type !== undefined && ev.type !== ev.channel
      ? { type: ev.type, channel: ev.channel, timestamp, seq, data: ev.data }
      : { type: ev.channel, timestamp, seq, data: ev.data };
  return [seq, Buffer.from(JSON.stringify(out))];
}

function publish(channel, buf) {
  const set = subscribers.get(channel);
  if (!set) return;
  for (const ws of set) {
    if (ws.readyState === 1) ws.send(buf, { binary: false });
  }
}

function reply(res, status, obj, extra) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body), ...extra });
  res.end(body);
}

function onPublish(req, res) {
  const chunks = [];
  let size = 0;
  let tooBig = false;
  req.on("data", (c) => {
    size += c.length;
    if (size > MAX_BODY) tooBig = true;
    else chunks.push(c);
  });
  req.on("end", () => {
    if (tooBig) return reply(res, 413, { error: { code: "too_large", message: "body too large" } });
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return reply(res, 400, { error: { code: "bad_json", message: "body is not JSON" } });
    }
    const many = Array.isArray(body);
    const events = many ? body : [body];
    for (const ev of events) {
      const why = checkEvent(ev);
      if (why) return reply(res, 400, { error: { code: "bad_request", message: why } });
    }
    const seqs = [];
    for (const ev of events) {
      const [n, buf] = encode(ev);
      publish(ev.channel, buf);
      seqs.push(n);
    }
    reply(res, 200, many ? { seqs } : { seq: seqs[0] });
  });
}

const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/api/publish") {
    if (req.method !== "POST") return reply(res, 405, { error: { code: "method", message: "POST only" } }, { Allow: "POST" });
    return onPublish(req, res);
  }
  if (path === "/healthz") return reply(res, 200, { status: "ok" });
  if (path === "/ws") return reply(res, 400, { error: { code: "bad_request", message: "WebSocket upgrade required" } });
  reply(res, 404, { error: { code: "not_found", message: "not found" } });
});
// The swarm's publisher keeps its connections open for the whole run.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 130_000;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false, maxPayload: 64 * 1024 });

function wsError(ws, code, message) {
  ws.send(JSON.stringify({ type: "error", data: { code, message } }));
}

function onMessage(ws, data, isBinary) {
  if (isBinary) return ws.close(1003, "binary");
  let msg;
  try {
    msg = JSON.parse(data.toString("utf8"));
  } catch {
    return wsError(ws, "bad_json", "not JSON");
  }
  if (msg === null || typeof msg !== "object" || Array.isArray(msg)) return wsError(ws, "bad_json", "not a JSON object");
  if (msg.type === "ping") return ws.send(JSON.stringify({ type: "pong", timestamp: new Date().toISOString() }));
  if (msg.type !== "subscribe" && msg.type !== "unsubscribe") return wsError(ws, "unknown_type", "unknown type");
  const channels = msg.channels;
  if (!Array.isArray(channels)) return wsError(ws, "bad_request", "channels is not an array");
  const bad = channels.find(badChannel);
  if (bad !== undefined) return wsError(ws, "invalid_channel", `unsupported channel ${JSON.stringify(bad)}`);
  for (const c of channels) {
    if (msg.type === "subscribe") {
      let set = subscribers.get(c);
      if (!set) subscribers.set(c, (set = new Set()));
      set.add(ws);
      ws.channels.add(c);
    } else {
      const set = subscribers.get(c);
      if (set) {
        set.delete(ws);
        if (set.size === 0) subscribers.delete(c);
      }
      ws.channels.delete(c);
    }
  }
  ws.send(JSON.stringify({ type: msg.type === "subscribe" ? "subscribed" : "unsubscribed", channels }));
}

function onClose(ws) {
  for (const c of ws.channels) {
    const set = subscribers.get(c);
    if (set) {
      set.delete(ws);
      if (set.size === 0) subscribers.delete(c);
    }
  }
  ws.channels.clear();
}

server.on("upgrade", (req, socket, head) => {
  if (req.url.split("?")[0] !== "/ws") {
    socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.channels = new Set();
    ws.on("message", (data, isBinary) => onMessage(ws, data, isBinary));
    ws.on("close", () => onClose(ws));
    ws.on("error", () => {});
  });
});

server.listen(port, host, () => {
  const v = require("ws/package.json").version;
  console.log(`node-ws-server (node ${process.version}, ws ${v}) listening on ${host}:${port} pid ${process.pid}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
