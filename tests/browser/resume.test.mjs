// tidings.js in a real browser against the real relay: resume across cut
// connections, a relay restart, and snapshots.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  Proxy, Relay, clientScript, freePort, launchBrowser, openTestPage, sleep, waitFor,
} from './harness.mjs';

const FAST = `{
  backoff: { initial: 50, max: 400 },
  pingInterval: 250,
  pongTimeout: 1000,
}`;

/** The page's client has its `subscribed` reply (it knows the relay's epoch). */
const subscribed = (page) => waitFor('the subscribe reply', () => page.evaluate(() => window.client?.epoch ?? null));

test('every event arrives exactly once and in order across cut and stalled connections', { timeout: 90000 }, async () => {
  const relay = await new Relay(await freePort()).start();
  const proxy = await new Proxy(relay.port).listen();
  const browser = await launchBrowser();
  try {
    const script = clientScript(`ws://127.0.0.1:${proxy.port}/ws`, { channels: ['job.*'], options: FAST });
    const { page, errors } = await openTestPage(browser, relay, script);
    await subscribed(page);

    // Numbered job events, some published together with an event of a channel
    // the page does not hold (a gap in seq that is not a loss).
    const expected = [];
    let publishing = true;
    const publisher = (async () => {
      for (let n = 0; n < 600; n += 1) {
        const type = n % 2 ? 'job.progress' : 'job.started';
        const event = { channel: type, data: { n } };
        if (n % 3 === 0) {
          const { seqs } = await relay.publish([{ channel: 'metrics.system', data: { n } }, event]);
          expected.push({ seq: seqs[1], type, data: { n } });
        } else {
          const { seq } = await relay.publish(event);
          expected.push({ seq, type, data: { n } });
        }
        await sleep(5);
      }
      publishing = false;
    })();

    // Meanwhile: cut every connection a few times, and once stall one so
    // that only the missing pong can tell.
    let cuts = 0;
    let froze = false;
    while (publishing) {
      await sleep(300);
      const state = await page.evaluate(() => window.client.state);
      if (state !== 'open') continue;
      if (cuts === 3 && !froze) {
        const connections = proxy.connections;
        proxy.freeze();
        froze = true;
        await waitFor('a new connection after the stall', () => proxy.connections > connections,
          { timeout: 5000 });
      } else if (proxy.cut() > 0) {
        cuts += 1;
      }
    }
    await publisher;

    await waitFor('every event', () => page.evaluate((count) => window.received.length >= count, expected.length),
      { timeout: 20000 }).catch(async (error) => {
      const got = await page.evaluate(() => window.received.length);
      throw new Error(`${error.message}: ${got} of ${expected.length} arrived`);
    });
    // Every event may have arrived before the last cut: the reconnect that
    // follows it (after the client's backoff) can still be on its way.
    await waitFor('a connection after every cut and the stall', () => proxy.connections >= cuts + 2,
      { timeout: 10000 }).catch(() => {});
    await sleep(300); // anything more would be a duplicate
    const received = await page.evaluate(() => window.received);
    const resyncs = await page.evaluate(() => window.resyncs);

    assert.ok(cuts >= 3, `only ${cuts} cuts happened`);
    assert.ok(froze, 'the stall never happened');
    assert.ok(proxy.connections >= cuts + 2, `${proxy.connections} connections for ${cuts} cuts and a stall`);
    assert.deepEqual(resyncs, [], 'every resume recovered');
    assert.equal(received.length, expected.length, 'no event lost or repeated');
    assert.deepEqual(received, expected);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await proxy.close();
    await relay.dispose();
  }
});

test('after a relay restart the page is told to resync, with "epoch"', { timeout: 60000 }, async () => {
  const port = await freePort();
  // The relay tells clients when to come back: keep that short here.
  const quick = '[shutdown]\nreconnect_spread = "300ms"\n';
  let relay = await new Relay(port, quick).start();
  const browser = await launchBrowser();
  try {
    const script = clientScript(relay.ws, { channels: ['job.*'], options: FAST });
    const { page, errors } = await openTestPage(browser, relay, script);
    const before = await subscribed(page);
    await relay.publish({ channel: 'job.progress', data: { run: 1 } });
    await waitFor('the first run\'s event', () => page.evaluate(() => window.received.length === 1));

    await relay.stop();
    await waitFor('the page to notice', () => page.evaluate(() => window.client.state === 'connecting'));
    await relay.dispose();
    relay = await new Relay(port, quick).start();

    await waitFor('onResync', () => page.evaluate(() => window.resyncs.length > 0), { timeout: 15000 });
    assert.deepEqual(await page.evaluate(() => window.resyncs), ['epoch']);
    const after = await page.evaluate(() => window.client.epoch);
    assert.notEqual(after, before, 'the new run has a new epoch');
    assert.ok((await page.evaluate(() => window.states)).includes('connecting 1001'),
      'the relay closed with 1001 on shutdown');

    // The new run's seqs start low again; the client must not drop them.
    const { seq } = await relay.publish({ channel: 'job.progress', data: { run: 2 } });
    await waitFor('the second run\'s event', () => page.evaluate(() => window.received.length === 2));
    const received = await page.evaluate(() => window.received);
    assert.deepEqual(received[1], { seq, type: 'job.progress', data: { run: 2 } });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await relay.dispose();
  }
});

