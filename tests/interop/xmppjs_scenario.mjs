// Interop scenario for tests/interop_xmppjs.rs: the real xmpp.js client
// (@xmpp/client 0.14, installed by the Rust test under
// target/interop-xmppjs/) against a three-node Starling cluster.
//
//   node xmppjs_scenario.mjs PORT1 PORT2 PORT3
//
// Environment: XMPPJS_DIR (the npm prefix holding node_modules/@xmpp/client),
// NODE_TLS_REJECT_UNAUTHORIZED=0 (the nodes' certificates are self-signed),
// STARLING_INTEROP_WIRE=1 prints every element sent and received on stderr.
//
// Every fact the Rust side checks is one JSON object per stdout line; the
// script itself only drives the clients and gives up (exit 1, an "error"
// line) when something it waits for does not come.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [p1, p2, p3] = process.argv.slice(2);
const dir = process.env.XMPPJS_DIR;
if (!p1 || !p2 || !p3 || !dir) {
  console.error("usage: XMPPJS_DIR=... node xmppjs_scenario.mjs PORT1 PORT2 PORT3");
  process.exit(2);
}
// Node 18 has WebCrypto (xmpp.js: the user-agent id, HT-SHA-256-NONE) but
// not as a global yet; xmpp.js 0.14 itself asks for Node >= 20.10.
if (!globalThis.crypto) globalThis.crypto = (await import("node:crypto")).webcrypto;
const { client, xml } = await import(
  pathToFileURL(join(dir, "node_modules", "@xmpp", "client", "index.js")).href
);

const WAIT = 15_000;
const live = !!process.env.STARLING_INTEROP_WIRE;
const emit = (o) => console.log(JSON.stringify(o));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, cond, ms = WAIT) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// What one client negotiated, from its own wire (xmpp.js 'send' and
// 'element' events): the SASL2 <authenticate/> it sent, what came back.
function watch(name, xmpp) {
  const seen = { received: [] };
  xmpp.on("send", (el) => {
    if (live) console.error(`[${name}] -> ${el}`);
    if (el.is("authenticate", "urn:xmpp:sasl:2")) {
      emit({
        event: "authenticate",
        who: name,
        mechanism: el.attrs.mechanism,
        children: el.getChildElements().map((c) => `${c.name} ${c.getNS()}`),
        bind: !!el.getChild("bind", "urn:xmpp:bind:0"),
        request_token: el.getChild("request-token", "urn:xmpp:fast:0")?.attrs.mechanism ?? null,
        fast: !!el.getChild("fast", "urn:xmpp:fast:0"),
        resume: !!el.getChild("resume", "urn:xmpp:sm:3"),
      });
    }
    if (el.is("auth", "urn:ietf:params:xml:ns:xmpp-sasl")) {
      emit({ event: "rfc6120-auth", who: name, mechanism: el.attrs.mechanism });
    }
    if (el.is("bind", "urn:ietf:params:xml:ns:xmpp-bind") || el.getChild("bind", "urn:ietf:params:xml:ns:xmpp-bind")) {
      emit({ event: "rfc6120-bind", who: name });
    }
  });
  xmpp.on("element", (el) => {
    if (live) console.error(`[${name}] <- ${el}`);
    if (el.is("features", "http://etherx.jabber.org/streams")) {
      const a = el.getChild("authentication", "urn:xmpp:sasl:2");
      if (a) {
        emit({
          event: "features",
          who: name,
          sasl2: a.getChildren("mechanism").map((m) => m.text()),
          fast: a.getChild("inline")?.getChild("fast", "urn:xmpp:fast:0")
            ?.getChildren("mechanism").map((m) => m.text()) ?? [],
        });
      }
    }
    if (el.is("success", "urn:xmpp:sasl:2")) {
      emit({
        event: "success",
        who: name,
        authorization_identifier: el.getChildText("authorization-identifier"),
        bound: !!el.getChild("bound", "urn:xmpp:bind:0"),
        sm_enabled: !!el.getChild("bound", "urn:xmpp:bind:0")?.getChild("enabled", "urn:xmpp:sm:3"),
        resumed: el.getChild("resumed", "urn:xmpp:sm:3")?.attrs ?? null,
        sm_failed: !!el.getChild("failed", "urn:xmpp:sm:3"),
        token: !!el.getChild("token", "urn:xmpp:fast:0"),
      });
    }
    if (el.is("failure", "urn:xmpp:sasl:2")) {
      emit({ event: "failure", who: name, xml: el.toString() });
    }
    if (el.is("message") && el.getChildText("body")) {
      seen.received.push({ id: el.attrs.id, body: el.getChildText("body") });
      emit({ event: "message", to: name, from: el.attrs.from, id: el.attrs.id, body: el.getChildText("body") });
    }
  });
  xmpp.on("error", (err) => emit({ event: "client-error", who: name, name: err?.name, error: String(err?.condition ?? err?.message ?? err), text: err?.text }));
  xmpp.on("status", (s) => emit({ event: "status", who: name, status: s }));
  return seen;
}

