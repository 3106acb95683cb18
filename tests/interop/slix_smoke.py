import asyncio, sys, ssl, logging
import slixmpp
from slixmpp.exceptions import IqError

logging.basicConfig(level=logging.DEBUG if "-v" in sys.argv else logging.WARNING)

def make(jid, password, port, register=False):
    c = slixmpp.ClientXMPP(jid, password)
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0199")
    c.register_plugin("xep_0077")
    c.ssl_context.check_hostname = False
    c.ssl_context.verify_mode = ssl.CERT_NONE
    c["feature_mechanisms"].unencrypted_plain = False
    c._port = port
    return c

async def main():
    p1, p2 = int(sys.argv[1]), int(sys.argv[2])
    a = make("alice@localhost", "secret-a", p1)
    b = make("bob@localhost", "secret-b", p2)
    got = asyncio.get_event_loop().create_future()
    def on_msg(m):
        if m["body"] and not got.done():
            got.set_result(m["body"])
    b.add_event_handler("message", on_msg)
    for c, port in ((a, p1), (b, p2)):
        ok = asyncio.get_event_loop().create_future()
        c.add_event_handler("session_start", lambda e, ok=ok: ok.set_result(True) if not ok.done() else None)
        c.add_event_handler("failed_auth", lambda e, ok=ok: ok.set_result(False) if not ok.done() else None)
        c.connect(("127.0.0.1", port))
        print("session", await asyncio.wait_for(ok, 10))
        c.send_presence()
        await c.get_roster()
    a.send_message(mto="bob@localhost", mbody="hello across nodes", mtype="chat")
    print("bob got:", await asyncio.wait_for(got, 10))
    a.disconnect(); b.disconnect()

asyncio.run(main())
