"""Connection and Pipe: parity with the stdlib, interop, signals, leaks."""

import array
import gc
import multiprocessing
import multiprocessing.connection as std_connection
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support import child_env, is_fastmp

import fastmp
import fastmp.connection as fast_connection


def conn_mod(ctx):
    return fast_connection if is_fastmp(ctx) else std_connection


# --- helpers run in children (module level for spawn/forkserver) -------


def _echo(conn):
    while True:
        try:
            obj = conn.recv()
        except EOFError:
            break
        if obj is None:
            break
        conn.send(obj)
    conn.close()


def _echo_bytes(conn):
    while True:
        b = conn.recv_bytes()
        if not b:
            break
        conn.send_bytes(b)
    conn.close()


def _send_through(outer):
    inner = outer.recv()
    inner.send(("from child", os.getpid()))
    inner.close()
    outer.close()


def _writer(w, n):
    for i in range(n):
        w.send(i)
    w.close()


# --- basic API ----------------------------------------------------------


def test_type_and_names(ctx):
    a, b = ctx.Pipe()
    mod = conn_mod(ctx)
    assert isinstance(a, mod.Connection)
    assert type(a).__name__ == "Connection"
    assert "Connection object at" in repr(a)
    assert set(mod.__all__) == {"Client", "Listener", "Pipe", "wait"}
    a.close()
    b.close()


def test_duplex_roundtrip(ctx):
    a, b = ctx.Pipe()
    for obj in (
        None,
        1,
        "x" * 3,
        [1, (2, 3)],
        {"k": b"v"},
        2.5,
        list(range(10000)),
    ):
        a.send(obj)
        assert b.recv() == obj
        b.send(obj)
        assert a.recv() == obj
    assert a.readable and a.writable and not a.closed
    a.close()
    b.close()


def test_simplex(ctx):
    r, w = ctx.Pipe(duplex=False)
    assert r.readable and not r.writable
    assert w.writable and not w.readable
    w.send_bytes(b"abc")
    assert r.recv_bytes() == b"abc"
    with pytest.raises(OSError, match="connection is read-only"):
        r.send(1)
    with pytest.raises(OSError, match="connection is write-only"):
        w.recv()
    with pytest.raises(OSError, match="connection is write-only"):
        w.poll()
    r.close()
    w.close()


@pytest.mark.parametrize("spin", [True, False], ids=["spin", "nospin"])
@pytest.mark.parametrize("duplex", [True, False])
def test_frames_arriving_in_pieces(ctx, duplex, spin):
    # A reader waiting for a frame gets its header and payload a byte at a
    # time, with pauses between; short and long waits alternate.
    a, b = ctx.Pipe(duplex)
    reader, writer = a, b
    if not spin:
        if not is_fastmp(ctx):
            pytest.skip("fastmp's Connection._spin")
        assert reader._spin is True
        reader._spin = False
        assert reader._spin is False
    frames = [
        struct.pack("!i", len(p)) + p
        for p in (b"hello", b"", b"x" * 300, b"world")
    ]

    def dribble():
        for k, frame in enumerate(frames):
            time.sleep(0.05 if k % 2 else 0.001)
            for i in range(len(frame)):
                os.write(writer.fileno(), frame[i : i + 1])
                if i < 8:
                    time.sleep(0.002)

    t = threading.Thread(target=dribble)
    t.start()
    try:
        got = [reader.recv_bytes() for _ in frames]
    finally:
        t.join()
    assert got == [b"hello", b"", b"x" * 300, b"world"]
    a.close()
    b.close()


def _wmem_max():
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


@pytest.mark.skipif(
    _wmem_max() < 1 << 20,
    reason="net.core.wmem_max caps socket buffers below 1 MiB",
)
def test_duplex_pipe_holds_a_whole_1mib_message():
    # fastmp-only: a duplex Pipe's buffer takes a 1 MiB message whole, so
    # the sender is done before the reader starts.
    a, b = fastmp.Pipe()
    msg = os.urandom(1 << 20)
    t = threading.Thread(target=a.send_bytes, args=(msg,))
    t.start()
    t.join(10)
    try:
        assert not t.is_alive()
    finally:
        assert b.recv_bytes() == msg
        t.join()
    a.close()
    b.close()


