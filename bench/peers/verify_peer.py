#!/usr/bin/env python3
"""Checks that an XMPP server is set up as a fair benchmark peer.

Usage: verify_peer.py HOST PORT [--users N] [--raw-users R] [--flood M] [-v]

Needs slixmpp 1.8.5:
    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install slixmpp==1.8.5
    /tmp/peers-venv/bin/python bench/peers/verify_peer.py 127.0.0.1 25222

Steps, all over plaintext c2s (no STARTTLS) to the domain 'localhost':
 1. in-band registration (XEP-0077) of two users;
 2. N more registrations (default 300) from this one IP, as fast as they go,
    to show that registrations are not throttled per IP; then R more
    (default 2000) over raw sockets, since slixmpp itself tops out at about
    30 registrations a second;
 3. two users log in with SASL PLAIN in the clear, and exchange a chat message
    both ways;
 4. a message to a registered user who is offline is delivered when that user
    logs in (offline storage is on);
 5. a flood of M messages (default 2000) from one user to the other, sent as
    fast as possible; the receive rate shows whether a traffic shaper is in the
    way.
Prints one line per step and a summary; exits 0 when every step passed and 1
otherwise. Usernames carry a random run tag so the script can be rerun against
a server that keeps its data.
"""
import argparse
import asyncio
import logging
import re
import secrets
import sys
import time

import slixmpp

DOMAIN = "localhost"
TIMEOUT = 30


class Failure(Exception):
    pass


def client(jid, password, mech=None):
    c = slixmpp.ClientXMPP(jid, password, sasl_mech=mech)
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0077")
    # Plaintext c2s, PLAIN allowed in the clear.
    # (slixmpp 1.8.5 has no enable_starttls attribute; connect() below
    # passes disable_starttls=True instead.)
    c["feature_mechanisms"].unencrypted_plain = True
    c.reconnect_max_attempts = 0
    c.disc = None
    return c


def connect(c, host, port):
    c.connect((host, port), use_ssl=False, force_starttls=False, disable_starttls=True)


async def register(host, port, user, password):
    """XEP-0077 registration on a fresh stream; returns the seconds it took."""
    t0 = time.perf_counter()
    c = client(f"{user}@{DOMAIN}", password)
    c["xep_0077"].force_registration = True
    done = asyncio.get_running_loop().create_future()

    async def on_register(_form):
        iq = c.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = user
        iq["register"]["password"] = password
        try:
            await iq.send(timeout=TIMEOUT)
            result = True
        except slixmpp.exceptions.IqError as e:
            result = f"{e.iq['error']['type']}/{e.iq['error']['condition']}: {e.iq['error']['text']}"
        except Exception as e:  # IqTimeout and the like
            result = repr(e)
        if not done.done():
            done.set_result(result)
        c.disc = c.disconnect()

    def on_closed(_):
        if not done.done():
            done.set_result("stream closed before registration")

    c.add_event_handler("register", on_register)
    c.add_event_handler("disconnected", on_closed)
    connect(c, host, port)
    try:
        r = await asyncio.wait_for(done, TIMEOUT)
    except asyncio.TimeoutError:
        r = "timed out"
    if r is not True:
        c.abort()
        raise Failure(f"registration of {user} failed: {r}")
    # Let the disconnect finish so that sockets do not pile up.
    try:
        await asyncio.wait_for(c.disc, 5)
    except Exception:
        c.abort()
    return time.perf_counter() - t0


STREAM_HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                 "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
IQ_REPLY = re.compile(r"<iq\b[^>]*\bid=['\"]reg1['\"][^>]*?(/>|>.*?</iq>)", re.S)


