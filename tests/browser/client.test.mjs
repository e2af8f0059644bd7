// tidings.js against a scripted relay (Playwright's WebSocket routing): the
// client's side of resume, resync, dedup, backoff, keepalive and auth, each
// driven message by message. No relay process is involved.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { clientScript, launchBrowser, waitFor } from './harness.mjs';

const ORIGIN = 'http://tidings.test';
const WS_URL = 'ws://tidings.test/ws';
const CLIENT_FILE = fileURLToPath(new URL('../../client/tidings.js', import.meta.url));

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** One socket the page opened, seen from the scripted relay. */
class Socket {
  constructor(route) {
    this.route = route;
    this.protocols = route.protocols();
    this.messages = [];
    this.answerPings = true;
    this.openedAt = Date.now();
    route.onMessage((text) => {
      const message = JSON.parse(text);
      this.messages.push(message);
      if (message.type === 'ping' && this.answerPings) {
        this.send({ type: 'pong', timestamp: new Date().toISOString() });
      }
    });
  }

  send(message) { this.route.send(JSON.stringify(message)); }

  event(seq, type = 'job.progress', data = { seq }) {
    this.send({ type, timestamp: new Date().toISOString(), seq, data });
  }

  /** The `n`th message of `type` the page sent (waits for it). */
  command(type, n = 0) {
    return waitFor(`the page's ${type} #${n + 1}`, () => this.messages.filter((m) => m.type === type)[n]);
  }
}

/** A page whose client talks to the scripted relay; `sockets` fills as it connects. */
async function open({ channels = ['job.*'], options = '{}', subscribe = '{}' } = {}) {
  const page = await browser.newPage();
  const sockets = [];
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.routeWebSocket(WS_URL, (route) => { sockets.push(new Socket(route)); });
  await page.route(`${ORIGIN}/tidings.js`, (route) => route.fulfill({ path: CLIENT_FILE, contentType: 'text/javascript' }));
  await page.route(`${ORIGIN}/test.html`, (route) => route.fulfill({
    contentType: 'text/html',
    body: `<!doctype html><title>tidings.js test</title><script type="module">
${clientScript(WS_URL, { channels, options, subscribe })}</script>`,
  }));
  await page.goto(`${ORIGIN}/test.html`);
  const socket = (n) => waitFor(`connection #${n + 1}`, () => sockets[n]);
  const seqs = () => page.evaluate(() => window.received.map((e) => e.seq));
  const resyncs = () => page.evaluate(() => window.resyncs);
  return { page, sockets, socket, seqs, resyncs, errors };
}

const FAST = '{ backoff: { initial: 20, max: 100 } }';

test('after a reconnect: resume with since, nothing before the reply, no repeats', async () => {
  const { page, socket, seqs, resyncs, errors } = await open({ options: FAST });
  const first = await socket(0);
  assert.deepEqual(await first.command('subscribe'), { type: 'subscribe', channels: ['job.*'] });
  first.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 10 });
  first.event(11);
  first.event(12);
  first.event(12); // a repeat
  first.event(9); // from the past
  await waitFor('two events', async () => (await seqs()).length === 2);
  first.route.close({ code: 1008, reason: 'slow consumer' });

  const second = await socket(1);
  assert.deepEqual(await second.command('subscribe'),
    { type: 'subscribe', channels: ['job.*'], since: { epoch: 'e1', seq: 12 } });
  second.event(14); // before the reply: ignored (had it passed, the replay's 13 would be dropped)
  second.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 14, recovered: true });
  second.event(13);
  second.event(14);
  second.event(15);
  await waitFor('the replay and a live event', async () => (await seqs()).length === 5);
  assert.deepEqual(await seqs(), [11, 12, 13, 14, 15]);
  assert.deepEqual(await resyncs(), []);
  assert.deepEqual(await page.evaluate(() => window.states), ['open', 'connecting 1008', 'open']);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a late event (behind a conflated one) passes; repeats do not', async () => {
  const { page, socket, seqs, errors } = await open({ options: FAST });
  const first = await socket(0);
  await first.command('subscribe');
  first.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 10 });
  // 15 replaced an older event in its queue place, ahead of 12 (docs/protocol.md, "Delivery rules").
  for (const seq of [11, 15, 12, 15, 12, 10, 16]) first.event(seq);
  await waitFor('four events', async () => (await seqs()).length === 4);
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.deepEqual(await seqs(), [11, 15, 12, 16]);
  assert.equal(await page.evaluate(() => window.client.seq), 16, 'a resume starts after the highest');
  assert.deepEqual(errors, []);
  await page.close();
});

test('a resume without events yet starts at the subscribe reply\'s seq', async () => {
  const { page, socket } = await open({ options: FAST });
  const first = await socket(0);
  await first.command('subscribe');
  first.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 40 });
  await waitFor('the epoch', () => page.evaluate(() => window.client.epoch === 'e1'));
  first.route.close({ code: 1001, reason: '' });
  const second = await socket(1);
  assert.deepEqual((await second.command('subscribe')).since, { epoch: 'e1', seq: 40 });
  await page.close();
});

test('a resume that is not recovered: onResync with the reply\'s reason, and the new epoch\'s seqs pass', async () => {
  const { page, socket, seqs, resyncs } = await open({ options: FAST });
  const first = await socket(0);
  await first.command('subscribe');
  first.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 0 });
  first.event(500);
  await waitFor('an event', async () => (await seqs()).length === 1);
  first.route.close({ code: 1001, reason: '' });

  const second = await socket(1);
  assert.deepEqual((await second.command('subscribe')).since, { epoch: 'e1', seq: 500 });
  second.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e2', seq: 3, recovered: false, reason: 'epoch' });
  second.event(4);
  await waitFor('onResync', async () => (await resyncs()).length === 1);
  await waitFor('the new run\'s event', async () => (await seqs()).length === 2);
  assert.deepEqual(await resyncs(), ['epoch']);
  assert.deepEqual(await seqs(), [500, 4]);
  assert.equal(await page.evaluate(() => window.client.epoch), 'e2');
  await page.close();
});