def test_send_bytes_offset_size(ctx):
    a, b = ctx.Pipe()
    msg = b"0123456789"
    a.send_bytes(msg, 3)
    assert b.recv_bytes() == b"3456789"
    a.send_bytes(msg, 2, 4)
    assert b.recv_bytes() == b"2345"
    a.send_bytes(msg, size=2)
    assert b.recv_bytes() == b"01"
    a.send_bytes(msg, 10)
    assert b.recv_bytes() == b""
    arr = array.array("i", range(4))
    a.send_bytes(arr, 4, 8)
    assert b.recv_bytes() == arr.tobytes()[4:12]
    with pytest.raises(ValueError, match="offset is negative"):
        a.send_bytes(msg, -1)
    with pytest.raises(ValueError, match="buffer length < offset"):
        a.send_bytes(msg, 11)
    with pytest.raises(ValueError, match="size is negative"):
        a.send_bytes(msg, 0, -1)
    with pytest.raises(ValueError, match=r"buffer length < offset \+ size"):
        a.send_bytes(msg, 5, 6)
    with pytest.raises(TypeError):
        a.send_bytes("text")
    assert not b.poll()
    a.close()
    b.close()


def test_recv_bytes_into(ctx):
    a, b = ctx.Pipe()
    buf = bytearray(20)
    a.send_bytes(b"hello")
    assert b.recv_bytes_into(buf) == 5
    assert bytes(buf[:5]) == b"hello"
    a.send_bytes(b"world")
    assert b.recv_bytes_into(buf, 8) == 5
    assert bytes(buf[8:13]) == b"world"
    arr = array.array("i", [0] * 4)
    a.send_bytes(array.array("i", [7, 8]))
    assert b.recv_bytes_into(arr, 4) == 8
    assert list(arr) == [0, 7, 8, 0]
    a.send_bytes(b"x" * 100)
    with pytest.raises(multiprocessing.BufferTooShort) as ei:
        b.recv_bytes_into(bytearray(10))
    assert ei.value.args[0] == b"x" * 100
    with pytest.raises(ValueError, match="negative offset"):
        b.recv_bytes_into(buf, -1)
    with pytest.raises(ValueError, match="offset too large"):
        b.recv_bytes_into(buf, 21)
    a.close()
    b.close()


def test_recv_bytes_maxlength(ctx):
    a, b = ctx.Pipe()
    a.send_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="negative maxlength"):
        b.recv_bytes(-1)
    a.send_bytes(b"y" * 5)
    # the 100-byte message comes first: too long for maxlength=10
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(maxlength=10)
    assert not b.readable  # duplex: stops being readable
    assert not b.closed
    a.close()
    b.close()
    r, w = ctx.Pipe(duplex=False)
    w.send_bytes(b"z" * 100)
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(10)
    assert r.closed  # read-only end is closed
    w.close()


def test_closed_and_context_manager(ctx):
    a, b = ctx.Pipe()
    with a:
        assert not a.closed
    assert a.closed
    a.close()  # idempotent
    for call in (
        a.fileno,
        a.recv,
        lambda: a.send(1),
        a.poll,
        a.recv_bytes,
        lambda: a.send_bytes(b""),
    ):
        with pytest.raises(OSError, match="handle is closed"):
            call()
    with pytest.raises(EOFError):
        b.recv()
    assert b.poll(0)  # EOF counts as readable
    b.close()


def test_eof_and_broken_pipe(ctx):
    a, b = ctx.Pipe()
    b.close()
    with pytest.raises(OSError):
        for _ in range(100):
            a.send_bytes(b"x" * 65536)
    a.close()


def test_poll_timeout(ctx):
    a, b = ctx.Pipe()
    assert b.poll() is False
    t = time.monotonic()
    assert b.poll(0.2) is False
    assert 0.15 < time.monotonic() - t < 2
    assert b.poll(-1) is False
    a.send(1)
    assert b.poll(None) is True
    assert b.poll(0) is True
    assert b.recv() == 1
    a.close()
    b.close()


def test_subclass(ctx):
    Connection = conn_mod(ctx).Connection

    class Sub(Connection):
        def __init__(self, handle, readable=True, writable=True):
            super().__init__(handle, readable, writable)
            self.extra = 1

    r, w = os.pipe()
    a = Sub(r, writable=False)
    b = Sub(w, readable=False)
    b.send_bytes(b"sub")
    assert a.recv_bytes() == b"sub" and a.extra == 1
    a.close()
    b.close()


