// Headless Chromium against a relay with `compression = "on"`: the browser
// agrees to permessage-deflate, sends its (compressed) commands, and
// receives events intact from the one deflated frame each event has.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Relay, freePort, launchBrowser, waitFor } from './harness.mjs';

const CONFIG = 'compression = "on"\ncompression_min_size = 64\n';

test('Chromium negotiates permessage-deflate and reads deflated events', { timeout: 60000 }, async () => {
  const relay = await new Relay(await freePort(), CONFIG).start();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    await page.goto(`${relay.http}/tidings.js`);
    const extensions = await page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      window.received = [];
      ws.onerror = () => reject(new Error('socket error'));
      ws.onclose = (e) => window.received.push({ closed: e.code });
      ws.onmessage = (e) => window.received.push(JSON.parse(e.data));
      ws.onopen = () => {
        // Long enough to be worth compressing, whatever the browser's rule.
        const channels = ['metrics.system', ...Array.from({ length: 40 }, (_, i) => `pad.channel${i}`)];
        ws.send(JSON.stringify({ type: 'subscribe', channels }));
        resolve(ws.extensions);
      };
    }), relay.ws);
    assert.equal(extensions, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    await waitFor('the subscribed reply', () => page.evaluate(() => window.received.some((m) => m.type === 'subscribed')));

    const sample = {
      cpu: 42.5, memory: 68.2, disk: 45.8, load: [1.2, 1.5, 1.8],
      network: { rx_bytes_per_sec: 1250000, tx_bytes_per_sec: 890000 }, node: 'worker-node-03',
    };
    const batch = [0, 1, 2, 3, 4].map((i) => ({ channel: 'metrics.system', data: { ...sample, i } }));
    await relay.publish(batch);
    const events = await waitFor('five events', async () => {
      const got = await page.evaluate(() => window.received.filter((m) => m.type === 'metrics.system'));
      return got.length === 5 && got;
    });
    events.forEach((event, i) => {
      assert.deepEqual(event.data, { ...sample, i });
      assert.equal(typeof event.seq, 'number');
    });
    assert.ok(!(await page.evaluate(() => window.received.some((m) => 'closed' in m))), 'still open');
  } finally {
    await browser.close();
    await relay.stop();
  }
});