async def raw_register(host, port, user, password):
    """XEP-0077 registration with bare XML on a socket (no slixmpp)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(STREAM_HEADER.encode())
        buf = b""
        while b"</stream:features>" not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                raise Failure(f"raw registration of {user}: stream closed before features")
            buf += chunk
        writer.write((f"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
                      f"<username>{user}</username><password>{password}</password>"
                      f"</query></iq>").encode())
        buf = b""
        while True:
            m = IQ_REPLY.search(buf.decode(errors="replace"))
            if m:
                break
            chunk = await reader.read(65536)
            if not chunk:
                raise Failure(f"raw registration of {user}: stream closed: {buf[-300:]!r}")
            buf += chunk
        if not re.search(r"\btype=['\"]result['\"]", m.group(0)):
            raise Failure(f"raw registration of {user} refused: {m.group(0)[:300]}")
        writer.write(b"</stream:stream>")
        await writer.drain()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass
    return time.perf_counter() - t0


async def login(host, port, user, password):
    c = client(f"{user}@{DOMAIN}", password, mech="PLAIN")
    started = asyncio.get_running_loop().create_future()
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.add_event_handler("failed_auth", lambda _: started.done() or started.set_result("auth failed"))
    c.add_event_handler("disconnected", lambda _: started.done() or started.set_result("disconnected"))
    c.inbox = []
    c.got = asyncio.Event()

    def on_message(m):
        c.inbox.append(m)
        c.got.set()

    c.add_event_handler("message", on_message)
    connect(c, host, port)
    try:
        r = await asyncio.wait_for(started, TIMEOUT)
    except asyncio.TimeoutError:
        r = "timed out"
    if r is not True:
        c.abort()
        raise Failure(f"login of {user} failed: {r}")
    if c.transport.get_extra_info("ssl_object") is not None:
        raise Failure(f"{user} is on TLS; expected plaintext")
    mech = c["feature_mechanisms"].mech.name if c["feature_mechanisms"].mech else "?"
    if mech != "PLAIN":
        raise Failure(f"{user} authenticated with {mech}, expected PLAIN")
    c.send_presence()
    await c.get_roster(timeout=TIMEOUT)
    return c


async def wait_until(what, cond, c=None, timeout=TIMEOUT):
    deadline = time.perf_counter() + timeout
    while not cond():
        left = deadline - time.perf_counter()
        if left <= 0:
            raise Failure(f"timed out waiting for {what}")
        if c is not None:
            c.got.clear()
            try:
                await asyncio.wait_for(c.got.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(0.05)


def bodies(c):
    return [m["body"] for m in c.inbox]


async def close(*clients):
    futs = [(c, c.disconnect()) for c in clients]
    for c, f in futs:
        try:
            await asyncio.wait_for(f, 5)
        except Exception:
            c.abort()


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def main(args):
    host, port = args.host, args.port
    tag = secrets.token_hex(3)
    a, b, off = f"va{tag}", f"vb{tag}", f"vo{tag}"
    summary = {}

    # 1. Two users.
    for u in (a, b, off):
        await register(host, port, u, f"{u}-pw")
    print(f"ok   registered {a}, {b}, {off} in-band (XEP-0077) over plaintext", flush=True)

    # 2. Many registrations from 127.0.0.1, quickly.
    if args.users:
        sem = asyncio.Semaphore(args.concurrency)
        times = []

        async def one(i):
            async with sem:
                times.append(await register(host, port, f"vu{tag}x{i}", "pw"))

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(args.users)), return_exceptions=True)
        elapsed = time.perf_counter() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise Failure(f"{len(errors)} of {args.users} registrations failed, first: {errors[0]}")
        rate = args.users / elapsed
        summary["registrations/s"] = f"{rate:.0f}"
        print(f"ok   {args.users} registrations from one IP in {elapsed:.2f}s ({rate:.0f}/s, "
              f"{args.concurrency} at a time; per registration p50 {percentile(times, .5) * 1000:.0f} ms, "
              f"p99 {percentile(times, .99) * 1000:.0f} ms): no throttling", flush=True)

    if args.raw_users:
        sem = asyncio.Semaphore(args.raw_concurrency)
        times = []

        async def raw_one(i):
            async with sem:
                times.append(await raw_register(host, port, f"vr{tag}x{i}", "pw"))

        t0 = time.perf_counter()
        results = await asyncio.gather(*(raw_one(i) for i in range(args.raw_users)),
                                       return_exceptions=True)
        elapsed = time.perf_counter() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise Failure(f"{len(errors)} of {args.raw_users} raw registrations failed, "
                          f"first: {errors[0]}")
        rate = args.raw_users / elapsed
        summary["raw registrations/s"] = f"{rate:.0f}"
        print(f"ok   {args.raw_users} more registrations over raw sockets in {elapsed:.2f}s "
              f"({rate:.0f}/s, {args.raw_concurrency} at a time; p50 "
              f"{percentile(times, .5) * 1000:.0f} ms, p99 {percentile(times, .99) * 1000:.0f} ms)",
              flush=True)

    # 3. PLAIN logins in the clear and a chat message both ways.
    ca = await login(host, port, a, f"{a}-pw")
    cb = await login(host, port, b, f"{b}-pw")
    print(f"ok   {ca.boundjid} and {cb.boundjid} logged in with SASL PLAIN over plaintext", flush=True)
    ca.send_message(mto=f"{b}@{DOMAIN}", mbody="hello b", mtype="chat")
    await wait_until("b to receive 'hello b'", lambda: "hello b" in bodies(cb), cb)
    cb.send_message(mto=ca.boundjid, mbody="hello a", mtype="chat")
    await wait_until("a to receive 'hello a'", lambda: "hello a" in bodies(ca), ca)
    print("ok   chat message exchanged both ways", flush=True)

    # 4. Offline storage.
    ca.send_message(mto=f"{off}@{DOMAIN}", mbody="while you were out", mtype="chat")
    await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    co = await login(host, port, off, f"{off}-pw")
    await wait_until("the offline message", lambda: "while you were out" in bodies(co), co)
    print(f"ok   offline message delivered at login ({(time.perf_counter() - t0) * 1000:.0f} ms "
          "from connect)", flush=True)
    await close(co)

    # 5. Flood.
    n = args.flood
    cb.inbox.clear()
    prefix = f"flood-{tag}-"
    t0 = time.perf_counter()
    for i in range(n):
        ca.send_message(mto=f"{b}@{DOMAIN}", mbody=f"{prefix}{i}", mtype="chat")
    t_sent = time.perf_counter() - t0

    def received():
        return sum(1 for m in cb.inbox if str(m["body"]).startswith(prefix))

    await wait_until(f"{n} flood messages (check for a shaper)", lambda: received() >= n, cb,
                     timeout=max(TIMEOUT, n / 20))
    elapsed = time.perf_counter() - t0
    got = [int(str(m["body"])[len(prefix):]) for m in cb.inbox if str(m["body"]).startswith(prefix)]
    in_order = got == sorted(got)
    size = len(str(ca.make_message(mto=f"{b}@{DOMAIN}", mbody=f"{prefix}{n - 1}", mtype="chat")))
    rate = n / elapsed
    summary["flood msgs/s"] = f"{rate:.0f}"
    print(f"ok   {n} messages a->b in {elapsed:.2f}s: {rate:.0f} msg/s, "
          f"~{rate * size / 1024:.0f} KiB/s of stanzas (~{size} B each; queued by the client "
          f"in {t_sent:.2f}s; in order: {in_order})", flush=True)
    if not in_order:
        raise Failure("flood messages arrived out of order")

    await close(ca, cb)
    print("PASS " + ", ".join(f"{k} {v}" for k, v in summary.items()), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--users", type=int, default=300, help="registrations in the quick loop")
    ap.add_argument("--flood", type=int, default=2000, help="messages in the flood")
    ap.add_argument("--concurrency", type=int, default=20, help="registrations in flight at once")
    ap.add_argument("--raw-users", type=int, default=2000,
                    help="further registrations over raw sockets (0: skip)")
    ap.add_argument("--raw-concurrency", type=int, default=50,
                    help="raw registrations in flight at once")
    ap.add_argument("-v", action="store_true", help="slixmpp debug log")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.v else logging.CRITICAL)
    try:
        asyncio.run(asyncio.wait_for(main(args), 600))
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        sys.exit(1)
    except asyncio.TimeoutError:
        print("FAIL verification timed out", flush=True)
        sys.exit(1)
