// The naive comparison point for tidings-swarm: plain Node `net`, a
// hand-rolled HTTP/WebSocket handshake, and a publish that writes each
// event's frame to each subscribed socket at once (socket.write), with no
// queue, batching or backpressure of its own. Speaks the subset of
// docs/protocol.md the swarm uses.
//
//   node naive-server.js [PORT]     (or PORT=... ; HOST defaults to 127.0.0.1)
"use strict";

const net = require("net");
const crypto = require("crypto");

const port = Number(process.env.PORT || process.argv[2] || 8080);
const host = process.env.HOST || "127.0.0.1";
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEAD = 8192;
const MAX_BODY = 1024 * 1024;
const MAX_MESSAGE = 64 * 1024;

let seq = 0;
const subscribers = new Map(); // channel -> Set<net.Socket>

// An unmasked server frame (FIN + opcode) around `payload`.
function frame(opcode, payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, n]) : n < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  if (n >= 126 && n < 65536) {
    head[0] = 0x80 | opcode;
    head[1] = 126;
    head.writeUInt16BE(n, 2);
  } else if (n >= 65536) {
    head[0] = 0x80 | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([head, payload]);
}

const text = (obj) => frame(0x1, Buffer.from(JSON.stringify(obj)));

function httpReply(sock, status, obj, close) {
  const body = JSON.stringify(obj);
  sock.write(
    `HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      (close ? "Connection: close\r\n" : "") + `\r\n` + body,
  );
  if (close) sock.end();
}

const badChannel = (c) => typeof c !== "string" || c.length === 0 || c.length > 255 || /[\s*>]/.test(c);

function checkEvent(ev) {
  if (ev === null || typeof ev !== "object" || Array.isArray(ev)) return "event is not an object";
  if (badChannel(ev.channel)) return "missing or invalid channel";
  if (ev.type !== undefined && typeof ev.type !== "string") return "type is not a string";
  if (!("data" in ev)) return "missing data";
  return null;
}

function publish(sock, bodyBuf) {
  let body;
  try {
    body = JSON.parse(bodyBuf.toString("utf8"));
  } catch {
    return httpReply(sock, "400 Bad Request", { error: { code: "bad_json", message: "body is not JSON" } });
  }
  const many = Array.isArray(body);
  const events = many ? body : [body];
  for (const ev of events) {
    const why = checkEvent(ev);
    if (why) return httpReply(sock, "400 Bad Request", { error: { code: "bad_request", message: why } });
  }
  const seqs = [];
  for (const ev of events) {
    seq += 1;
    const timestamp = new Date().toISOString();
    const f = text(
      ev.type !== undefined && ev.type !== ev.channel
        ? { type: ev.type, channel: ev.channel, timestamp, seq, data: ev.data }
        : { type: ev.channel, timestamp, seq, data: ev.data },
    );
    const set = subscribers.get(ev.channel);
    if (set) for (const s of set) if (s.writable) s.write(f); // straight to the socket, every time
    seqs.push(seq);
  }
  httpReply(sock, "200 OK", many ? { seqs } : { seq: seqs[0] });
}

function onMessage(sock, payload) {
  let msg;
  try {
    msg = JSON.parse(payload.toString("utf8"));
  } catch {
    msg = undefined;
  }
  const error = (code, message) => sock.write(text({ type: "error", data: { code, message } }));
  if (msg === null || typeof msg !== "object" || Array.isArray(msg)) return error("bad_json", "not a JSON object");
  if (msg.type === "ping") return sock.write(text({ type: "pong", timestamp: new Date().toISOString() }));
  if (msg.type !== "subscribe" && msg.type !== "unsubscribe") return error("unknown_type", "unknown type");
  const channels = msg.channels;
  if (!Array.isArray(channels)) return error("bad_request", "channels is not an array");
  const bad = channels.find(badChannel);
  if (bad !== undefined) return error("invalid_channel", `unsupported channel ${JSON.stringify(bad)}`);
  for (const c of channels) {
    if (msg.type === "subscribe") {
      if (!subscribers.has(c)) subscribers.set(c, new Set());
      subscribers.get(c).add(sock);
      sock.channels.add(c);
    } else {
      subscribers.get(c)?.delete(sock);
      sock.channels.delete(c);
    }
  }
  sock.write(text({ type: msg.type === "subscribe" ? "subscribed" : "unsubscribed", channels }));
}

function closeWs(sock, code) {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(code, 0);
  sock.end(frame(0x8, p));
}

// Parses complete client frames from sock.buf; returns false once closed.
function onFrames(sock) {
  let b = sock.buf;
  // Each turn consumes one whole frame or leaves the loop.
  while (b.length >= 2) {
    const op = b[0] & 0x0f;
    if ((b[1] & 0x80) === 0) return closeWs(sock, 1002), false; // clients must mask
    let len = b[1] & 0x7f;
    let off = 2;
    if (len === 126) {
      if (b.length < 4) break;
      len = b.readUInt16BE(2);
      off = 4;
    } else if (len === 127) {
      if (b.length < 10) break;
      len = Number(b.readBigUInt64BE(2));
      off = 10;
    }
    if (len > MAX_MESSAGE) return closeWs(sock, 1009), false;
    if (b.length < off + 4 + len) break;
    const mask = b.subarray(off, off + 4);
    const payload = Buffer.from(b.subarray(off + 4, off + 4 + len));
    for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
    b = b.subarray(off + 4 + len);
    if (op === 0x1) onMessage(sock, payload);
    else if (op === 0x9) sock.write(frame(0xa, payload));
    else if (op === 0x8) return sock.end(frame(0x8, payload.subarray(0, 2))), false;
    else if (op !== 0xa) return closeWs(sock, 1003), false; // binary and fragments: not spoken here
  }
  sock.buf = b;
  return true;
}

// Parses HTTP requests from sock.buf until the socket becomes a WebSocket.
function onHttp(sock) {
  // Each turn consumes one whole request or leaves the loop.
  while (sock.mode === "http") {
    const end = sock.buf.indexOf("\r\n\r\n");
    if (end < 0) {
      if (sock.buf.length > MAX_HEAD) httpReply(sock, "431 Request Header Fields Too Large", {}, true);
      return;
    }
    const lines = sock.buf.subarray(0, end).toString("latin1").split("\r\n");
    const [method, target] = lines[0].split(" ");
    const headers = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const path = (target || "").split("?")[0];
    if (method === "GET" && path === "/ws") {
      const key = headers["sec-websocket-key"];
      if (!key || (headers.upgrade || "").toLowerCase() !== "websocket") {
        return httpReply(sock, "400 Bad Request", {}, true);
      }
      const accept = crypto.createHash("sha1").update(key + GUID).digest("base64");
      sock.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
      );
      sock.mode = "ws";
      sock.buf = sock.buf.subarray(end + 4);
      return onFrames(sock);
    }
    if (method === "POST" && path === "/api/publish") {
      const len = Number(headers["content-length"]);
      if (!Number.isInteger(len) || len < 0) return httpReply(sock, "411 Length Required", {}, true);
      if (len > MAX_BODY) return httpReply(sock, "413 Payload Too Large", {}, true);
      if (sock.buf.length < end + 4 + len) return; // wait for the body
      const body = sock.buf.subarray(end + 4, end + 4 + len);
      sock.buf = sock.buf.subarray(end + 4 + len);
      publish(sock, body);
      continue;
    }
    sock.buf = sock.buf.subarray(end + 4);
    if (method === "GET" && path === "/healthz") httpReply(sock, "200 OK", { status: "ok" });
    else httpReply(sock, "404 Not Found", {}, true);
  }
}

const server = net.createServer((sock) => {
  sock.setNoDelay(true);
  sock.mode = "http";
  sock.buf = Buffer.alloc(0);
  sock.channels = new Set();
  sock.on("data", (d) => {
    sock.buf = sock.buf.length ? Buffer.concat([sock.buf, d]) : d;
    if (sock.mode === "http") onHttp(sock);
    else onFrames(sock);
  });
  sock.on("error", () => {});
  sock.on("close", () => {
    for (const c of sock.channels) subscribers.get(c)?.delete(sock);
    sock.channels.clear();
  });
});

server.listen(port, host, () => {
  console.log(`naive-server (node ${process.version}) listening on ${host}:${port} pid ${process.pid}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