test('a resync message: resume on the same socket; onResync only if not recovered', async () => {
  const { page, socket, seqs, resyncs } = await open();
  const ws = await socket(0);
  await ws.command('subscribe');
  ws.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 0 });
  ws.event(1);
  ws.event(2);
  await waitFor('two events', async () => (await seqs()).length === 2);

  ws.send({ type: 'resync', data: { reason: 'dropped', epoch: 'e1', seq: 4 } });
  assert.deepEqual(await ws.command('subscribe', 1),
    { type: 'subscribe', channels: ['job.*'], since: { epoch: 'e1', seq: 2 } });
  ws.event(5); // before the reply: ignored (the replay has it)
  ws.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 5, recovered: true });
  for (const seq of [3, 4, 5, 6]) ws.event(seq);
  await waitFor('the replay', async () => (await seqs()).length === 6);
  assert.deepEqual(await resyncs(), []);

  ws.send({ type: 'resync', data: { reason: 'overflow', epoch: 'e1', seq: 9 } });
  assert.deepEqual((await ws.command('subscribe', 2)).since, { epoch: 'e1', seq: 6 });
  ws.event(7);
  ws.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 20, recovered: false, reason: 'gone' });
  ws.event(21);
  await waitFor('onResync', async () => (await resyncs()).length === 1);
  await waitFor('a live event', async () => (await seqs()).length === 7);
  assert.deepEqual(await resyncs(), ['overflow']);
  assert.deepEqual(await seqs(), [1, 2, 3, 4, 5, 6, 21]);
  await page.close();
});

test('snapshot, unsubscribe, and what a resume asks for', async () => {
  const { page, socket } = await open({ options: FAST, subscribe: '{ snapshot: true }' });
  const first = await socket(0);
  assert.deepEqual(await first.command('subscribe'), { type: 'subscribe', channels: ['job.*'], snapshot: true });
  first.send({ type: 'subscribed', channels: ['job.*'], epoch: 'e1', seq: 7 });
  await page.evaluate(() => {
    window.client.subscribe(['alert.>']);
    window.client.unsubscribe(['job.*']);
  });
  assert.deepEqual(await first.command('subscribe', 1), { type: 'subscribe', channels: ['alert.>'] });
  assert.deepEqual(await first.command('unsubscribe'), { type: 'unsubscribe', channels: ['job.*'] });
  first.route.close({ code: 1001, reason: '' });
  const second = await socket(1);
  assert.deepEqual(await second.command('subscribe'),
    { type: 'subscribe', channels: ['alert.>'], since: { epoch: 'e1', seq: 7 } });
  await page.close();
});

test('backoff grows with full jitter; a close reason with retry_after_ms is obeyed', async () => {
  const { page, sockets, socket } = await open({ options: '{ backoff: { initial: 100, max: 200 } }' });
  const first = await socket(0);
  const closedAt = Date.now();
  first.route.close({ code: 1008, reason: '{"retry_after_ms":700}' });
  const second = await socket(1);
  const waited = second.openedAt - closedAt;
  assert.ok(waited >= 650 && waited < 2000, `reconnected after ${waited} ms, asked 700`);

  // Plain closes: each wait is at most the ceiling (100, 200, 200 ms).
  for (let n = 1; n <= 3; n += 1) {
    const at = Date.now();
    sockets[n].route.close({ code: 1006, reason: '' });
    const next = await socket(n + 1);
    assert.ok(next.openedAt - at < 200 + 400, `attempt ${n} waited ${next.openedAt - at} ms`);
  }
  await page.close();
});

test('a missing pong drops the socket and reconnects', async () => {
  const { page, socket } = await open({ options: '{ backoff: { initial: 20, max: 50 }, pingInterval: 100, pongTimeout: 200 }' });
  const first = await socket(0);
  await first.command('ping'); // answered
  await first.command('ping', 1);
  first.answerPings = false;
  const stalledAt = Date.now();
  const second = await socket(1);
  assert.ok(second.openedAt - stalledAt < 1500, 'reconnected soon after the pong did not come');
  assert.deepEqual(await page.evaluate(() => window.states.slice(0, 2)), ['open', 'connecting 1006']);
  await page.close();
});

test('a token goes in the Bearer subprotocol, or in an auth message; 4001 stops reconnecting', async () => {
  const bearer = await open({ options: '{ token: "t0k" }' });
  assert.deepEqual((await bearer.socket(0)).protocols, ['Bearer', 't0k']);
  await bearer.page.close();

  const message = await open({ options: `{ token: "t0k", authMessage: true, ${FAST.slice(1, -1)} }` });
  const ws = await message.socket(0);
  assert.deepEqual(ws.protocols, []);
  assert.deepEqual(ws.messages[0] ?? await ws.command('auth'), { type: 'auth', token: 't0k' });
  assert.equal((await ws.command('subscribe')).type, 'subscribe');
  assert.equal(ws.messages.findIndex((m) => m.type === 'auth'), 0, 'auth comes first');
  ws.route.close({ code: 4001, reason: 'authentication failed' });
  await waitFor('closed', () => message.page.evaluate(() => window.client.state === 'closed'));
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(message.sockets.length, 1, 'no reconnect after 4001');
  assert.deepEqual(await message.page.evaluate(() => window.states), ['open', 'closed 4001']);
  await message.page.close();
});
