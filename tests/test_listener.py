"""Listener/Client, the HMAC handshake, and interop with stdlib peers."""

import glob
import multiprocessing
import multiprocessing.connection as std_connection
import os
import pickle
import socket
import struct
import subprocess
import textwrap
import threading

import pytest

import fastmp.connection as fc

FAMILIES = ["AF_UNIX", "AF_INET"]


def _serve_once(listener, out, reply=True):
    try:
        c = listener.accept()
        out.append(c)
        if reply:
            c.send(c.recv())
    except Exception as e:  # noqa: BLE001  (reported to the test)
        out.append(e)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("authkey", [None, b"secret"])
def test_listener_client_roundtrip(family, authkey):
    with fc.Listener(family=family, authkey=authkey) as l:
        out = []
        t = threading.Thread(target=_serve_once, args=(l, out))
        t.start()
        c = fc.Client(l.address, authkey=authkey)
        assert isinstance(c, fc.Connection)
        c.send({"hello": family})
        assert c.recv() == {"hello": family}
        t.join(10)
        assert isinstance(out[0], fc.Connection)
        assert l.last_accepted is not None
        c.close()
        out[0].close()
        addr = l.address
    if family == "AF_UNIX":
        assert not os.path.exists(addr)  # unlinked on close
    with pytest.raises(OSError, match="listener is closed"):
        l.accept()


@pytest.mark.parametrize(
    "server,client", [(fc, std_connection), (std_connection, fc)]
)
@pytest.mark.parametrize("family", FAMILIES)
def test_interop_same_python(server, client, family):
    with server.Listener(family=family, authkey=b"k") as l:
        out = []
        t = threading.Thread(target=_serve_once, args=(l, out))
        t.start()
        c = client.Client(l.address, authkey=b"k")
        c.send([1, 2, 3])
        assert c.recv() == [1, 2, 3]
        t.join(10)
        c.close()
        out[0].close()


def test_wrong_key_rejected_both_ends():
    with fc.Listener(authkey=b"right") as l:
        out = []
        t = threading.Thread(target=_serve_once, args=(l, out, False))
        t.start()
        with pytest.raises(multiprocessing.AuthenticationError):
            fc.Client(l.address, authkey=b"wrong")
        t.join(10)
        assert isinstance(out[0], multiprocessing.AuthenticationError)


def test_authkey_type_checked():
    with pytest.raises(TypeError):
        fc.Listener(authkey="str")
    a, b = fc.Pipe()
    with pytest.raises(ValueError):
        fc.deliver_challenge(a, "str")
    with pytest.raises(ValueError):
        fc.answer_challenge(a, "str")
    a.close()
    b.close()


def test_oversize_message_before_auth_is_capped():
    with fc.Listener(family="AF_INET", authkey=b"k") as l:
        out = []
        t = threading.Thread(target=_serve_once, args=(l, out, False))
        t.start()
        s = socket.create_connection(l.address)
        s.recv(1000)  # the challenge
        s.sendall(struct.pack("!i", 1 << 20))  # claims 1 MiB, sends none
        t.join(10)
        assert not t.is_alive()
        assert isinstance(out[0], OSError)
        assert "bad message length" in str(out[0])
        s.close()


class _Boom:
    def __reduce__(self):
        return (os._exit, (3,))


def test_auth_never_unpickles():
    # A pickle sent where the HMAC answer belongs is only ever compared.
    with fc.Listener(family="AF_INET", authkey=b"k") as l:
        out = []
        t = threading.Thread(target=_serve_once, args=(l, out, False))
        t.start()
        c = fc.SocketClient(l.address)
        c.recv_bytes(256)
        c.send(_Boom())
        t.join(10)
        assert isinstance(out[0], multiprocessing.AuthenticationError)
        assert c.recv_bytes() == b"#FAILURE#"
        c.close()


