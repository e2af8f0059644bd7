// tidings.js: a browser client for the tidings relay. No dependencies, no build.
//
//   import { TidingsClient } from '/tidings.js';
//   const client = new TidingsClient('ws://127.0.0.1:8080/ws', {
//     onEvent(e) { ... }, onResync(reason) { ... }, onState(s) { ... },
//   });
//   client.subscribe(['job.*', 'alert.>'], { snapshot: true });
//
// What it does for you (docs/protocol.md, "State sync"):
// - reconnects with exponential backoff (1 s doubling to 30 s, full jitter),
//   reset once a connection has stayed open a while;
// - resubscribes after a reconnect, resuming from the last event it passed on
//   (`since`), so a short outage loses nothing; when the relay cannot resume
//   (it restarted, or no longer holds what was missed), `onResync(reason)`
//   tells the page to reload its state;
// - follows the relay's `resync` message the same way;
// - never passes on an event twice: it remembers the highest `seq`s it passed
//   on, since on channels under a `latest` delivery rule an event may arrive
//   ahead of others with a lower `seq` (docs/protocol.md, "Delivery rules");
// - sends `{"type":"ping"}` every 30 s and reconnects when no pong comes.

/** How many of the highest `seq`s passed on are remembered, to tell a late event from a repeat. */
const REMEMBERED_SEQS = 4096;

const MESSAGE_TYPES = new Set(['subscribed', 'unsubscribed', 'pong', 'authenticated', 'error', 'resync']);

/** Error codes that answer a `subscribe` (and so end its wait for a reply). */
const SUBSCRIBE_ERRORS = new Set([
  'bad_request', 'invalid_channel', 'forbidden', 'too_many_subscriptions', 'not_authenticated',
]);

/** Close code for a bad token: reconnecting with the same token cannot help. */
const AUTH_FAILED = 4001;

/**
 * @typedef {object} TidingsEvent
 * @property {string} type       the channel, or the publisher's type
 * @property {string} [channel]  present when `type` differs from the channel
 * @property {string} timestamp  publish time, RFC 3339 UTC
 * @property {number} seq        position in the relay's one order of events
 * @property {*} data            the payload
 */

/**
 * @typedef {object} TidingsOptions
 * @property {string} [token]          a client token (`[[auth.tokens]]`)
 * @property {boolean} [authMessage]   send the token in an `auth` message instead of
 *                                     the `Bearer` subprotocol (a bad token then closes
 *                                     with 4001, which a page can see)
 * @property {(event: TidingsEvent) => void} [onEvent]
 * @property {(reason: string) => void} [onResync]  state may have been missed: reload it.
 *                                     `reason` is the relay's: "epoch", "gone", "too_many",
 *                                     or "overflow" / "dropped" / "upstream" after a `resync` message
 * @property {(state: 'connecting'|'open'|'closed', close?: {code: number, reason: string}) => void} [onState]
 *                                     the second argument comes with "closed" and with a
 *                                     "connecting" that follows a lost connection
 * @property {(error: {code: string, message: string}) => void} [onError]  the relay's error replies
 * @property {{initial?: number, max?: number, resetAfter?: number}} [backoff]
 *                                     reconnect delays in ms (1000, 30000) and how long a
 *                                     connection must stay open to reset them (5000)
 * @property {number} [pingInterval]   ms between pings (30000)
 * @property {number} [pongTimeout]    ms to wait for the pong before reconnecting (10000)
 */

export class TidingsClient {
  /** Patterns held (read-only: change them with subscribe / unsubscribe). */
  channels = new Set();
  /** The relay run the client follows, from the last `subscribed` reply. */
  epoch = null;
  /** The highest `seq` passed to `onEvent` in this epoch: where a resume starts. */
  seq = null;
  /** @type {'connecting'|'open'|'closed'} Starts as "connecting" (not reported). */
  state = 'connecting';

  #options;
  #backoff;
  #pingInterval;
  #pongTimeout;
  /** Patterns whose subscribe asked for a snapshot. */
  #snapshotChannels = new Set();
  /** The relay's position when the subscription was (re)made; resumes start here if no event came. */
  #floor = null;
  #ws = null;
  /** Reconnects since a connection last stayed open; sets the backoff ceiling. */
  #attempt = 0;
  #timers = {};
  /** Subscribes sent on this connection and not answered yet, oldest first. */
  #pending = [];
  /** Events are ignored until this subscribe is answered (a resume, or a connection's first). */
  #barrier = null;
  /** Set while resuming after a `resync` message: what onResync reports if that fails. */
  #resyncReason = null;
  /** The highest `seq`s passed on in this epoch, ascending, at most REMEMBERED_SEQS. */
  #passed = [];