// alice: credentials given as an object the script keeps, so that the
// password can be taken away before the reconnection (xmpp.js's own
// onAuthenticate then has only the FAST token it fetches).
const aliceCreds = { username: "alice", password: "pw-alice" };
const alice = client({
  service: `xmpp://127.0.0.1:${p1}`,
  domain: "localhost",
  credentials: aliceCreds,
  resource: "js-alice",
});
// The FAST token, kept through the plugin's storage hooks.
let stored = null;
alice.fast.saveToken = async (t) => {
  stored = t;
  emit({ event: "token-saved", who: "alice", mechanism: t.mechanism, expiry: t.expiry, length: t.token?.length ?? 0 });
};
alice.fast.fetchToken = async () => {
  emit({ event: "token-fetched", who: "alice", present: !!stored });
  return stored;
};
alice.streamManagement.on("resumed", () => emit({ event: "sm-resumed", who: "alice" }));
// The raw TCP socket of the current connection (the one STARTTLS wraps).
let raw = null;
alice.on("status", (s) => {
  if (s === "connect" && !raw) raw = alice.socket;
});
alice.on("online", (jid) => emit({ event: "online", who: "alice", jid: jid.toString() }));
const aliceSeen = watch("alice", alice);

const bob = client({
  service: `xmpp://127.0.0.1:${p2}`,
  domain: "localhost",
  username: "bob",
  password: "pw-bob",
  resource: "js-bob",
});
bob.on("online", (jid) => emit({ event: "online", who: "bob", jid: jid.toString() }));
const bobSeen = watch("bob", bob);

const chat = (to, id, body) => xml("message", { to, id, type: "chat" }, xml("body", {}, body));

try {
  // 1. alice on node 1, bob on node 2, both SASL2 + Bind 2.
  await alice.start();
  emit({ event: "secure", who: "alice", secure: alice.isSecure(), sm_id: alice.streamManagement.id, sm_enabled: alice.streamManagement.enabled });
  await bob.start();
  await alice.send(xml("presence"));
  await bob.send(xml("presence"));
  const aliceJid = alice.jid.toString();
  const bobJid = bob.jid.toString();

  // 2. Both ways across nodes.
  for (let i = 1; i <= 3; i++) {
    await alice.send(chat(bobJid, `a2b-${i}`, `hello bob ${i}`));
    await bob.send(chat(aliceJid, `b2a-${i}`, `hello alice ${i}`));
  }
  await until("the first exchange", () =>
    bobSeen.received.filter((m) => m.id?.startsWith("a2b-")).length >= 3 &&
    aliceSeen.received.filter((m) => m.id?.startsWith("b2a-")).length >= 3);
  emit({ event: "exchanged" });

  // 3. bob sends a stream of messages; alice's TCP connection is reset in
  // the middle of it, bob keeps sending while she is away, then she comes
  // back on node 3 with her FAST token (no password) and inline resumption.
  alice.reconnect.stop(); // reconnect when the script says, to node 3
  const ids = [];
  const send = async (n) => {
    const id = `bob-${n}`;
    ids.push(id);
    await bob.send(chat(aliceJid, id, `message ${n}`));
  };
  for (let n = 1; n <= 10; n++) await send(n);
  await until("alice reading bob's first messages", () => aliceSeen.received.some((m) => m.id === "bob-3"));
  // Ten more on their way (not awaited) as the connection is reset.
  const inflight = [];
  for (let n = 11; n <= 20; n++) inflight.push(send(n));
  const disconnected = new Promise((r) => alice.once("disconnect", r));
  if (typeof raw?.resetAndDestroy === "function") {
    raw.resetAndDestroy();
    emit({ event: "killed", how: "RST" });
  } else {
    raw.destroy();
    emit({ event: "killed", how: "destroy" });
  }
  await Promise.all([disconnected, ...inflight]);
  const readBeforeKill = aliceSeen.received.filter((m) => m.id?.startsWith("bob-")).length;
  emit({ event: "disconnected", who: "alice", bob_messages_read: readBeforeKill, sm_id_kept: !!alice.streamManagement.id, h: alice.streamManagement.inbound });
  for (let n = 21; n <= 30; n++) await send(n);
  // Everything bob sent is acknowledged by node 2 before alice comes back.
  await until("node 2 acknowledging bob's messages", () => bob.streamManagement.outbound_q.length === 0);
  emit({ event: "bob-acked", sent: ids.length });

  delete aliceCreds.password;
  alice.options.service = `xmpp://127.0.0.1:${p3}`;
  raw = null;
  const resumed = new Promise((r) => alice.streamManagement.once("resumed", r));
  await alice.reconnect.reconnect();
  await Promise.race([resumed, sleep(WAIT).then(() => { throw new Error("no resumption"); })]);
  emit({ event: "reconnected", who: "alice", jid: alice.jid.toString(), status: alice.status });
  await until("every message of bob's", () => ids.every((id) => aliceSeen.received.some((m) => m.id === id)));
  // Late copies would come now.
  await sleep(1500);
  const counts = {};
  for (const m of aliceSeen.received) if (m.id?.startsWith("bob-")) counts[m.id] = (counts[m.id] ?? 0) + 1;
  emit({ event: "result", sent: ids, counts });

  // alice can still talk on node 3.
  await alice.send(chat(bobJid, "a2b-after", "back on node 3"));
  await until("bob hearing alice after the resumption", () => bobSeen.received.some((m) => m.id === "a2b-after"));
  emit({ event: "after-resume-chat" });

  await alice.stop();
  await bob.stop();
  emit({ event: "done" });
  process.exit(0);
} catch (err) {
  emit({ event: "error", error: String(err?.stack ?? err) });
  process.exit(1);
}