def test_invalid_handles(ctx):
    Connection = conn_mod(ctx).Connection
    with pytest.raises((ValueError, OSError)):
        Connection(-1)
    fd = os.dup(0)
    with pytest.raises(ValueError):
        Connection(fd, readable=False, writable=False)
    os.close(fd)
    conn = Connection(44977608)
    try:
        # the stdlib reports an invalid fd as "ready"; either is accepted
        try:
            conn.poll()
        except (ValueError, OSError):
            pass
    finally:
        conn._handle = None
    assert conn.closed


def test_large_message(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo_bytes, args=(b,))
    p.start()
    b.close()
    data = os.urandom(3 << 20)
    a.send_bytes(data)
    assert a.recv_bytes() == data
    a.send_bytes(b"")
    p.join(30)
    assert p.exitcode == 0
    a.close()


def test_child_echo(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    for obj in (1, "two", [3.0], {4: 4}):
        a.send(obj)
        assert a.recv() == obj
    a.send(None)
    p.join(30)
    assert p.exitcode == 0
    a.close()


def test_simplex_to_child(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_writer, args=(w, 50))
    p.start()
    w.close()
    got = []
    while True:
        try:
            got.append(r.recv())
        except EOFError:
            break
    p.join(30)
    assert got == list(range(50))
    r.close()


def test_connection_over_connection(ctx):
    # _TestPicklingConnections: a Connection sent through another one.
    outer_a, outer_b = ctx.Pipe()
    inner_a, inner_b = ctx.Pipe()
    p = ctx.Process(target=_send_through, args=(outer_b,))
    p.start()
    outer_a.send(inner_b)
    inner_b.close()
    msg, pid = inner_a.recv()
    assert msg == "from child" and pid == p.pid
    p.join(30)
    assert p.exitcode == 0
    for c in (outer_a, outer_b, inner_a):
        c.close()


def test_fd_transfer(ctx):
    # reduction.send_handle needs the duplex Connection to be a socket.
    from multiprocessing import reduction

    a, b = ctx.Pipe()
    r, w = os.pipe()
    reduction.send_handle(a, w, os.getpid())
    fd = reduction.recv_handle(b)
    os.write(fd, b"ok")
    assert os.read(r, 2) == b"ok"
    for f in (r, w, fd):
        os.close(f)
    a.close()
    b.close()


# --- wire interop with the stdlib ---------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [0, 1, 100, 16384, 16385, 1 << 20])
@pytest.mark.parametrize("fast_sends", [True, False])
def test_interop_with_stdlib(size, fast_sends):
    s1, s2 = socket.socketpair()
    fast = fast_connection.Connection(s1.detach())
    std = std_connection.Connection(s2.detach())
    tx, rx = (fast, std) if fast_sends else (std, fast)
    payload = os.urandom(size)

    def send_all():
        tx.send_bytes(payload)
        tx.send({"n": size, "b": payload[:10]})
        tx.send_bytes(payload)

    t = threading.Thread(target=send_all)
    t.start()
    assert rx.recv_bytes() == payload
    assert rx.recv() == {"n": size, "b": payload[:10]}
    buf = bytearray(size + 3)
    assert rx.recv_bytes_into(buf, 3) == size
    assert bytes(buf[3:]) == payload
    t.join()
    fast.close()
    std.close()


def test_wire_format_bytes():
    r, w = os.pipe()
    c = fast_connection.Connection(w, readable=False)
    c.send_bytes(b"abc")
    assert os.read(r, 100) == b"\x00\x00\x00\x03abc"
    c.close()
    os.close(r)


def test_stdlib_connection_pickled_to_fastmp_child(fctx):
    a, b = std_connection.Pipe()
    p = fctx.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    a.send("x")
    assert a.recv() == "x"
    a.send(None)
    p.join(30)
    assert p.exitcode == 0
    a.close()


# --- wait ---------------------------------------------------------------


def _sleep_then_send(conn, delay):
    time.sleep(delay)
    conn.send("late")
    conn.close()


def test_wait_mixed_objects(ctx):
    mod = conn_mod(ctx)
    a, b = ctx.Pipe()
    sa, sb = std_connection.Pipe()
    s1, s2 = socket.socketpair()
    r, w = os.pipe()
    assert mod.wait([b, sb, s2, r], timeout=0) == []
    a.send(1)
    sa.send(2)
    s1.send(b"x")
    os.write(w, b"y")
    ready = mod.wait([b, sb, s2, r], timeout=5)
    assert set(map(id, ready)) == set(map(id, [b, sb, s2, r]))
    p = ctx.Process(target=time.sleep, args=(0.1,))
    p.start()
    assert mod.wait([p.sentinel], timeout=10) == [p.sentinel]
    p.join()
    for o in (a, b, sa, sb, s1, s2):
        o.close()
    os.close(r)
    os.close(w)


def test_wait_timeout_and_wakeup(ctx):
    mod = conn_mod(ctx)
    a, b = ctx.Pipe()
    t = time.monotonic()
    assert mod.wait([b], 0.2) == []
    assert time.monotonic() - t >= 0.15
    p = ctx.Process(target=_sleep_then_send, args=(a, 0.2))
    p.start()
    assert mod.wait([b], 20) == [b]
    assert b.recv() == "late"
    p.join()
    a.close()
    b.close()


# --- Ctrl-C in blocked recv / poll / wait (fastmp) ----------------------

_BLOCKER = textwrap.dedent("""
    import sys, time
    import fastmp
    a, b = fastmp.Pipe(%(duplex)s)
    reader = a
    print("READY", flush=True)
    t = time.monotonic()
    try:
        %(call)s
    except KeyboardInterrupt:
        print("KI %%.3f" %% (time.monotonic() - t), flush=True)
    """)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "call,duplex",
    [
        ("reader.recv()", True),
        ("reader.recv_bytes()", False),
        ("reader.recv_bytes_into(bytearray(10))", True),
        ("reader.poll(None)", True),
        ("reader.poll(100)", False),
        ("fastmp.connection.wait([reader], 100)", True),
        # No spinning, no look: asleep in read(2) at once.
        ("reader._spin = False; reader.recv()", True),
        ("reader._spin = False; reader.recv_bytes()", False),
    ],
)
def test_ctrl_c_interrupts_blocking_call(call, duplex):
    src = _BLOCKER % {"call": call, "duplex": duplex}
    p = subprocess.Popen(
        [sys.executable, "-c", src],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.3)
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        line = p.stdout.readline()
        elapsed = time.monotonic() - sent
        assert line.startswith("KI"), line
        assert elapsed < 0.5 + 0.5  # generous for a loaded machine
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# --- leaks --------------------------------------------------------------