  /**
   * Connects at once, and keeps connecting until `close()`.
   * @param {string} url  the relay's WebSocket endpoint, `ws://host:port/ws`
   * @param {TidingsOptions} [options]
   */
  constructor(url, options = {}) {
    this.url = url;
    this.#options = options;
    this.#backoff = { initial: 1000, max: 30000, resetAfter: 5000, ...options.backoff };
    this.#pingInterval = options.pingInterval ?? 30000;
    this.#pongTimeout = options.pongTimeout ?? 10000;
    this.#connect();
  }

  /**
   * Adds patterns; the relay sends their events from now on.
   * @param {string[]} channels
   * @param {{snapshot?: boolean}} [options]  snapshot: also the latest event of each
   *                                          matching channel the relay keeps a last value of
   */
  subscribe(channels, { snapshot = false } = {}) {
    for (const channel of channels) {
      this.channels.add(channel);
      if (snapshot) this.#snapshotChannels.add(channel);
    }
    if (this.state === 'open') this.#sendSubscribe(channels, { snapshot });
  }

  /** @param {string[]} channels */
  unsubscribe(channels) {
    for (const channel of channels) {
      this.channels.delete(channel);
      this.#snapshotChannels.delete(channel);
    }
    if (this.state === 'open') this.#send({ type: 'unsubscribe', channels });
  }

  /** Closes the connection for good. */
  close() {
    this.#closeWith(1000, '');
  }

