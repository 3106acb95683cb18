#!/usr/bin/env python3
"""Hardening figures on a running `starling dev` cluster (loopback only).

Two attacks from the hardening issue, measured as a user sees them:

  flood   N idle connections from one address (127.0.0.2) held open on
          node 1, then normal logins (STARTTLS + PLAIN) from another
          address (127.0.0.3): success rate and latency.
  brute   wrong passwords for one account from 50 addresses (127.0.1.x),
          in parallel, while its owner logs in from 127.0.0.3 every 0.5 s:
          the owner's success rate and latency, and how many guesses the
          cluster answered before every guessing address was blocked.

Usage: bench/abuse.py PORT USER PASSWORD [--flood N] [--seconds S]
(PORT: node 1's client port, as `starling dev` prints it.) Needs only the
Python standard library; raise `ulimit -n` above N first.
"""
import argparse
import asyncio
import base64
import ssl
import statistics
import time

HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


async def read_until(reader, needles, limit=10.0):
    buf = b""
    deadline = time.monotonic() + limit
    while True:
        for n in needles:
            if n in buf:
                return buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(buf[-200:])
        chunk = await asyncio.wait_for(reader.read(65536), left)
        if not chunk:
            raise ConnectionError(buf[-200:])
        buf += chunk


async def login(port, local, user, password):
    """STARTTLS + PLAIN from `local`; returns 'success', a SASL condition,
    or the error text."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0)), 10)
    except Exception as e:  # refused at connect
        return f"connect: {type(e).__name__}"
    try:
        writer.write(HEADER.encode())
        await read_until(reader, [b"</stream:features>"])
        writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await read_until(reader, [b"<proceed"])
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(HEADER.encode())
        await read_until(reader, [b"</stream:features>"])
        payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>".encode())
        buf = await read_until(reader, [b"<success", b"</failure>", b"<failure"])
        if b"<success" in buf:
            return "success"
        text = buf.decode(errors="replace")
        for cond in ("temporary-auth-failure", "not-authorized", "aborted"):
            if cond in text:
                return cond
        return "failure"
    except Exception as e:
        return f"error: {type(e).__name__}"
    finally:
        writer.close()


def summary(name, results):
    ok = [t for r, t in results if r == "success"]
    lat = sorted(ok)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    mx = lat[-1] * 1000 if lat else float("nan")
    print(f"{name}: {len(ok)}/{len(results)} logins succeeded, "
          f"latency p50 {p50:.1f} ms, max {mx:.1f} ms; "
          f"others: {sorted({r for r, _ in results if r != 'success'})}")


async def timed_login(port, local, user, password):
    t = time.monotonic()
    r = await login(port, local, user, password)
    return r, time.monotonic() - t


async def flood(port, user, password, n):
    conns = []
    refused = 0
    t0 = time.monotonic()
    for i in range(n):
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)), 2)
            w.write(HEADER.encode())
            conns.append((r, w))
        except Exception:
            refused += 1
    await asyncio.sleep(2)
    # Drain what the server sent to notice closes.
    alive = 0
    for r, w in conns:
        try:
            data = await asyncio.wait_for(r.read(65536), 0.001)
            if data:
                alive += 1
        except asyncio.TimeoutError:
            alive += 1
        except Exception:
            pass
    # "not closed" counts connections the server had not closed 2 s later,
    # including ones still in the kernel's accept queue: an upper bound.
    print(f"flood: {n} connections from 127.0.0.2 opened in {time.monotonic() - t0:.1f} s, "
          f"{refused} refused at connect, {alive} not closed after 2 s (upper bound)")
    results = [await timed_login(port, "127.0.0.3", user, password) for _ in range(20)]
    summary("normal logins from 127.0.0.3 during the flood", results)
    for r, w in conns:
        w.close()


async def brute(port, user, password, seconds):
    stop = time.monotonic() + seconds
    answers = {}

    async def guesser(ip):
        while time.monotonic() < stop:
            r = await login(port, ip, user, "wrong-guess")
            answers[r] = answers.get(r, 0) + 1
            if r.startswith("connect"):
                await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(guesser(f"127.0.1.{i}")) for i in range(1, 51)]
    owner = []
    while time.monotonic() < stop:
        owner.append(await timed_login(port, "127.0.0.3", user, password))
        await asyncio.sleep(0.5)
    await asyncio.gather(*tasks)
    print(f"brute force from 50 addresses for {seconds} s: guesses answered {answers}")
    summary("owner logins from 127.0.0.3 during the brute force", owner)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("user")
    ap.add_argument("password")
    ap.add_argument("--flood", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=20)
    a = ap.parse_args()
    await flood(a.port, a.user, a.password, a.flood)
    await brute(a.port, a.user, a.password, a.seconds)


if __name__ == "__main__":
    asyncio.run(main())