def _nfds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("duplex", [True, False])
def test_pipe_leak(duplex):
    gc.collect()
    before = _nfds()
    for i in range(10000):
        a, b = fastmp.Pipe(duplex)
        if i % 2:
            b.send_bytes(b"x")
            a.close()
            b.close()
        else:
            del a, b  # closed by dealloc
    gc.collect()
    assert _nfds() <= before + 2


def test_poll_timeout_keyword(ctx):
    # The stdlib's poll() takes timeout as a keyword as well.
    a, b = ctx.Pipe()
    try:
        assert a.poll(timeout=0.01) is False
        b.send("x")
        assert a.poll(timeout=None) is True
        with pytest.raises(TypeError):
            a.poll(tmeout=1)
    finally:
        a.close()
        b.close()


def test_send_obj_keyword(ctx):
    # The stdlib's send() is a Python method: obj may be a keyword, and a
    # wrong call names _ConnectionBase.send.
    a, b = ctx.Pipe()
    try:
        a.send(obj=[1, 2])
        assert b.recv() == [1, 2]
        with pytest.raises(TypeError, match=r"send\(\) missing 1 required"):
            a.send()
        with pytest.raises(TypeError, match="unexpected keyword"):
            a.send(ob=1)
    finally:
        a.close()
        b.close()


# --- a frame cut short by the peer closing ------------------------------

_EXT = b"\xff\xff\xff\xff"
# What the stdlib's reader raises when the peer closes after these bytes:
# EOFError when it closed between two of its reads (before the header,
# before the 8-byte extended length, before the payload), OSError("got end
# of file during message") when it closed inside one of them.
CUTS = {
    "nothing": (b"", EOFError),
    "inside-header": (b"\x00\x00", OSError),
    "inside-header-3": (b"\x00\x00\x00", OSError),
    "after-header": (b"\x00\x00\x00\x05", EOFError),
    "inside-payload": (b"\x00\x00\x00\x05ab", OSError),
    "after-ext-marker": (_EXT, EOFError),
    "inside-ext-length": (_EXT + b"\x00\x00\x00", OSError),
    "after-ext-length": (_EXT + struct.pack("!Q", 5), EOFError),
    "inside-ext-payload": (_EXT + struct.pack("!Q", 5) + b"ab", OSError),
}
RECV_CALLS = {
    "recv_bytes": lambda c: c.recv_bytes(),
    "recv_bytes_into": lambda c: c.recv_bytes_into(bytearray(64)),
    "recv": lambda c: c.recv(),
}


