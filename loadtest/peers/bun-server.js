// Comparison peer for tidings-swarm: Bun.serve with its built-in
// (uWebSockets) pub/sub. Speaks the subset of docs/protocol.md the swarm
// uses: GET /ws, subscribe/unsubscribe with exact channel names, and
// POST /api/publish with one event or an array of events.
//
//   bun bun-server.js [PORT] [--deflate]   (or PORT=... ; HOST defaults to 127.0.0.1)
//
// --deflate turns on Bun's perMessageDeflate and publishes every event with
// compression asked for: what a Bun user does to save bandwidth.

const args = process.argv.slice(2);
const deflate = args.includes("--deflate");
const port = Number(process.env.PORT || args.find((a) => /^[0-9]+$/.test(a)) || 8080);
const hostname = process.env.HOST || "127.0.0.1";

let seq = 0;

function wsError(ws, code, message) {
  ws.send(JSON.stringify({ type: "error", data: { code, message } }));
}

function httpError(status, code, message) {
  return Response.json({ error: { code, message } }, { status });
}

// Exact channel names only: wildcard patterns are refused, not half-supported.
function badChannel(c) {
  return typeof c !== "string" || c.length === 0 || c.length > 255 || /[\s*>]/.test(c);
}

// Returns an error message, or null when `ev` is a valid publish item.
function checkEvent(ev) {
  if (ev === null || typeof ev !== "object" || Array.isArray(ev)) return "event is not an object";
  if (badChannel(ev.channel)) return "missing or invalid channel";
  if (ev.type !== undefined && typeof ev.type !== "string") return "type is not a string";
  if (!("data" in ev)) return "missing data";
  return null;
}

// Serialized once per event; every subscriber gets the same string.
function encode(ev) {
  seq += 1;
  const timestamp = new Date().toISOString();
  const out =
    ev.type !== undefined && ev.type !== ev.channel
      ? { type: ev.type, channel: ev.channel, timestamp, seq, data: ev.data }
      : { type: ev.channel, timestamp, seq, data: ev.data };
  return [seq, JSON.stringify(out)];
}

const server = Bun.serve({
  hostname,
  port,
  async fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (path === "/ws") {
      if (req.method !== "GET") return new Response("Method Not Allowed", { status: 405, headers: { Allow: "GET" } });
      if (server.upgrade(req, { data: { channels: new Set() } })) return undefined;
      return new Response("Bad Request", { status: 400 });
    }
    if (path === "/api/publish") {
      if (req.method !== "POST") return new Response("Method Not Allowed", { status: 405, headers: { Allow: "POST" } });
      let body;
      try {
        body = JSON.parse(await req.text());
      } catch {
        return httpError(400, "bad_json", "body is not JSON");
      }
      const many = Array.isArray(body);
      const events = many ? body : [body];
      for (const ev of events) {
        const why = checkEvent(ev);
        if (why) return httpError(400, "bad_request", why);
      }
      const seqs = [];
      for (const ev of events) {
        const [n, text] = encode(ev);
        server.publish(ev.channel, text, deflate);
        seqs.push(n);
      }
      return Response.json(many ? { seqs } : { seq: seqs[0] });
    }
    if (path === "/healthz") return Response.json({ status: "ok" });
    return new Response("Not Found", { status: 404 });
  },
  websocket: {
    perMessageDeflate: deflate,
    maxPayloadLength: 64 * 1024,
    message(ws, message) {
      let msg;
      try {
        msg = JSON.parse(typeof message === "string" ? message : message.toString());
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
          ws.subscribe(c);
          ws.data.channels.add(c);
        } else {
          ws.unsubscribe(c);
          ws.data.channels.delete(c);
        }
      }
      ws.send(JSON.stringify({ type: msg.type === "subscribe" ? "subscribed" : "unsubscribed", channels }));
    },
  },
});

console.log(
  `bun-server ${Bun.version} listening on ${server.hostname}:${server.port} pid ${process.pid}` +
    (deflate ? " (perMessageDeflate)" : ""),
);

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.stop(true);
    process.exit(0);
  });
}