  #connect() {
    const { token, authMessage } = this.#options;
    const ws = token && !authMessage
      ? new WebSocket(this.url, ['Bearer', token])
      : new WebSocket(this.url);
    this.#ws = ws;
    ws.onopen = () => this.#opened();
    ws.onmessage = (message) => this.#received(message.data);
    ws.onclose = (event) => this.#lost(event.code, event.reason);
  }

  #opened() {
    this.#pending = [];
    this.#barrier = null;
    this.#resyncReason = null;
    if (this.#options.token && this.#options.authMessage) {
      this.#send({ type: 'auth', token: this.#options.token });
    }
    if (this.channels.size > 0) {
      // One subscribe for everything: with `since`, events are ignored until
      // its reply, so a second resume would lose the first one's replay.
      const channels = [...this.channels];
      const snapshot = channels.some((c) => this.#snapshotChannels.has(c));
      this.#barrier = this.#sendSubscribe(channels, { snapshot, since: this.#position() });
    }
    this.#setState('open');
    this.#timers.stable = setTimeout(() => { this.#attempt = 0; }, this.#backoff.resetAfter);
    this.#timers.ping = setInterval(() => this.#ping(), this.#pingInterval);
  }

  /** Where a resume starts: the last event passed on, or where the subscription began. */
  #position() {
    if (this.epoch === null) return null;
    const seq = Math.max(this.seq ?? 0, this.#floor ?? 0);
    return this.seq === null && this.#floor === null ? null : { epoch: this.epoch, seq };
  }

  #sendSubscribe(channels, { snapshot = false, since = null } = {}) {
    const request = { channels };
    const message = { type: 'subscribe', channels };
    if (since) message.since = since;
    if (snapshot) message.snapshot = true;
    this.#pending.push(request);
    this.#send(message);
    return request;
  }

  #ping() {
    if (this.#timers.pong) return;
    this.#send({ type: 'ping' });
    this.#timers.pong = setTimeout(() => this.#reconnect(4000, 'pong timeout'), this.#pongTimeout);
  }

  #received(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    // An event carries `timestamp` and `seq`; a reply never carries both.
    if (typeof message.seq === 'number' && 'timestamp' in message) {
      this.#event(message);
      return;
    }
    if (!MESSAGE_TYPES.has(message.type)) return;
    switch (message.type) {
      case 'subscribed': this.#subscribed(message); break;
      case 'pong':
        clearTimeout(this.#timers.pong);
        this.#timers.pong = null;
        break;
      case 'resync': this.#resync(message.data ?? {}); break;
      case 'error': this.#failed(message.data ?? {}); break;
      default: break;
    }
  }

  #event(event) {
    if (this.#barrier) return; // included in the replay (or not ours)
    if (!this.#remember(event.seq)) return;
    this.seq = Math.max(this.seq ?? event.seq, event.seq);
    this.#options.onEvent?.(event);
  }

  /**
   * Whether `seq` is new, remembering it if so. Above the highest passed on
   * (and the subscription's start) it is; below that, it is new only if it is not among the highest ones
   * remembered, and not older than all of them (an event that old is taken
   * for a repeat).
   */
  #remember(seq) {
    // At or before where the subscription started, once live events came:
    // not ours. (Before them, the snapshot's events come from there.)
    const live = this.seq !== null && this.#floor !== null && this.seq > this.#floor;
    if (live && seq <= this.#floor) return false;
    const passed = this.#passed;
    if (this.seq !== null && seq <= this.seq) {
      if (passed.length >= REMEMBERED_SEQS && seq < passed[0]) return false;
      let low = 0;
      let high = passed.length;
      while (low < high) {
        const mid = (low + high) >> 1;
        if (passed[mid] < seq) low = mid + 1; else high = mid;
      }
      if (passed[low] === seq) return false;
      passed.splice(low, 0, seq);
    } else {
      passed.push(seq);
    }
    if (passed.length > REMEMBERED_SEQS) passed.shift();
    return true;
  }

  #subscribed(reply) {
    const request = this.#takePending(reply.channels);
    const first = request !== null && request === this.#barrier;
    if (first) this.#barrier = null;
    if (typeof reply.epoch === 'string' && reply.epoch !== this.epoch) {
      // Another relay run: its seqs start again.
      this.epoch = reply.epoch;
      this.seq = null;
      this.#passed = [];
      this.#floor = null;
    }
    if (reply.recovered === false) {
      // Nothing is replayed: what follows (a snapshot, then live events) is all new.
      this.seq = null;
      this.#passed = [];
      this.#floor = null;
    }
    // The first subscribe of a connection (or the first at all) fixes where a
    // later resume may start when no event has come yet. Not a recovered one:
    // its replay is still on the way.
    const fresh = first || (this.seq === null && this.#floor === null);
    if (fresh && reply.recovered !== true && typeof reply.seq === 'number') {
      this.#floor = reply.seq;
    }
    if (reply.recovered === false) {
      const reason = this.#resyncReason ?? reply.reason ?? 'gone';
      this.#resyncReason = null;
      this.#options.onResync?.(reason);
    } else if (reply.recovered === true) {
      this.#resyncReason = null;
    }
  }

  /** The relay dropped events for us: resume from the last one passed on. */
  #resync(data) {
    if (this.channels.size === 0 || this.state !== 'open') return;
    this.#resyncReason = data.reason ?? 'overflow';
    const since = this.epoch !== null && this.seq !== null
      ? { epoch: this.epoch, seq: this.seq }
      : this.#position();
    if (since === null) {
      this.#options.onResync?.(this.#resyncReason);
      this.#resyncReason = null;
      return;
    }
    this.#barrier = this.#sendSubscribe([...this.channels], { since });
  }

  #failed(error) {
    // A refused subscribe must not leave events blocked behind its barrier.
    if (SUBSCRIBE_ERRORS.has(error.code)) {
      const request = this.#pending.shift() ?? null;
      if (request !== null && request === this.#barrier) this.#barrier = null;
    }
    this.#options.onError?.(error);
  }

  /** The pending subscribe this reply answers: same channels, else the oldest. */
  #takePending(channels) {
    const key = JSON.stringify(channels ?? []);
    let index = this.#pending.findIndex((r) => JSON.stringify(r.channels) === key);
    if (index < 0) index = 0;
    return this.#pending.splice(index, 1)[0] ?? null;
  }

  #lost(code, reason) {
    this.#stopTimers();
    this.#ws = null;
    if (this.state === 'closed') return;
    if (code === AUTH_FAILED) {
      this.#setState('closed', { code, reason });
      return;
    }
    this.#setState('connecting', { code, reason });
    this.#timers.retry = setTimeout(() => this.#connect(), this.#retryDelay(reason));
  }

  /** Full jitter over an exponential ceiling, unless the relay asked for a wait. */
  #retryDelay(reason) {
    try {
      const asked = JSON.parse(reason)?.retry_after_ms;
      if (Number.isFinite(asked) && asked >= 0) return asked;
    } catch {
      // a plain-text reason
    }
    const ceiling = Math.min(this.#backoff.max, this.#backoff.initial * 2 ** this.#attempt);
    this.#attempt += 1;
    return Math.random() * ceiling;
  }

  /** Drops a connection that stopped answering, without waiting for its close handshake. */
  #reconnect(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.close(code, reason);
    this.#lost(1006, '');
  }

  #closeWith(code, reason) {
    const ws = this.#ws;
    this.#setState('closed', { code, reason });
    this.#stopTimers();
    this.#ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.close(code, reason);
    }
  }

  #stopTimers() {
    clearTimeout(this.#timers.stable);
    clearTimeout(this.#timers.pong);
    clearTimeout(this.#timers.retry);
    clearInterval(this.#timers.ping);
    this.#timers = {};
  }

  #send(message) {
    if (this.#ws && this.#ws.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(message));
  }

  #setState(state, close) {
    if (this.state === state) return;
    this.state = state;
    this.#options.onState?.(state, close);
  }
}