test('a snapshot subscribe gets the last value of each channel, then live events', { timeout: 60000 }, async () => {
  const relay = await new Relay(await freePort(), '[history]\nlast_value = ["job.*"]\n').start();
  const browser = await launchBrowser();
  try {
    await relay.publish([
      { channel: 'job.a', data: { v: 1 } },
      { channel: 'job.b', data: { v: 1 } },
      { channel: 'metrics.system', data: { v: 1 } },
      { channel: 'job.a', data: { v: 2 } },
    ]);
    const script = clientScript(relay.ws, { channels: ['job.*'], options: FAST, subscribe: '{ snapshot: true }' });
    const { page, errors } = await openTestPage(browser, relay, script);
    await subscribed(page);
    await waitFor('the snapshot', () => page.evaluate(() => window.received.length >= 2));
    const { seq } = await relay.publish({ channel: 'job.b', data: { v: 2 } });
    await waitFor('the live event', () => page.evaluate(() => window.received.length >= 3));
    await sleep(200);
    const received = await page.evaluate(() => window.received);
    assert.deepEqual(received.map((e) => [e.type, e.data.v]), [['job.b', 1], ['job.a', 2], ['job.b', 2]]);
    assert.equal(received[2].seq, seq);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await relay.dispose();
  }
});

test('after the relay\'s resync message the client resumes on the same socket, or is told to reload', { timeout: 60000 }, async () => {
  // A small queue and send buffer, so that a reader that stops reading
  // overflows soon; the relay then drops the backlog and sends `resync`.
  const config = '[limits]\nslow_consumer = "resync"\nsocket_send_buffer = 4096\nmax_queue_messages = 64\n';
  const relay = await new Relay(await freePort(), config).start();
  const proxy = await new Proxy(relay.port).listen();
  const browser = await launchBrowser();
  try {
    const options = '{ backoff: { initial: 50, max: 400 }, pingInterval: 60000 }';
    const script = clientScript(`ws://127.0.0.1:${proxy.port}/ws`, { channels: ['job.*'], options });
    const { page, errors } = await openTestPage(browser, relay, script);
    await subscribed(page);

    const pad = 'x'.repeat(400);
    const published = [];
    const publish = async (count) => {
      const batch = Array.from({ length: count }, () => ({ channel: 'job.progress', data: { n: published.length, pad } }));
      batch.forEach((_, i) => { batch[i].data.n = published.length + i; });
      const { seqs } = await relay.publish(batch);
      seqs.forEach((seq, i) => published.push({ seq, n: batch[i].data.n }));
    };

    await publish(10);
    await waitFor('the first events', () => page.evaluate(() => window.received.length === 10));
    proxy.block();
    await waitFor('the relay to give up on the blocked reader', async () => {
      await publish(20);
      return (await relay.stats()).resyncs > 0;
    }, { timeout: 20000, interval: 10 });
    proxy.unblock();
    await publish(10);
    let last = published.at(-1).seq;
    // Either the resume recovers (the replay brings everything up to `last`),
    // or onResync fires and only events after the resubscribe come.
    await waitFor('the resync to be handled', () => page.evaluate(
      (seq) => window.client.seq === seq || window.resyncs.length > 0, last,
    ), { timeout: 15000 });
    const resyncs = await page.evaluate(() => window.resyncs);
    if (resyncs.length > 0) {
      await sleep(100);
      const before = published.length;
      await publish(10);
      last = published.at(-1).seq;
      await waitFor('events after the reload', () => page.evaluate((seq) => window.client.seq === seq, last));
      const tail = published.slice(before);
      const received = await page.evaluate(() => window.received.map((e) => ({ seq: e.seq, n: e.data.n })));
      assert.deepEqual(received.slice(-tail.length), tail, 'live events after the failed resume');
    }
    await sleep(200);

    const received = await page.evaluate(() => window.received.map((e) => ({ seq: e.seq, n: e.data.n })));
    assert.equal(proxy.connections, 1, 'the socket stayed open');
    for (let i = 1; i < received.length; i += 1) {
      assert.ok(received[i].seq > received[i - 1].seq, `seq ${received[i].seq} after ${received[i - 1].seq}`);
    }
    if (resyncs.length === 0) {
      assert.deepEqual(received, published, 'recovered: every event exactly once');
    } else {
      assert.deepEqual(resyncs, ['overflow']);
    }
    console.log(`resync after ${published.length} events: ${resyncs.length ? `not recovered (${resyncs})` : 'recovered'}, ${received.length} received`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await proxy.close();
    await relay.dispose();
  }
});
