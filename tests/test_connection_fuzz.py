"""Bad input on a Connection: raw frames written to its fd.

Every malformed, truncated or oversize frame must make the receiving call
raise (or return); the process must never die.  Receivers that might
crash run in a subprocess so that a crash shows up as an exit status.
"""

import os
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest
from support import child_env

import fastmp.connection as fc


def _reader(payload):
    """A read-only fastmp Connection whose pipe holds `payload`, then EOF."""
    r, w = os.pipe()
    os.write(w, payload)
    os.close(w)
    return fc.Connection(r, writable=False)


def test_eof_on_empty():
    c = _reader(b"")
    with pytest.raises(EOFError):
        c.recv_bytes()
    c.close()


def test_truncated_header():
    c = _reader(b"\x00\x00")
    with pytest.raises(OSError, match="got end of file during message"):
        c.recv_bytes()
    c.close()


def test_truncated_payload():
    c = _reader(struct.pack("!i", 100) + b"x" * 10)
    with pytest.raises(OSError, match="got end of file during message"):
        c.recv_bytes()
    c.close()


def test_truncated_long_header():
    c = _reader(struct.pack("!i", -1) + b"\x00\x00\x00")
    with pytest.raises(OSError, match="got end of file during message"):
        c.recv_bytes()
    c.close()


def test_negative_length_is_rejected():
    c = _reader(struct.pack("!i", -5) + b"xxxx")
    with pytest.raises(OSError, match="bad message length"):
        c.recv_bytes()
    c.close()


def test_absurd_long_length():
    c = _reader(struct.pack("!iQ", -1, 1 << 63) + b"x")
    with pytest.raises(OSError, match="bad message length"):
        c.recv_bytes()
    c.close()
    c = _reader(struct.pack("!iQ", -1, 1 << 50) + b"x")
    with pytest.raises((MemoryError, OSError)):
        c.recv_bytes()
    c.close()


def test_long_form_small_message_accepted():
    # -1 + 8-byte length is valid for any size (a stdlib reader accepts it)
    c = _reader(struct.pack("!iQ", -1, 3) + b"abc")
    assert c.recv_bytes() == b"abc"
    c.close()


def test_oversize_vs_maxlength():
    c = _reader(struct.pack("!i", 100) + b"y" * 100)
    with pytest.raises(OSError, match="bad message length"):
        c.recv_bytes(maxlength=10)
    assert c.closed
    c = _reader(struct.pack("!i", 10) + b"y" * 10)
    assert c.recv_bytes(maxlength=10) == b"y" * 10
    c.close()


def test_truncated_pickle():
    data = pickle.dumps({"a": list(range(100))})
    c = _reader(struct.pack("!i", len(data) - 5) + data[:-5])
    with pytest.raises(Exception) as ei:
        c.recv()
    assert not isinstance(ei.value, SystemExit)
    c.close()


def test_recv_bytes_into_truncated():
    c = _reader(struct.pack("!i", 50) + b"z" * 20)
    with pytest.raises(OSError, match="got end of file during message"):
        c.recv_bytes_into(bytearray(100))
    c.close()


_FUZZ = textwrap.dedent("""
    import os, random, struct, sys
    import fastmp.connection as fc
    rng = random.Random(%(seed)d)
    outcomes = {}
    for i in range(%(n)d):
        kind = rng.randrange(6)
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
        if kind == 0:           # random bytes, no structure
            frame = body
        elif kind == 1:         # sane header, maybe short payload
            frame = struct.pack("!i", rng.randrange(128)) + body
        elif kind == 2:         # any 32-bit header
            frame = struct.pack("!I", rng.getrandbits(32)) + body
        elif kind == 3:         # long form, any 64-bit length
            frame = struct.pack("!iQ", -1, rng.getrandbits(rng.choice(
                (3, 8, 33, 64)))) + body
        elif kind == 4:         # a valid frame
            frame = struct.pack("!i", len(body)) + body
        else:                   # a valid frame cut anywhere
            f = struct.pack("!i", len(body)) + body
            frame = f[:rng.randrange(len(f) + 1)]
        r, w = os.pipe()
        os.write(w, frame)
        os.close(w)
        c = fc.Connection(r, writable=False)
        how = rng.randrange(3)
        try:
            if how == 0:
                c.recv_bytes()
            elif how == 1:
                c.recv_bytes(rng.randrange(100))
            else:
                c.recv_bytes_into(bytearray(rng.randrange(80)),
                                  rng.randrange(8))
            res = "ok"
        except Exception as e:
            res = type(e).__name__
        outcomes[res] = outcomes.get(res, 0) + 1
        c.close()
    print("DONE", sorted(outcomes.items()), flush=True)
    """)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_frames_never_kill_the_process(seed):
    src = _FUZZ % {"seed": seed, "n": 1000}
    p = subprocess.run(
        [sys.executable, "-c", src],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        env=child_env(),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("DONE"), p.stdout
    # the mix exercised both success and failure paths
    assert "'ok'" in p.stdout
    assert "OSError" in p.stdout or "EOFError" in p.stdout


def test_stream_continues_after_oversize_on_duplex():
    # duplex: a too-long message makes the end unreadable but still
    # writable, as in the stdlib
    a, b = fc.Pipe()
    a.send_bytes(b"q" * 100)
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(10)
    assert not b.readable
    b.send_bytes(b"still writable")
    assert a.recv_bytes() == b"still writable"
    a.close()
    b.close()
