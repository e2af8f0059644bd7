// The status page at `/`: live figures, the last events, and the token form.

import assert from 'node:assert/strict';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Relay, freePort, launchBrowser, sleep, waitFor } from './harness.mjs';

const text = (page, selector) => page.locator(selector).innerText();

/** Publishes a few events every 100 ms until `stop()` is called. */
function keepPublishing(relay, headers = {}) {
  let running = true;
  let n = 0;
  const done = (async () => {
    while (running) {
      const batch = [0, 1, 2, 3, 4].map(() => ({ channel: 'job.progress', data: { jobId: 'import-abc123', n: n++ } }));
      await relay.publish(batch, headers);
      await sleep(100);
    }
  })();
  return async () => {
    running = false;
    await done;
  };
}

test('the status page shows live figures, top channels and the last events', { timeout: 60000 }, async () => {
  const relay = await new Relay(await freePort()).start();
  const browser = await launchBrowser();
  let stop = async () => {};
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    const errors = [];
    page.on('pageerror', (error) => errors.push(error));
    await page.goto(`${relay.http}/`);
    assert.equal(await page.title(), 'tidings status');

    await waitFor('the socket to open', async () => (await text(page, '#ws-state')) === 'open');
    // The first poll gives totals; rates need a second one.
    const idle = await waitFor('a first rate', async () => {
      const shown = await text(page, '#stat-deliveries');
      return shown !== '–' && shown;
    });

    stop = keepPublishing(relay);
    const busy = await waitFor('the deliveries figure to change', async () => {
      const shown = await text(page, '#stat-deliveries');
      return shown !== idle && shown !== '–' && Number(shown.replace(/,/g, '')) > 0 && shown;
    });
    await waitFor('events per second', async () => Number((await text(page, '#stat-events')).replace(/,/g, '')) > 0);
    await waitFor('the page\'s own subscription among the top channels',
      async () => (await text(page, '#channels')).includes('>'));
    await waitFor('a published event in the list', async () => (await text(page, '#event-rows')).includes('import-abc123'));
    await stop();

    // Connections count HTTP ones too (the page's polls, the publisher's).
    assert.ok(Number(await text(page, '#stat-connections')) >= 1);
    assert.equal(await text(page, '#stat-websockets'), '1 WebSocket');
    assert.match(await text(page, '#epoch'), /\S/);
    const rows = await page.locator('#event-rows tr').count();
    assert.ok(rows > 0 && rows <= 50, `${rows} event rows`);

    const shot = path.join(os.tmpdir(), `tidings-status-${process.pid}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`status page screenshot (deliveries/s went ${idle} -> ${busy}): ${shot}`);
    assert.deepEqual(errors, []);
  } finally {
    await stop();
    await browser.close();
    await relay.dispose();
  }
});

test('with auth on, the status page asks for a token and then shows everything', { timeout: 60000 }, async () => {
  const config = '[[auth.tokens]]\ntoken = "status-token"\n';
  const relay = await new Relay(await freePort(), config).start();
  const browser = await launchBrowser();
  let stop = async () => {};
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (error) => errors.push(error));
    await page.goto(`${relay.http}/`);
    await page.locator('#auth-token').waitFor({ state: 'visible', timeout: 10000 });

    // A wrong token: refused by /api/stats, and by the socket with 4001.
    await page.fill('#auth-token', 'wrong-token');
    await page.click('#auth button');
    await page.locator('#auth-token').waitFor({ state: 'visible', timeout: 10000 });
    assert.match(await text(page, '#auth-problem'), /refused/);

    await page.fill('#auth-token', 'status-token');
    await page.click('#auth button');
    await waitFor('the socket to open', async () => (await text(page, '#ws-state')) === 'open');
    await waitFor('figures', async () => (await text(page, '#stat-connections')) !== '–');
    stop = keepPublishing(relay);
    await waitFor('a published event in the list', async () => (await text(page, '#event-rows')).includes('import-abc123'));
    await stop();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tidings.token')), 'status-token');
    assert.equal(await page.locator('#auth-token').isVisible(), false);
    assert.deepEqual(errors, []);
  } finally {
    await stop();
    await browser.close();
    await relay.dispose();
  }
});

test('the status page shows the admin views with a token kept in the page only', { timeout: 60000 }, async () => {
  const relay = await new Relay(await freePort(), '[admin]\ntokens = ["ops-token-7"]\n').start();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1200 } });
    const errors = [];
    page.on('pageerror', (error) => errors.push(error));
    await page.goto(`${relay.http}/`);
    await waitFor('the socket to open', async () => (await text(page, '#ws-state')) === 'open');
    assert.equal(await page.locator('#admin a[href^="/api/admin/connections"]').count(), 1);
    assert.equal(await page.locator('#admin a[href="/api/admin/subscriptions"]').count(), 1);

    await page.fill('#admin-token', 'not-the-token');
    await page.click('button[value="connections"]');
    await waitFor('the refusal', async () => (await text(page, '#admin-note')).includes('refused'));

    await page.fill('#admin-token', 'ops-token-7');
    await page.click('button[value="connections"]');
    // The page's own WebSocket, subscribed to everything.
    await waitFor('the page\'s socket in the table', async () => (await text(page, '#admin-out')).includes('127.0.0.1:'));
    assert.match(await text(page, '#admin-note'), /1 of 1 sockets/);
    await page.click('button[value="subscriptions"]');
    await waitFor('the subscriptions', async () => (await text(page, '#admin-note')).includes('1 patterns'));
    assert.match(await text(page, '#admin-out'), />\s+1/);

    const stored = await page.evaluate(() => JSON.stringify({ ...sessionStorage }) + JSON.stringify({ ...localStorage }));
    assert.ok(!stored.includes('ops-token-7'), `the admin token was stored: ${stored}`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await relay.dispose();
  }
});
