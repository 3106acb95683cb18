// The Converse.js scenario of tests/browser_conversejs.rs, in headless
// Chromium driven by playwright-core. It serves the page and Converse's
// dist/ from loopback, and prints one JSON object per line; the checks
// are on the Rust side. Environment: CONVERSE_DIR (where npm installed
// converse.js and playwright-core), CONVERSE_DIST, PAGE (the .html),
// PAGE_PORT, WS1, WS2 (two nodes' WebSocket URLs), CHROMIUM, SHOT (the
// screenshot path).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

// playwright-core and converse.js live under CONVERSE_DIR (target/).
const require = createRequire(path.join(process.env.CONVERSE_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const env = process.env;
const out = (o) => console.log(JSON.stringify(o));
const types = { '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json',
  '.svg': 'image/svg+xml', '.woff2': 'font/woff2', '.woff': 'font/woff', '.ttf': 'font/ttf',
  '.png': 'image/png', '.html': 'text/html', '.mp3': 'audio/mpeg', '.ogg': 'audio/ogg' };

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  let file;
  if (url.pathname === '/') file = env.PAGE;
  else if (url.pathname.startsWith('/dist/')) {
    file = path.join(env.CONVERSE_DIST, path.normalize(url.pathname.slice(6)).replace(/^(\.\.[/\\])+/, ''));
  }
  if (!file || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404); res.end(); return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(Number(env.PAGE_PORT), '127.0.0.1', r));
const origin = `http://127.0.0.1:${env.PAGE_PORT}`;

const browser = await chromium.launch({
  executablePath: env.CHROMIUM,
  headless: true,
  // Two users' pages in one browser: neither may be throttled as a
  // background page (timers slowed, rendering paused), or a step waits on
  // a page that does not run.
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
    '--disable-background-timer-throttling', '--disable-backgrounding-occluded-windows',
    '--disable-renderer-backgrounding'],
});

const T = 30000;

// page.evaluate, again after a navigation (Converse's router may replace
// the document while a chat opens).
async function ev(page, fn, arg) {
  for (let i = 0; ; i++) {
    try {
      return await page.evaluate(fn, arg);
    } catch (e) {
      if (i >= 5 || !String(e).includes('Execution context was destroyed')) throw e;
      out({ note: 'navigation during evaluate; again' });
      await page.waitForLoadState();
      await page.waitForFunction(() => window.capi && window.capi.connection.connected(), null, { timeout: T });
    }
  }
}
async function open(who, ws) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 750 } });
  const page = await context.newPage();
  page.on('console', (m) => { if (env.STARLING_INTEROP_WIRE) console.error(`[${who}] ${m.text()}`); });
  page.on('pageerror', (e) => out({ who, pageerror: String(e) }));
  const q = new URLSearchParams({ ws, jid: `${who}@localhost`, password: `pw-${who}` });
  await page.goto(`${origin}/?${q}`);
  await page.waitForFunction(() => window.capi && window.capi.connection.connected()
    && window.cconv.session && window.cconv.session.get('bound') !== false
    && window.capi.connection.get().authenticated, null, { timeout: T });
  out({ who, step: 'logged-in', ws, jid: await page.evaluate(() => window.capi.connection.get().jid) });
  return { context, page };
}

async function send(page, to, text) {
  await ev(page, (to) => window.capi.chats.open(to, {}, true), to);
  const area = page.locator(`converse-chat[jid="${to}"] textarea.chat-textarea, .chatbox[jid="${to}"] textarea.chat-textarea`).first();
  await area.waitFor({ timeout: T });
  await area.fill(text);
  await area.press('Enter');
}

// A message with `text` in the chat with `jid`, in Converse's model (the
// rendered list may be virtualised) and then on screen.
async function seen(page, jid, text) {
  await page.bringToFront();
  await ev(page, (jid) => window.capi.chats.open(jid, {}, true), jid);
  await page.waitForFunction(([jid, t]) => {
    const box = window.cconv.state.chatboxes.get(jid);
    return box && box.messages && box.messages.models.some((m) => (m.get('body') || '').includes(t));
  }, [jid, text], { timeout: T });
  // On screen: in fullscreen mode only the chat in front is rendered, and
  // a message arriving may bring another to the front, so the chat is
  // opened again until the text shows (or the time is up).
  const deadline = Date.now() + T;
  for (;;) {
    const shown = await page.evaluate((t) => [...document.querySelectorAll('.chat-msg__text')]
      .some((e) => e.textContent.includes(t)), text);
    if (shown) return;
    if (Date.now() > deadline) throw new Error(`"${text}" in the model but not on screen`);
    await ev(page, (jid) => window.capi.chats.open(jid, {}, true), jid);
    await page.waitForTimeout(500);
  }
}

async function dump(who, page) {
  try {
    out({ who, dump: await page.evaluate(() => ({
      boxes: window.cconv.state.chatboxes.map((b) => ({ id: b.get('id'),
        messages: (b.messages ? b.messages.map((m) => m.get('body')) : []) })),
      texts: [...document.querySelectorAll('.chat-msg__text')].map((e) => e.textContent),
    })) });
    await page.screenshot({ path: `${env.SHOT}.${who}-failed.png`, fullPage: true });
  } catch (e) { out({ who, dumpError: String(e) }); }
}

const pages = {};
try {
  const alice = await open('alice', env.WS1);
  const bob = await open('bob', env.WS2);
  pages.alice = alice.page; pages.bob = bob.page;

  // Each adds the other (roster set + subscribe); auto_subscribe approves.
  await alice.page.evaluate(() => window.capi.contacts.add({ jid: 'bob@localhost', name: 'Bob' }));
  await bob.page.evaluate(() => window.capi.contacts.add({ jid: 'alice@localhost', name: 'Alice' }));
  const both = async (page, jid) => page.waitForFunction((jid) => {
    const c = window.cconv.state?.roster?.get(jid) ?? window.cconv.roster?.get(jid);
    return c && c.get('subscription') === 'both';
  }, jid, { timeout: T });
  await both(alice.page, 'bob@localhost');
  await both(bob.page, 'alice@localhost');
  out({ step: 'subscribed', both: true });

  await send(alice.page, 'bob@localhost', 'Hello Bob, from Alice on node 1');
  await seen(bob.page, 'alice@localhost', 'Hello Bob, from Alice on node 1');
  out({ step: 'bob-got', text: 'Hello Bob, from Alice on node 1' });
  await send(bob.page, 'alice@localhost', 'Hi Alice, Bob here on node 2');
  await seen(alice.page, 'bob@localhost', 'Hi Alice, Bob here on node 2');
  out({ step: 'alice-got', text: 'Hi Alice, Bob here on node 2' });

  // Alice reloads in a fresh browser context (no local cache, as a new
  // device): the history can only come from the server's archive.
  await alice.context.close();
  const again = await open('alice', env.WS2);
  pages.alice = again.page;
  await seen(again.page, 'bob@localhost', 'Hello Bob, from Alice on node 1');
  await seen(again.page, 'bob@localhost', 'Hi Alice, Bob here on node 2');
  out({ step: 'history', texts: await again.page.evaluate(() =>
    [...document.querySelectorAll('.chat-msg__text')].map((e) => e.textContent.trim())) });
  await again.page.screenshot({ path: env.SHOT, fullPage: true });
  out({ step: 'screenshot', path: env.SHOT });
  out({ step: 'done' });
} catch (e) {
  out({ error: String(e && e.stack || e) });
  for (const [who, page] of Object.entries(pages)) await dump(who, page);
  process.exitCode = 1;
} finally {
  await browser.close();
  server.close();
}