def _assert_cut_error(excinfo, expected):
    if expected is EOFError:
        assert excinfo.type is EOFError
    else:
        assert excinfo.type is OSError
        assert str(excinfo.value) == "got end of file during message"


@pytest.mark.parametrize("call", list(RECV_CALLS))
@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_frame_cut_short(mp, duplex, cut, call):
    raw, expected = CUTS[cut]
    a, b = mp.Pipe(duplex)
    try:
        if raw:
            assert os.write(b.fileno(), raw) == len(raw)
        b.close()
        with pytest.raises((EOFError, OSError)) as ei:
            RECV_CALLS[call](a)
        _assert_cut_error(ei, expected)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_frame_cut_short_after_a_pause(mp, duplex):
    # The reader is already waiting when the first header bytes arrive.
    a, b = mp.Pipe(duplex)

    def cut():
        time.sleep(0.05)
        os.write(b.fileno(), b"\x00\x00")
        time.sleep(0.05)
        b.close()

    t = threading.Thread(target=cut)
    t.start()
    try:
        with pytest.raises((EOFError, OSError)) as ei:
            a.recv_bytes()
        _assert_cut_error(ei, OSError)
    finally:
        t.join()
        a.close()


# --- maxlength and offset: any value the stdlib accepts ------------------


def _next_message(conn):
    return conn.recv_bytes() if conn.poll(5) else None


@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_recv_bytes_maxlength_not_an_index(mp, duplex):
    # The stdlib only compares maxlength with 0 and with the message size:
    # floats and ints of any size work as limits.
    for maxlength in (10.0, 5.0, 2**70, float("inf"), float("nan"), True, 5):
        a, b = mp.Pipe(duplex)
        b.send_bytes(b"hello")
        if maxlength is True:
            with pytest.raises(OSError, match="bad message length"):
                a.recv_bytes(maxlength)
        else:
            assert a.recv_bytes(maxlength) == b"hello"
        a.close()
        b.close()
    a, b = mp.Pipe(duplex)
    b.send_bytes(b"hello")
    with pytest.raises(OSError, match="bad message length"):
        a.recv_bytes(4.5)
    if duplex:
        assert not a.readable and not a.closed
    else:
        assert a.closed
    a.close()
    b.close()


@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_recv_bytes_bad_maxlength_leaves_the_message(mp, duplex):
    a, b = mp.Pipe(duplex)
    b.send_bytes(b"hello")
    for maxlength in (-1, -1.5, -(2**70), float("-inf")):
        with pytest.raises(ValueError) as ei:
            a.recv_bytes(maxlength)
        assert str(ei.value) == "negative maxlength"
    for maxlength in ("10", b"10", [], object()):
        with pytest.raises(TypeError) as ei:
            a.recv_bytes(maxlength)
        assert str(ei.value) == (
            "'<' not supported between instances of '%s' and 'int'"
            % type(maxlength).__name__
        )
    assert _next_message(a) == b"hello"
    a.close()
    b.close()


@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_recv_bytes_into_bad_offset_leaves_the_message(mp, duplex):
    a, b = mp.Pipe(duplex)
    b.send_bytes(b"hello")
    buf = bytearray(10)
    cases = [
        (-1, ValueError, "negative offset"),
        (-(2**70), ValueError, "negative offset"),
        (-0.5, ValueError, "negative offset"),
        (11, ValueError, "offset too large"),
        (2**70, ValueError, "offset too large"),
        (10.5, ValueError, "offset too large"),
        (
            "1",
            TypeError,
            "'<' not supported between instances of 'str' and 'int'",
        ),
        (
            None,
            TypeError,
            "'<' not supported between instances of 'NoneType' and 'int'",
        ),
    ]
    for offset, exc, msg in cases:
        with pytest.raises(exc) as ei:
            a.recv_bytes_into(buf, offset)
        assert str(ei.value) == msg
    with pytest.raises(ValueError, match="offset too large"):
        a.recv_bytes_into(array.array("i", [0] * 2), 9)
    with pytest.raises(TypeError) as ei:
        a.recv_bytes_into(5)
    assert str(ei.value) == (
        "memoryview: a bytes-like object is required, not 'int'"
    )
    assert buf == bytearray(10)
    assert _next_message(a) == b"hello"
    a.close()
    b.close()


