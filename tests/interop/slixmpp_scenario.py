"""Interop scenario for Starling driven by slixmpp (a third-party Python
XMPP library), over STARTTLS and SCRAM, across the nodes of a cluster: the
server's archive must be on ([archive] enabled = true) for the XEP-0313 part.

Usage: slixmpp_scenario.py PORT_NODE1 PORT_NODE2
Exits 0 when every step passed; prints the failing step and exits 1 otherwise.
"""
import asyncio
import logging
import ssl
import sys

import slixmpp

DOMAIN = "localhost"
TIMEOUT = 15


def fail(msg):
    print("FAIL:", msg, flush=True)
    sys.exit(1)


def client(jid, password):
    c = slixmpp.ClientXMPP(jid, password)
    for p in ("xep_0030", "xep_0059", "xep_0077", "xep_0191", "xep_0199", "xep_0313"):
        c.register_plugin(p)
    # The test servers use self-signed certificates.
    c.ssl_context.check_hostname = False
    c.ssl_context.verify_mode = ssl.CERT_NONE
    # Never fall back to PLAIN in the clear.
    c["feature_mechanisms"].unencrypted_plain = False
    return c


async def wait_for(what, cond, timeout=TIMEOUT):
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    fail(f"timed out waiting for {what}")


async def register(user, password, port):
    """XEP-0077 in-band registration, before authentication."""
    c = client(f"{user}@{DOMAIN}", password)
    c["xep_0077"].force_registration = True
    done = asyncio.get_running_loop().create_future()

    async def on_register(_form):
        resp = c.Iq()
        resp["type"] = "set"
        resp["register"]["username"] = user
        resp["register"]["password"] = password
        try:
            await resp.send()
            if not done.done():
                done.set_result(True)
        except Exception as e:  # IqError, IqTimeout
            if not done.done():
                done.set_result(e)
        c.disconnect()

    c.add_event_handler("register", on_register)
    c.connect(("127.0.0.1", port))
    r = await asyncio.wait_for(done, TIMEOUT)
    if r is not True:
        fail(f"registration of {user} failed: {r}")
    print(f"registered {user} (XEP-0077) on port {port}", flush=True)


async def login(user, password, port):
    c = client(f"{user}@{DOMAIN}", password)
    started = asyncio.get_running_loop().create_future()
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.add_event_handler("failed_auth", lambda _: started.done() or started.set_result(False))
    c.inbox = []
    c.add_event_handler("message", lambda m: c.inbox.append(m))
    c.connect(("127.0.0.1", port))
    if not await asyncio.wait_for(started, TIMEOUT):
        fail(f"login of {user} failed")
    if c.transport is None or c.transport.get_extra_info("ssl_object") is None:
        fail(f"{user} is not on TLS (STARTTLS was required)")
    c.send_presence()
    roster = await c.get_roster()
    print(f"{user} logged in as {c.boundjid} (roster: {len(roster['roster']['items'])} items)", flush=True)
    return c


async def expect_message(c, body):
    await wait_for(f"{c.boundjid.bare} to receive {body!r}",
                   lambda: any(m["body"] == body for m in c.inbox))
    return next(m for m in c.inbox if m["body"] == body)