def test_public_names():
    for name in (
        "Client",
        "Listener",
        "Pipe",
        "wait",
        "Connection",
        "answer_challenge",
        "deliver_challenge",
        "arbitrary_address",
        "families",
        "address_type",
        "default_family",
        "SocketListener",
        "SocketClient",
        "BUFSIZE",
        "CONNECTION_TIMEOUT",
        "reduce_connection",
        "rebuild_connection",
        "XmlListener",
        "XmlClient",
    ):
        assert hasattr(fc, name), name
    assert fc.address_type(("h", 1)) == "AF_INET"
    assert fc.address_type("/tmp/x") == "AF_UNIX"
    assert fc.arbitrary_address("AF_INET") == ("localhost", 0)
    with pytest.raises(ValueError):
        fc.arbitrary_address("AF_BOGUS")


def test_xml_listener_client():
    with fc.XmlListener(family="AF_INET") as l:
        out = []
        t = threading.Thread(target=lambda: out.append(l.accept()))
        t.start()
        c = fc.XmlClient(l.address)
        t.join(10)
        c.send([1, "a"])
        assert out[0].recv() == [1, "a"]
        c.close()
        out[0].close()


# --- stdlib peers of other Python versions ------------------------------


def _pythons():
    found = []
    for ver in ("3.9", "3.11", "3.12", "3.13"):
        cands = sorted(glob.glob(f"/root/.pyenv/versions/{ver}*/bin/python"))
        if cands:
            found.append((ver, cands[-1]))
    return found


_PEER_CLIENT = textwrap.dedent("""
    import sys
    from multiprocessing.connection import Client
    c = Client((sys.argv[1], int(sys.argv[2])), authkey=b"xkey")
    c.send_bytes(b"ping from " + sys.version.split()[0].encode())
    print(c.recv_bytes().decode(), flush=True)
    c.close()
    """)

_PEER_SERVER = textwrap.dedent("""
    import sys
    from multiprocessing.connection import Listener
    with Listener(("127.0.0.1", 0), authkey=b"xkey") as l:
        print(l.address[1], flush=True)
        c = l.accept()
        c.send_bytes(b"pong:" + c.recv_bytes())
        c.close()
    """)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ver,exe", _pythons(), ids=[v for v, _ in _pythons()])
def test_stdlib_client_of_other_version(ver, exe):
    with fc.Listener(("127.0.0.1", 0), authkey=b"xkey") as l:
        p = subprocess.Popen(
            [exe, "-c", _PEER_CLIENT, "127.0.0.1", str(l.address[1])],
            stdout=subprocess.PIPE,
            text=True,
        )
        c = l.accept()
        msg = c.recv_bytes()
        assert msg.startswith(b"ping from " + ver.encode())
        c.send_bytes(b"pong")
        assert p.stdout.readline().strip() == "pong"
        assert p.wait(20) == 0
        c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ver,exe", _pythons(), ids=[v for v, _ in _pythons()])
def test_stdlib_listener_of_other_version(ver, exe):
    p = subprocess.Popen(
        [exe, "-c", _PEER_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(p.stdout.readline())
        c = fc.Client(("127.0.0.1", port), authkey=b"xkey")
        c.send_bytes(b"hi")
        assert c.recv_bytes() == b"pong:hi"
        c.close()
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_pickled_connection_survives_pickle_module():
    # A Connection can't be pickled outside of ForkingPickler.
    a, b = fc.Pipe()
    with pytest.raises(TypeError):
        pickle.dumps(a)
    a.close()
    b.close()


@pytest.mark.parametrize(
    "mod", [fc, std_connection], ids=["fastmp", "multiprocessing"]
)
@pytest.mark.parametrize("family", FAMILIES)
def test_frame_cut_inside_header(mod, family):
    # The client sends two bytes of a header and closes: the server's
    # reader is inside a message, not between two.
    with mod.Listener(family=family) as l:
        out = []
        t = threading.Thread(target=_serve_once, args=(l, out, False))
        t.start()
        c = mod.Client(l.address)
        t.join(10)
        server = out[0]
        try:
            with socket.socket(fileno=os.dup(c.fileno())) as s:
                s.sendall(b"\x00\x00")
            c.close()
            with pytest.raises(
                OSError, match="got end of file during message"
            ):
                server.recv_bytes()
        finally:
            c.close()
            server.close()
