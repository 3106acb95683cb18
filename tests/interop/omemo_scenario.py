"""OMEMO (XEP-0384) over Starling's PEP, driven by slixmpp and
slixmpp-omemo (third-party Python libraries), across the nodes of a
cluster.

alice (node 1) and bob (node 2) each start one OMEMO device: the plugin
publishes its bundles and device lists to PEP (publish-options with the
open access model, precondition handling), learns the other's devices
(device-list notifications filtered by XEP-0115 caps, or items fetched),
and they exchange an encrypted message both ways, each decrypting what the
other sent. Then bob's second device logs in on node 3: alice must learn of
it from a PEP notification of bob's new device list, and her next message
must be decryptable by that new device (and by bob's first).

Usage: omemo_scenario.py PORT_NODE1 PORT_NODE2 PORT_NODE3
(accounts alice and bob exist with passwords pw-alice and pw-bob).
Exits 0 when every step passed; prints the failing step and exits 1.
"""
import asyncio
import logging
import os
import ssl
import sys
from typing import Any, Dict, FrozenSet, Optional

from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
import slixmpp
from slixmpp.jid import JID
from slixmpp.plugins import register_plugin
from slixmpp_omemo import TrustLevel, XEP_0384

DOMAIN = "localhost"
TIMEOUT = 30


def fail(msg):
    print("FAIL:", msg, flush=True)
    sys.exit(1)


class MemoryStorage(Storage):
    """OMEMO state in memory: every run starts new devices."""

    def __init__(self) -> None:
        super().__init__()
        self.data: Dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class OmemoPlugin(XEP_0384):
    """Trusts every device blindly (BTBV): the test checks transport, not trust."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__storage = MemoryStorage()

    @property
    def storage(self) -> Storage:
        return self.__storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(
        self, blindly_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        pass

    async def _prompt_manual_trust(
        self, manually_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        sm = await self.get_session_manager()
        for d in manually_trusted:
            await sm.set_trust(d.bare_jid, d.identity_key, TrustLevel.TRUSTED.value)


register_plugin(OmemoPlugin)


async def wait_for(what, cond, timeout=TIMEOUT):
    for _ in range(int(timeout / 0.1)):
        if await cond():
            return
        await asyncio.sleep(0.1)
    fail(f"timed out waiting for {what}")


async def login(user, port, label):
    c = slixmpp.ClientXMPP(f"{user}@{DOMAIN}/{label}", f"pw-{user}")
    for p in ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0199", "xep_0380"):
        c.register_plugin(p)
    c.register_plugin("xep_0384", module=sys.modules[__name__])
    c.ssl_context.check_hostname = False
    c.ssl_context.verify_mode = ssl.CERT_NONE
    c["feature_mechanisms"].unencrypted_plain = False
    loop = asyncio.get_running_loop()
    started = loop.create_future()
    ready = loop.create_future()
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.add_event_handler("failed_auth", lambda _: started.done() or started.set_result(False))
    c.add_event_handler("omemo_initialized", lambda _: ready.done() or ready.set_result(True))
    c.plain = []

    async def on_message(m):
        if m["type"] not in ("chat", "normal"):
            return
        if c["xep_0384"].is_encrypted(m):
            try:
                dec, _info = await c["xep_0384"].decrypt_message(m)
                c.plain.append(dec["body"])
            except Exception as e:  # keep going: the assertion says what was missed
                print(f"{c.boundjid}: decryption failed: {e!r}", flush=True)

    c.add_event_handler("message", on_message)
    c.connect("127.0.0.1", port)
    if not await asyncio.wait_for(started, TIMEOUT):
        fail(f"login of {user}/{label} failed")
    c.send_presence()
    await c.get_roster()
    await asyncio.wait_for(ready, TIMEOUT)
    sm = await c["xep_0384"].get_session_manager()
    own, _others = await sm.get_own_device_information()
    c.device_id = own.device_id
    print(f"{c.boundjid} on port {port}: OMEMO device {own.device_id} published", flush=True)
    return c


async def knows_device(c, bare, device_id):
    sm = await c["xep_0384"].get_session_manager()
    return any(d.device_id == device_id for d in await sm.get_device_information(bare))


async def send_encrypted(c, to, body):
    msg = c.make_message(mto=JID(to), mtype="chat")
    msg["body"] = body
    encrypted, errors = await c["xep_0384"].encrypt_message(msg, {JID(to)})
    if errors:
        print(f"{c.boundjid}: non-critical encryption errors: {errors}", flush=True)
    if encrypted is None:
        fail(f"{c.boundjid} could not encrypt for {to}: {errors}")
    if body in str(encrypted):
        fail("the encrypted message carries the plaintext")
    encrypted.send()
    print(f"{c.boundjid} -> {to}: encrypted", flush=True)


async def expect_plain(c, body):
    async def got():
        return body in c.plain

    await wait_for(f"{c.boundjid} to decrypt {body!r}", got)
    print(f"{c.boundjid} decrypted {body!r}", flush=True)


async def main():
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("OMEMO_SCENARIO_DEBUG") else logging.WARNING
    )
    p1, p2, p3 = (int(p) for p in sys.argv[1:4])
    alice = await login("alice", p1, "a1")
    bob = await login("bob", p2, "b1")

    # Mutual presence subscription (slixmpp approves and subscribes back).
    alice.send_presence_subscription(pto=f"bob@{DOMAIN}")

    async def both():
        for c, other in ((alice, "bob"), (bob, "alice")):
            r = c.client_roster
            if not r.has_jid(f"{other}@{DOMAIN}") or r[f"{other}@{DOMAIN}"]["subscription"] != "both":
                return False
        return True

    await wait_for("a mutual subscription", both)
    print("alice and bob are subscribed both ways", flush=True)

    # Each learns the other's device from PEP (notification or fetch).
    await send_encrypted(alice, f"bob@{DOMAIN}", "hello bob, secretly")
    await expect_plain(bob, "hello bob, secretly")
    await send_encrypted(bob, f"alice@{DOMAIN}", "hello alice, secretly")
    await expect_plain(alice, "hello alice, secretly")

    # bob's second device on node 3: alice is told by a PEP notification
    # of bob's device list (she asked with +notify in her caps).
    bob2 = await login("bob", p3, "b2")

    async def alice_knows_b2():
        return await knows_device(alice, f"bob@{DOMAIN}", bob2.device_id)

    await wait_for("alice to learn bob's new device from a device-list notification", alice_knows_b2)
    print(f"alice learned bob's device {bob2.device_id}", flush=True)
    await send_encrypted(alice, f"bob@{DOMAIN}", "for every device of bob")
    await expect_plain(bob2, "for every device of bob")
    await expect_plain(bob, "for every device of bob")
    for c in (alice, bob, bob2):
        c.disconnect()
    print("\nOK", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