async def main():
    p1, p2 = int(sys.argv[1]), int(sys.argv[2])
    await register("alice", "alice-secret", p1)
    await register("bob", "bob-secret", p2)
    await register("carol", "carol-secret", p1)

    alice = await login("alice", "alice-secret", p1)
    bob = await login("bob", "bob-secret", p2)
    carol = await login("carol", "carol-secret", p1)

    # Subscribe both ways. slixmpp answers subscription requests by itself
    # (auto_authorize) and subscribes back (auto_subscribe).
    alice.send_presence(pto=f"bob@{DOMAIN}", ptype="subscribe")
    await wait_for("alice <-> bob subscription 'both'",
                   lambda: alice.client_roster[f"bob@{DOMAIN}"]["subscription"] == "both"
                   and bob.client_roster[f"alice@{DOMAIN}"]["subscription"] == "both")
    print("alice and bob: subscription both", flush=True)

    # Presence across nodes.
    await wait_for("bob to see alice available",
                   lambda: len(bob.client_roster[f"alice@{DOMAIN}"].resources) > 0)
    await wait_for("alice to see bob available",
                   lambda: len(alice.client_roster[f"bob@{DOMAIN}"].resources) > 0)
    print("presence seen both ways", flush=True)

    # Chat across nodes, to the bare JID, and back to the full JID.
    alice.send_message(mto=f"bob@{DOMAIN}", mbody="hello bob, from node 1", mtype="chat")
    m = await expect_message(bob, "hello bob, from node 1")
    if m["from"] != alice.boundjid:
        fail(f"from is {m['from']}, expected {alice.boundjid}")
    if "stanza-id" not in str(m):
        fail(f"no XEP-0359 stanza-id in {m}")
    bob.send_message(mto=m["from"], mbody="hello alice, from node 2", mtype="chat")
    await expect_message(alice, "hello alice, from node 2")
    print("chat across nodes both ways", flush=True)

    # Chat on one node.
    alice.send_message(mto=f"carol@{DOMAIN}", mbody="hi carol, same node", mtype="chat")
    await expect_message(carol, "hi carol, same node")
    print("chat on one node", flush=True)

    # Server features (XEP-0030) and ping (XEP-0199).
    info = await alice["xep_0030"].get_info(jid=DOMAIN, timeout=TIMEOUT)
    feats = info["disco_info"]["features"]
    for f in ("urn:xmpp:ping", "urn:xmpp:carbons:2", "jabber:iq:register"):
        if f not in feats:
            fail(f"disco#info lacks {f}: {feats}")
    await alice["xep_0199"].ping(jid=DOMAIN, timeout=TIMEOUT)
    print("disco and ping", flush=True)

    # XEP-0191 across nodes: bob (node 2) blocks carol (node 1) with
    # slixmpp's plugin; the push reaches bob, the list reads back, carol's
    # message is refused with service-unavailable and not delivered;
    # unblocking restores delivery.
    if "urn:xmpp:blocking" not in feats:
        fail(f"disco#info lacks urn:xmpp:blocking: {feats}")
    pushes = []
    bob.add_event_handler("blocked", lambda iq: pushes.append(iq))
    await bob["xep_0191"].block(f"carol@{DOMAIN}", timeout=TIMEOUT)
    await wait_for("bob's block push", lambda: len(pushes) > 0)
    res = await bob["xep_0191"].get_blocked(timeout=TIMEOUT)
    listed = {str(j) for j in res["blocklist"]["items"]}
    if listed != {f"carol@{DOMAIN}"}:
        fail(f"blocklist is {listed}")
    # The list is replicated: give node 1 a moment to apply it.
    await asyncio.sleep(1)
    errors = []
    carol.add_event_handler("message_error", lambda m: errors.append(m))
    carol.send_message(mto=f"bob@{DOMAIN}", mbody="from the blocked", mtype="chat")
    await wait_for("carol's error", lambda: len(errors) > 0)
    if errors[0]["error"]["condition"] != "service-unavailable":
        fail(f"carol got {errors[0]}")
    await asyncio.sleep(0.5)
    if any(m["body"] == "from the blocked" for m in bob.inbox):
        fail("a message from a blocked JID was delivered")
    await bob["xep_0191"].unblock(f"carol@{DOMAIN}", timeout=TIMEOUT)
    await asyncio.sleep(1)
    carol.send_message(mto=f"bob@{DOMAIN}", mbody="unblocked now", mtype="chat")
    await expect_message(bob, "unblocked now")
    print("blocking (XEP-0191) across nodes", flush=True)

    # XEP-0313 across nodes: alice (node 1) sends bob (node 2) numbered
    # messages; bob pages through his archive on node 2 with slixmpp's MAM
    # plugin (RSM pages of 5, forwards and backwards, `with` filter) and
    # alice through hers on node 1: each message once, in the order sent.
    own = await bob["xep_0030"].get_info(jid=bob.boundjid.bare, timeout=TIMEOUT)
    if "urn:xmpp:mam:2" not in own["disco_info"]["features"]:
        fail(f"bob's account does not advertise urn:xmpp:mam:2: {own}")
    sent = [f"mam {i:02d}" for i in range(23)]
    for body in sent:
        alice.send_message(mto=f"bob@{DOMAIN}", mbody=body, mtype="chat")
    for body in sent:
        await expect_message(bob, body)

    async def archived(c, peer, reverse=False):
        bodies = []
        async for m in c["xep_0313"].iterate(with_jid=peer, reverse=reverse, rsm={"max": 5}):
            body = m["mam_result"]["forwarded"]["stanza"]["body"]
            if body.startswith("mam "):
                bodies.append(body)
        return bodies

    # The archive is committed beside the live path: a query right after
    # the live copies may be a batch short, so ask until it is complete.
    got = []
    for _ in range(int(TIMEOUT / 0.5)):
        got = await archived(bob, f"alice@{DOMAIN}")
        if len(got) >= len(sent):
            break
        await asyncio.sleep(0.5)
    if got != sent:
        fail(f"bob's archive, forwards: {got}")
    # Backwards, newest page first, by RSM `before` (XEP-0059 §2.5). By
    # hand after the first page: slixmpp 1.8.5's iterator stops paging
    # backwards once `first index + items == count`, which is true of the
    # newest page of any archive whose server sends `<first index=.../>`.
    back, before = [], None
    for _ in range(len(sent)):
        if before is None:
            page = [m async for m in bob["xep_0313"].iterate(
                with_jid=f"alice@{DOMAIN}", reverse=True, rsm={"max": 5}, total=5)]
            complete = False
        else:
            res = await bob["xep_0313"].retrieve(
                with_jid=f"alice@{DOMAIN}", rsm={"max": 5, "before": before}, timeout=TIMEOUT)
            page = list(reversed(res["mam"]["results"]))
            complete = res["mam_fin"]["complete"] in (True, "true")
        if not page:
            break
        back += [m["mam_result"]["forwarded"]["stanza"]["body"] for m in page]
        before = page[-1]["mam_result"]["id"]
        if complete:
            break
    back = [b for b in back if b.startswith("mam ")]
    if back != sent[::-1]:
        fail(f"bob's archive, backwards: {back}")
    mine = await archived(alice, f"bob@{DOMAIN}")
    if mine != sent:
        fail(f"alice's archive: {mine}")
    others = await archived(bob, f"carol@{DOMAIN}")
    if others:
        fail(f"the `with` filter let through {others}")
    print(f"archive (XEP-0313) paged across nodes: {len(sent)} messages in pages of 5", flush=True)

    # Unavailable presence when bob leaves.
    bob.disconnect()
    await wait_for("alice to see bob go offline",
                   lambda: len(alice.client_roster[f"bob@{DOMAIN}"].resources) == 0)
    print("unavailable presence seen", flush=True)
    alice.disconnect()
    carol.disconnect()
    await asyncio.sleep(0.2)
    print("OK", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG if "-v" in sys.argv else logging.ERROR)
    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    except asyncio.TimeoutError:
        fail("scenario timed out")
