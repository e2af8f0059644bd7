// Shared pieces of the browser tests: the relay process, a cuttable TCP proxy,
// HTTP publishing, headless Chromium, and bounded waits.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const RELAY_BIN = process.env.TIDINGS_BIN || path.join(ROOT, 'target', 'debug', 'tidings');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Every child still running when this process exits is killed. */
const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** Resolves with `check()`'s first truthy value; fails after `timeout` ms. */
export async function waitFor(what, check, { timeout = 10000, interval = 25 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A port nothing listens on right now. */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A relay process on 127.0.0.1:`port`, with an optional TOML configuration. */
export class Relay {
  constructor(port, config = '') {
    this.port = port;
    this.config = config;
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-browser-'));
    this.child = null;
    this.log = '';
  }

  get http() { return `http://127.0.0.1:${this.port}`; }
  get ws() { return `ws://127.0.0.1:${this.port}/ws`; }

  async start() {
    const args = ['--listen', `127.0.0.1:${this.port}`];
    if (this.config) {
      const file = path.join(this.dir, 'tidings.toml');
      writeFileSync(file, this.config);
      args.push('--config', file);
    }
    const child = spawn(RELAY_BIN, args, {
      env: { ...process.env, TIDINGS_LOG: process.env.TIDINGS_LOG || 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    this.child = child;
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }));
    this.exited = exited;
    child.stderr.on('data', (chunk) => { this.log += chunk; });
    let stdout = '';
    child.stdout.on('data', (chunk) => { stdout += chunk; });
    await Promise.race([
      waitFor('the relay to listen', () => stdout.includes('listening on')),
      exited.then(({ code }) => {
        throw new Error(`the relay exited (${code}) before listening:\n${this.log}`);
      }),
    ]);
    return this;
  }

  /** SIGTERM (clients get 1001), then SIGKILL if it lingers. */
  async stop() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(timer);
    }
  }

  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** GET /api/stats. */
  async stats() {
    return (await fetch(`${this.http}/api/stats`)).json();
  }

  /** POST /api/publish; resolves with the answer's JSON. */
  async publish(body, headers = {}) {
    const response = await fetch(`${this.http}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`publish: HTTP ${response.status} ${await response.text()}`);
    return response.json();
  }
}

/**
 * A TCP proxy in front of the relay that can cut every connection (as a
 * dropped network would) or freeze them (the relay's bytes stop arriving).
 */
export class Proxy {
  constructor(target) {
    this.target = target;
    this.sockets = new Set();
    this.frozen = new Set();
    /** Client side -> relay side, of the connections still open. */
    this.clients = new Map();
    this.connections = 0;
    this.server = net.createServer((client) => this.accept(client));
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = this.server.address().port;
    return this;
  }

  accept(client) {
    this.connections += 1;
    const upstream = net.connect(this.target, '127.0.0.1');
    const pair = [client, upstream];
    this.clients.set(client, upstream);
    for (const socket of pair) {
      this.sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        this.sockets.delete(socket);
        this.frozen.delete(socket);
        this.clients.delete(socket);
        for (const other of pair) other.destroy();
      });
    }
    client.pipe(upstream);
    upstream.on('data', (chunk) => {
      if (!this.frozen.has(upstream)) client.write(chunk);
    });
  }

  /**
   * Destroys every proxied socket, both sides. Returns how many live
   * connections it cut: a frozen one, or one already closing on one side,
   * does not count (the client has left it, so cutting it makes it
   * reconnect no more).
   */
  cut() {
    let live = 0;
    for (const socket of this.sockets) {
      if (this.clients.has(socket) && !this.frozen.has(socket) && !socket.destroyed
          && this.sockets.has(this.clients.get(socket))) live += 1;
    }
    for (const socket of this.sockets) socket.destroy();
    return live;
  }

  /** Stops reading from the relay (its writes back up), until `unblock()`. */
  block() {
    for (const socket of this.sockets) socket.pause();
  }

  unblock() {
    for (const socket of this.sockets) socket.resume();
  }

  /** From now on, the relay's bytes on the current connections are thrown away. */
  freeze() {
    for (const socket of this.sockets) this.frozen.add(socket);
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/** Headless Chromium from the system. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

/**
 * Runs `script` as a module in a page of the relay's origin, so that its
 * `import '/tidings.js'` loads the relay's own file. The page is a real one
 * (`/healthz`): Chromium refuses a loopback WebSocket to a document that has
 * no address of its own (Local Network Access), such as a routed one.
 */
export async function openTestPage(browser, relay, script) {
  const page = await browser.newPage();
  const errors = [];
  // Failed connection attempts are logged to the console by design; only
  // uncaught exceptions count as the page's errors.
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${relay.http}/healthz`);
  await page.addScriptTag({ type: 'module', content: script });
  return { page, errors };
}

/** A module script with one TidingsClient on `wsUrl`, recording what it is told. */
export function clientScript(wsUrl, { channels, options = '{}', subscribe = '{}' }) {
  return `import { TidingsClient } from '/tidings.js';
window.received = [];
window.resyncs = [];
window.states = [];
window.client = new TidingsClient(${JSON.stringify(wsUrl)}, {
  ...${options},
  onEvent(e) { window.received.push({ seq: e.seq, type: e.type, data: e.data }); },
  onResync(reason) { window.resyncs.push(reason); },
  onState(state, close) { window.states.push(close ? state + ' ' + close.code : state); },
});
window.client.subscribe(${JSON.stringify(channels)}, ${subscribe});
`;
}