@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_recv_bytes_into_offset_in_range(mp, duplex):
    a, b = mp.Pipe(duplex)
    buf = bytearray(10)
    b.send_bytes(b"hello")
    assert a.recv_bytes_into(buf, 5) == 5  # ends at the last byte
    assert buf == bytearray(5) + b"hello"
    b.send_bytes(b"hello")
    with pytest.raises(mp.BufferTooShort) as ei:  # one byte short
        a.recv_bytes_into(buf, 6)
    assert ei.value.args[0] == b"hello"
    b.send_bytes(b"")
    assert a.recv_bytes_into(buf, 10) == 0  # offset == len
    b.send_bytes(b"hi")
    assert a.recv_bytes_into(buf, True) == 2  # an int like any other
    assert buf[:3] == bytearray(b"\0hi")
    a.close()
    b.close()


@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_recv_bytes_into_unusable_after_the_read(mp, duplex):
    # Errors the stdlib only finds once it holds the message: it is
    # consumed (BufferTooShort carries it; the others lose it), and the
    # next message is read next.
    a, b = mp.Pipe(duplex)
    for m in (b"one", b"two", b"three", b"four", b"five"):
        b.send_bytes(m)
    buf = bytearray(10)
    with pytest.raises(TypeError) as ei:
        a.recv_bytes_into(buf, 1.0)
    assert "slice indices must be integers" in str(ei.value)
    with pytest.raises(mp.BufferTooShort) as ei:
        a.recv_bytes_into(bytearray(10), 8.0)
    assert ei.value.args[0] == b"two"
    with pytest.raises(TypeError) as ei:
        a.recv_bytes_into(b"0123456789")
    assert "read-write bytes-like object" in str(ei.value)
    with pytest.raises(mp.BufferTooShort) as ei:
        a.recv_bytes_into(b"012")
    assert ei.value.args[0] == b"four"
    assert buf == bytearray(10)
    assert _next_message(a) == b"five"
    a.close()
    b.close()


# --- a Connection that reads ahead (fastmp: `_spin = False`) ------------


@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_read_ahead_keeps_messages_in_order(duplex):
    # Several frames in one write: the first read takes more than the
    # first message; every later read, poll() and recv_bytes_into() takes
    # from what was read ahead first, then from the fd.
    a, b = fastmp.Pipe(duplex)
    a._spin = False
    big = b"B" * (1 << 20)
    frames = [b"one", b"", b"three" * 300, big, b"last"]
    wire = b"".join(struct.pack("!i", len(f)) + f for f in frames)
    assert os.write(b.fileno(), wire[:5000]) == 5000
    try:
        assert a.recv_bytes() == b"one"
        assert a.poll()  # already read ahead
        assert a.recv_bytes() == b""
        buf = bytearray(2000)
        assert a.recv_bytes_into(buf, 10) == 1500
        assert bytes(buf[10:1510]) == frames[2]
        t = threading.Thread(target=os.write, args=(b.fileno(), wire[5000:]))
        t.start()
        assert a.recv_bytes() == big
        t.join()
        assert a.recv_bytes() == b"last"
        assert not a.poll()
        b.send_bytes(b"x")
        assert a.recv_bytes() == b"x"
        b.send((1, "two", None))
        assert a.recv() == (1, "two", None)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("duplex", [True, False], ids=["socket", "pipe"])
def test_read_ahead_frame_cut_short(duplex, cut):
    # The stdlib's errors for a frame cut short, with the reader's first
    # read taking everything the peer sent.
    raw, expected = CUTS[cut]
    for call in RECV_CALLS.values():
        a, b = fastmp.Pipe(duplex)
        a._spin = False
        try:
            if raw:
                assert os.write(b.fileno(), raw) == len(raw)
            b.close()
            with pytest.raises((EOFError, OSError)) as ei:
                call(a)
            _assert_cut_error(ei, expected)
        finally:
            a.close()
            b.close()


def test_read_ahead_bad_length():
    # A header no sender writes (negative, not -1): OSError, as without
    # reading ahead.
    a, b = fastmp.Pipe()
    a._spin = False
    try:
        os.write(b.fileno(), b"\x80\x00\x00\x01garbage")
        with pytest.raises(OSError, match="bad message length"):
            a.recv_bytes()
    finally:
        a.close()
        b.close()
