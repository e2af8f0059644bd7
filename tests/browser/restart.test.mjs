// A relay restart in a real browser: the old relay sends the page away with
// close 1001 and its own `retry_after_ms`, a new relay has taken over the
// port, and tidings.js waits as it was told before it comes back.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Relay, freePort, launchBrowser, openTestPage, waitFor } from './harness.mjs';

const SPREAD = '[shutdown]\nreconnect_spread = "1500ms"\n';

test('a page sent away at shutdown comes back to the new relay after retry_after_ms', { timeout: 60000 }, async () => {
  const port = await freePort();
  const old = await new Relay(port, SPREAD).start();
  let next = null;
  const browser = await launchBrowser();
  try {
    const script = `import { TidingsClient } from '/tidings.js';
window.states = [];
window.client = new TidingsClient(${JSON.stringify(old.ws)}, {
  backoff: { initial: 50, max: 400 },
  onState(state, close) { window.states.push({ state, close, at: performance.now() }); },
});
window.client.subscribe(['job.*']);
`;
    const { page, errors } = await openTestPage(browser, old, script);
    const oldEpoch = await waitFor('the page to connect', () => page.evaluate(() => window.client?.epoch ?? null));

    // The new relay joins the port (SO_REUSEPORT) before the old one stops.
    next = await new Relay(port, SPREAD).start();
    await old.stop();

    const states = await waitFor('the page back on the new relay', () => page.evaluate(() => {
      const away = window.states.findIndex((s) => s.state === 'connecting');
      const back = window.states.findIndex((s, i) => i > away && s.state === 'open');
      return away >= 0 && back > away ? [window.states[away], window.states[back]] : null;
    }), { timeout: 15000 });
    const [away, back] = states;
    assert.equal(away.close.code, 1001);
    const asked = JSON.parse(away.close.reason).retry_after_ms;
    assert.ok(Number.isInteger(asked) && asked >= 0 && asked <= 1500, `retry_after_ms ${asked}`);
    // Timers never fire early, so the wait is a lower bound whatever the load.
    assert.ok(back.at - away.at >= asked - 1, `came back after ${back.at - away.at} ms, told ${asked}`);
    const epoch = await waitFor('the subscribe on the new relay', () => page.evaluate(
      (before) => (window.client.epoch !== before ? window.client.epoch : null), oldEpoch));
    assert.equal(epoch, (await next.stats()).epoch, 'subscribed on the new relay');
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await old.dispose();
    await next?.dispose();
  }
});
