"""ShareableList: parity with the stdlib, interop both ways on the same
segment, exact NUL round trips (gh-96779) and atomic item writes."""

import importlib
import os
import pickle
import struct
import time

import pytest
from support import is_fastmp


def sl_module(obj):
    pkg = "fastmp" if is_fastmp(obj) else "multiprocessing"
    return importlib.import_module(pkg + ".shared_memory")


VALUES = ['howdy', b'HoWdY', -273.154, 100, None, True, 42]


def _cleanup(sl):
    sl.shm.close()
    sl.shm.unlink()


# ---- children ----


def _child_modify(impl, name):
    sm = importlib.import_module(impl + ".shared_memory")
    sl = sm.ShareableList(name=name)
    sl[0] = sl[0] * 2
    sl[2] = "modified"
    sl[3] = None
    sl.shm.close()


def _child_modify_pickled(sl):
    sl[1] = b"child"
    sl.shm.close()


def _child_nul_values(name):
    from fastmp import shared_memory as sm

    sl = sm.ShareableList(name=name)
    ok = sl[0] == "ab\0\0" and sl[1] == b"\0\0"
    sl[2] = "zz\0"
    sl[3] = b"q\0"
    sl[4] = ok
    sl.shm.close()


def _child_writer(name, index, values, seconds):
    from fastmp import shared_memory as sm

    sl = sm.ShareableList(name=name)
    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        for v in values:
            sl[index] = v
        k += 1
    sl.shm.close()


# ---- API parity ----


def test_basics(mp):
    sm = sl_module(mp)
    sl = sm.ShareableList(VALUES)
    try:
        assert sl.shm.name in repr(sl)
        assert str(list(sl)) in repr(sl)
        assert repr(sl).startswith("ShareableList([")
        assert list(sl) == VALUES
        assert tuple(sl) == tuple(VALUES)
        assert len(sl) == 7
        assert sl.format == '8s8sdqxxxxxx?xxxxxxxx?q'
        assert sl[-2] is True
        assert sl[4] is None
        with pytest.raises(IndexError):
            sl[7]
        with pytest.raises(IndexError):
            sl[7] = 2
        fmt = sl._get_packing_format(0)
        sl[0] = 'hi'
        assert sl._get_packing_format(0) == fmt
        assert sl.index(100) == 3
        with pytest.raises(ValueError):
            sl.index('100')
        sl[3] = 42
        assert sl.count(42) == 2
        sl[4] = 'some'
        assert sl[4] == 'some'
        assert sl.format == '8s8sdq8sxxxxxxx?q'
        with pytest.raises(ValueError, match="exceeds available storage"):
            sl[4] = 'far too many'
        assert sl[4] == 'some'
        sl[0] = 'encodés'  # 8 bytes of UTF-8
        assert sl[0] == 'encodés'
        assert sl[1] == b'HoWdY'
        with pytest.raises(ValueError, match="exceeds available storage"):
            sl[0] = 'encodées'
        with pytest.raises(ValueError, match="exceeds available storage"):
            sl[1] = b'123456789'
        sl[2] = 7  # float slot -> int
        sl[5] = 1.5  # bool slot -> float
        sl[6] = False
        assert list(sl)[2:] == [7, 42, 'some', 1.5, False]
    finally:
        _cleanup(sl)


def test_empty_and_copy(mp):
    sm = sl_module(mp)
    empty = sm.ShareableList()
    try:
        assert len(empty) == 0
        assert empty.format == ''
        assert empty.count('any') == 0
        with pytest.raises(ValueError):
            empty.index(None)
    finally:
        _cleanup(empty)
    sl = sm.ShareableList(range(5))
    copy = sm.ShareableList(sl)
    try:
        assert list(copy) == [0, 1, 2, 3, 4]
        copy[-1] = 77
        assert sl[-1] == 4
    finally:
        _cleanup(sl)
        _cleanup(copy)


def test_bad_inputs(mp):
    sm = sl_module(mp)
    with pytest.raises(KeyError):
        sm.ShareableList([[1, 2]])
    sl = sm.ShareableList([1, 'x'])
    try:
        with pytest.raises(KeyError):
            sl[0] = [1]
        with pytest.raises(struct.error):
            sl[0] = 2**64
        with pytest.raises((TypeError, AttributeError)):
            del sl[0]
        with pytest.raises(TypeError):
            sl['a']
        if is_fastmp(mp):
            # a failed write leaves the item as it was (the stdlib may
            # have half-written it)
            assert list(sl) == [1, 'x']
    finally:
        _cleanup(sl)
    with pytest.raises(FileNotFoundError):
        sm.ShareableList(name="fmp_t_sl_missing")


def test_closed_access_raises(mp):
    sm = sl_module(mp)
    sl = sm.ShareableList([1, 2])
    sl.shm.close()
    try:
        with pytest.raises(TypeError):
            sl[0]
        with pytest.raises(TypeError):
            sl[0] = 3
    finally:
        sl.shm.unlink()


def test_pickling(mp):
    sm = sl_module(mp)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        sl = sm.ShareableList(range(10))
        try:
            other = pickle.loads(pickle.dumps(sl, protocol=proto))
            assert isinstance(other, sm.ShareableList)
            assert other[-1] == 9
            other[4] = "changed"
            assert sl[4] == "changed"
            larger = sm.ShareableList(range(400))
            assert len(pickle.dumps(sl, protocol=proto)) == len(
                pickle.dumps(larger, protocol=proto)
            )
            _cleanup(larger)
            other.shm.close()
        finally:
            _cleanup(sl)
        with pytest.raises(FileNotFoundError):
            pickle.loads(pickle.dumps(sl, protocol=proto))


def test_generic_alias(mp):
    sm = sl_module(mp)
    assert sm.ShareableList[int].__origin__ is sm.ShareableList


# ---- across processes ----


def test_modify_in_child(ctx):
    sm = sl_module(ctx)
    impl = "fastmp" if is_fastmp(ctx) else "multiprocessing"
    sl = sm.ShareableList([10, b"bytes", "hello", 3.14])
    try:
        p = ctx.Process(target=_child_modify, args=(impl, sl.shm.name))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert list(sl) == [20, b"bytes", "modified", None]
        p = ctx.Process(target=_child_modify_pickled, args=(sl,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert sl[1] == b"child"
    finally:
        _cleanup(sl)


# ---- stdlib <-> fastmp interop on one segment ----

INTEROP = [
    7,
    -(2**63),
    2.5,
    True,
    False,
    None,
    "text",
    "üñï",
    b"raw",
    "",
    b"",
    "x" * 40,
    b"y" * 17,
]


def test_stdlib_reads_fastmp_list():
    from multiprocessing import shared_memory as ssm

    from fastmp import shared_memory as fsm

    fl = fsm.ShareableList(INTEROP)
    try:
        sl = ssm.ShareableList(name=fl.shm.name)
        assert list(sl) == INTEROP
        assert sl.format == fl.format
        sl[0] = 8
        sl[6] = "new"
        sl[11] = b"bytes now"
        sl[3] = None
        assert fl[0] == 8
        assert fl[6] == "new"
        assert fl[11] == b"bytes now"
        assert fl[3] is None
        # fastmp writes read back by the stdlib
        fl[12] = "short"
        fl[1] = 3.75
        assert sl[12] == "short"
        assert sl[1] == 3.75
        assert list(sl) == list(fl)
        sl.shm.close()
    finally:
        _cleanup(fl)


def test_fastmp_reads_stdlib_list():
    from multiprocessing import shared_memory as ssm

    from fastmp import shared_memory as fsm

    sl = ssm.ShareableList(INTEROP)
    try:
        fl = fsm.ShareableList(name=sl.shm.name)
        assert list(fl) == INTEROP
        assert fl.format == sl.format
        assert not fl._atomic  # no trailer in a stdlib-made list
        fl[0] = 9
        fl[6] = "abc"
        fl[5] = b"nb"
        assert sl[0] == 9
        assert sl[6] == "abc"
        assert sl[5] == b"nb"
        sl[7] = "zz"
        assert fl[7] == "zz"
        assert list(sl) == list(fl)
        fl.shm.close()
    finally:
        _cleanup(sl)


def test_layout_matches_stdlib():
    # Same header, offsets, formats and codes as a stdlib list of the
    # same values; fastmp only appends its trailer.
    from multiprocessing import shared_memory as ssm

    from fastmp import shared_memory as fsm

    vals = [1, "abc", b"de", 2.0, None, True]
    fl = fsm.ShareableList(vals)
    sl = ssm.ShareableList(vals)
    try:
        n = sl.shm.size
        assert bytes(fl.shm.buf[:n]) == bytes(sl.shm.buf[:n])
    finally:
        _cleanup(fl)
        _cleanup(sl)


# ---- gh-96779: values ending in NUL bytes (fastmp only) ----

NUL_VALUES = ["ab\0\0", b"\0\0", "", b"", "\0", b"x\0y\0", "é\0"]


def test_trailing_nul_roundtrip():
    from fastmp import shared_memory as sm

    sl = sm.ShareableList(NUL_VALUES)
    try:
        assert list(sl) == NUL_VALUES
        for i, v in enumerate(NUL_VALUES):
            assert type(sl[i]) is type(v)
        sl[0] = "k\0"
        sl[1] = b"\0"
        assert sl[0] == "k\0" and sl[1] == b"\0"
        sl[0] = "plain"
        assert sl[0] == "plain"
        other = sm.ShareableList(name=sl.shm.name)
        assert list(other) == ["plain", b"\0"] + NUL_VALUES[2:]
        other.shm.close()
    finally:
        _cleanup(sl)


def test_trailing_nul_stdlib_reader_sees_prefix():
    # The stdlib reader cannot represent trailing NULs; it reads the
    # value's bytes and strips them, as it always does, without error.
    from multiprocessing import shared_memory as ssm

    from fastmp import shared_memory as fsm

    fl = fsm.ShareableList(["ab\0\0", b"c\0", "xyz"])
    try:
        sl = ssm.ShareableList(name=fl.shm.name)
        assert list(sl) == ["ab", b"c", "xyz"]
        sl[0] = "abcd"  # a stdlib write restores the plain format
        assert fl[0] == "abcd"
        assert fl._get_packing_format(0) == "8s"
        sl.shm.close()
    finally:
        _cleanup(fl)


def test_trailing_nul_across_processes(fctx):
    from fastmp import shared_memory as sm

    sl = sm.ShareableList(["ab\0\0", b"\0\0", "aaaa", b"bbbb", False])
    try:
        p = fctx.Process(target=_child_nul_values, args=(sl.shm.name,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert sl[4] is True
        assert sl[2] == "zz\0" and sl[3] == b"q\0"
    finally:
        _cleanup(sl)


# ---- atomic item writes (fastmp only) ----


@pytest.mark.timeout(120)
def test_writes_are_atomic_for_readers(fctx):
    from fastmp import shared_memory as sm

    # Large values: without the seqlock a reader sees torn values (mixed
    # bytes, a str format with bytes data) many times a second.
    a, b = "a" * 6000, "b" * 5000
    ints = [1, -1]
    sl = sm.ShareableList([a, 0])
    assert sl._atomic
    try:
        procs = [
            fctx.Process(
                target=_child_writer,
                args=(sl.shm.name, 0, [a, b, b"c" * 4000], 1.0),
            ),
            fctx.Process(
                target=_child_writer, args=(sl.shm.name, 0, [b, a], 1.0)
            ),
            fctx.Process(
                target=_child_writer, args=(sl.shm.name, 1, ints, 1.0)
            ),
        ]
        for p in procs:
            p.start()
        seen = set()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            v = sl[0]
            assert v in (a, b, b"c" * 4000), v
            seen.add(v)
            assert sl[1] in (0, 1, -1)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert sl[0] in (a, b, b"c" * 4000)
    finally:
        _cleanup(sl)


# ---- the seqlock after a writer died or stopped (fastmp only) ----


def _trailer_offset(sl):
    n = len(sl)
    end = (n + 2) * 8 + sl._allocated_offsets[-1] + 9 * n
    return (end + 7) // 8 * 8


def _dead_pid():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# The trailer: magic (8) | seq (4) | spare (4) | owner (8) | spare (8).
# owner is the project's owner-lock word: pid in the low half, the holder's
# start token in the high half (0 while free).


def _trailer_state(sl):
    """(seq, owner word) of a fastmp-made list."""
    t = _trailer_offset(sl)
    (seq,) = struct.unpack_from("I", sl.shm.buf, t + 8)
    (owner,) = struct.unpack_from("Q", sl.shm.buf, t + 16)
    return seq, owner


def _set_trailer(sl, seq, pid, token):
    t = _trailer_offset(sl)
    struct.pack_into("I", sl.shm.buf, t + 8, seq)
    struct.pack_into("Q", sl.shm.buf, t + 16, pid | (token << 32))


def _start_token(pid):
    """The owner-lock token of a live process: its start time in clock
    ticks since boot, plus one, low 32 bits (never 0)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    token = (int(fields[19]) + 1) & 0xFFFFFFFF
    return token or 1


def test_dead_writer_is_taken_over():
    from fastmp import shared_memory as sm

    sl = sm.ShareableList(["value", 5])
    try:
        seq, owner = _trailer_state(sl)
        assert owner == 0 and seq % 2 == 0
        # as if a writer was killed inside: lock held by a dead pid, seq odd
        _set_trailer(sl, seq + 1, _dead_pid(), 0)
        start = time.monotonic()
        assert sl[0] == "value"
        sl[1] = 6
        assert sl[1] == 6
        assert time.monotonic() - start < 5
        seq, owner = _trailer_state(sl)
        assert owner == 0 and seq % 2 == 0
    finally:
        _cleanup(sl)


STUCK_READER = """
import sys
from fastmp import shared_memory as sm
sl = sm.ShareableList(name=sys.argv[1])
print("READY", flush=True)
try:
    sl[0]
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
"""


@pytest.mark.timeout(60)
def test_reader_waiting_on_stopped_writer_takes_ctrl_c():
    import signal
    import subprocess
    import sys

    from support import child_env

    from fastmp import shared_memory as sm

    sl = sm.ShareableList(["value"])
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    try:
        # a live writer that never finishes (e.g. SIGSTOPped mid-write)
        _set_trailer(sl, 1, sleeper.pid, _start_token(sleeper.pid))
        env = child_env()
        with subprocess.Popen(
            [sys.executable, "-c", STUCK_READER, sl.shm.name],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        ) as p:
            assert p.stdout.readline().strip() == "READY"
            time.sleep(0.3)
            assert p.poll() is None  # still waiting
            sent = time.monotonic()
            p.send_signal(signal.SIGINT)
            out, _ = p.communicate(timeout=10)
            assert time.monotonic() - sent < 2
        assert "INTERRUPTED" in out
    finally:
        sleeper.kill()
        sleeper.wait()
        _cleanup(sl)


@pytest.mark.timeout(120)
def test_no_leak_create_attach_close_unlink():
    import gc

    from fastmp import shared_memory as sm

    def cycle(n):
        for i in range(n):
            sl = sm.ShareableList([i, "text", b"raw", None])
            other = sm.ShareableList(name=sl.shm.name)
            other[0] = other[0] + 1
            other.shm.close()
            sl.shm.close()
            sl.shm.unlink()

    cycle(200)
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    cycle(3000)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds
    with open("/proc/self/maps") as f:
        assert f.read().count("/dev/shm/psm_") < 10


def test_attach_to_garbage_raises_valueerror():
    # A segment that does not hold a list (or a corrupted one) never
    # makes fastmp read or write outside the segment.
    from fastmp import shared_memory as sm

    for header in (
        struct.pack("q", 2**40),
        struct.pack("q", -1),
        struct.pack("qqq", 1, 0, 10**6),
    ):
        shm = sm.SharedMemory(create=True, size=64)
        try:
            shm.buf[: len(header)] = header
            with pytest.raises(ValueError, match="valid ShareableList"):
                sm.ShareableList(name=shm.name)
        finally:
            shm.close()
            shm.unlink()


# ---- subclasses of the item types (parity) ----


class _Str(str):
    pass


class _Bytes(bytes):
    pass


class _Int(int):
    pass


class _Float(float):
    pass


@pytest.mark.parametrize(
    "value",
    [_Str("text"), _Bytes(b"raw"), _Int(5), _Float(2.5)],
    ids=["str", "bytes", "int", "float"],
)
def test_subclass_items(mp, value):
    # The stdlib looks each item's exact type up in _types_mapping when it
    # builds a list (KeyError for a subclass); assigning a str/bytes
    # subclass to an existing item is accepted (isinstance), an int/float
    # subclass is not.
    sm = sl_module(mp)
    with pytest.raises(KeyError):
        sm.ShareableList([value])
    with pytest.raises(KeyError):
        sm.ShareableList([1, value])
    sl = sm.ShareableList([0, "x" * 16])
    try:
        if isinstance(value, (str, bytes)):
            sl[1] = value
            assert sl[1] == value and type(sl[1]) is type(value).__mro__[1]
        else:
            with pytest.raises(KeyError):
                sl[0] = value
            assert sl[0] == 0
    finally:
        _cleanup(sl)


# ---- a corrupt trailer never hangs (fastmp only) ----

# Each case is run in a child with a deadline: before the fix, reading or
# writing spun forever.  The child corrupts the trailer itself (the "own
# pid" cases need its pid), then reads, writes and reads again.
CORRUPT_CHILD = """
import os, struct, sys
from fastmp import shared_memory as sm
name, mode, pid, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    int(sys.argv[4])
sl = sm.ShareableList(name=name)
n = len(sl)
end = (n + 2) * 8 + sl._allocated_offsets[-1] + 9 * n
t = (end + 7) // 8 * 8
seq, = struct.unpack_from("I", sl.shm.buf, t + 8)
if mode == "self":
    pid = os.getpid()
    with open("/proc/self/stat") as f:
        token = ((int(f.read().rsplit(")", 1)[1].split()[19]) + 1)
                 & 0xFFFFFFFF) or 1
elif mode == "self-wrong-token":
    pid = os.getpid()
struct.pack_into("I", sl.shm.buf, t + 8, seq | 1)
struct.pack_into("Q", sl.shm.buf, t + 16, pid | (token << 32))
out = []
for step in ("read", "write", "read"):
    try:
        if step == "write":
            sl[1] = 7
        else:
            out.append(repr((sl[0], sl[1])))
    except ValueError as e:
        out.append("ValueError: %s" % e)
seq, = struct.unpack_from("I", sl.shm.buf, t + 8)
owner, = struct.unpack_from("Q", sl.shm.buf, t + 16)
out.append("seq-even" if seq % 2 == 0 else "seq-odd")
out.append("free" if owner == 0 else "held")
print("|".join(out), flush=True)
sl.shm.close()
"""


def _run_corrupt(mode, pid=0, token=0):
    import subprocess
    import sys

    from support import child_env

    from fastmp import shared_memory as sm

    sl = sm.ShareableList(["value", 5])
    env = child_env()
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                CORRUPT_CHILD,
                sl.shm.name,
                mode,
                str(pid),
                str(token),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=15,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().split("|"), list(sl)
    finally:
        _cleanup(sl)


RECOVERED = ["('value', 5)", "('value', 7)", "seq-even", "free"]


@pytest.mark.timeout(60)
def test_corrupt_odd_seq_with_free_lock_recovers():
    # The writer died after its last store to the item but before seq was
    # even again: nobody holds the lock, seq is odd.
    out, final = _run_corrupt("odd-free")
    assert out == RECOVERED
    assert final == ["value", 7]


@pytest.mark.timeout(60)
def test_corrupt_live_pid_with_wrong_token_recovers():
    import subprocess
    import sys

    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    try:
        wrong = (_start_token(sleeper.pid) + 12345) & 0xFFFFFFFF
        out, final = _run_corrupt("pid", sleeper.pid, max(wrong, 2))
        assert sleeper.poll() is None  # still alive: it was a lie
    finally:
        sleeper.kill()
        sleeper.wait()
    assert out == RECOVERED
    assert final == ["value", 7]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["self", "self-wrong-token"])
def test_corrupt_own_pid_recovers(mode):
    # A reader or writer that finds its own process named as the writer:
    # item writes never release the GIL, so no writer of this process can
    # be inside; the word is stale.
    out, final = _run_corrupt(mode, 0, 99)
    assert out == RECOVERED
    assert final == ["value", 7]


# ---- the writer lock is the owner lock (fastmp only) ----


def _child_stalled_write(name, stall, ready):
    from fastmp import _fastmp
    from fastmp import shared_memory as sm

    sl = sm.ShareableList(name=name)
    ready.set()
    _fastmp._owner_stall(stall)  # the next lock acquisition stalls
    sl[0] = 1
    sl.shm.close()


def _child_write_one(name, index, value, started):
    from fastmp import shared_memory as sm

    sl = sm.ShareableList(name=name)
    started.set()
    sl[index] = value
    sl.shm.close()


def _proc_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_stopped(pid):
    deadline = time.monotonic() + 20
    while _proc_state(pid) != "T":
        assert time.monotonic() < deadline, "holder never stopped"
        time.sleep(0.01)


@pytest.mark.timeout(120)
def test_writer_lock_stalled_holder(fctx):
    from fastmp import shared_memory as sm

    sl = sm.ShareableList([0, 0])
    try:
        ready, started = fctx.Event(), fctx.Event()
        a = fctx.Process(
            target=_child_stalled_write, args=(sl.shm.name, 0.3, ready)
        )
        a.start()
        assert ready.wait(30)
        b = fctx.Process(
            target=_child_write_one, args=(sl.shm.name, 1, 2, started)
        )
        b.start()
        deadline = time.monotonic() + 60
        while a.is_alive() or b.is_alive():
            assert sl[0] in (0, 1)
            assert sl[1] in (0, 2)
            assert time.monotonic() < deadline
        a.join(30)
        b.join(30)
        assert a.exitcode == 0 and b.exitcode == 0
        assert list(sl) == [1, 2]
        seq, owner = _trailer_state(sl)
        assert seq % 2 == 0 and owner == 0
    finally:
        _cleanup(sl)


def _kill_and_cleanup(sl, *procs):
    """Teardown of the writer-lock tests: no child outlives its test."""
    import signal

    for p in procs:
        if p is not None and p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
    _cleanup(sl)


def _holder_stopped(fctx, sl):
    """Start a child that stops itself (SIGSTOP) holding the writer lock
    on its way to sl[0] = 1, and a second writer of sl[1] = 2 that must
    wait for it.  Returns (holder, waiter) once both are in place."""
    ready, started = fctx.Event(), fctx.Event()
    a = fctx.Process(
        target=_child_stalled_write, args=(sl.shm.name, -1, ready)
    )
    a.start()
    assert ready.wait(30)
    _wait_stopped(a.pid)
    seq, owner = _trailer_state(sl)
    assert owner & 0x7FFFFFFF == a.pid
    b = fctx.Process(
        target=_child_write_one, args=(sl.shm.name, 1, 2, started)
    )
    b.start()
    assert started.wait(30)
    return a, b


@pytest.mark.timeout(120)
def test_writer_lock_stopped_holder_is_not_robbed(fctx):
    import signal

    from fastmp import shared_memory as sm

    sl = sm.ShareableList([0, 0])
    a = b = None
    try:
        a, b = _holder_stopped(fctx, sl)
        # The waiter waits as long as the holder lives, however long it is
        # stopped; readers are not blocked (the holder has not begun).
        b.join(1.0)
        assert b.is_alive()
        seq, owner = _trailer_state(sl)
        assert owner & 0x7FFFFFFF == a.pid
        assert list(sl) == [0, 0]
        os.kill(a.pid, signal.SIGCONT)
        a.join(30)
        b.join(30)
        assert a.exitcode == 0 and b.exitcode == 0
        assert list(sl) == [1, 2]
        seq, owner = _trailer_state(sl)
        assert seq % 2 == 0 and owner == 0
    finally:
        _kill_and_cleanup(sl, a, b)


@pytest.mark.timeout(120)
def test_writer_lock_killed_holder_is_taken_over(fctx):
    import signal

    from fastmp import shared_memory as sm

    sl = sm.ShareableList([0, 0])
    a = b = None
    try:
        a, b = _holder_stopped(fctx, sl)
        os.kill(a.pid, signal.SIGKILL)
        a.join(30)
        b.join(10)  # a few slices, not a timeout
        assert not b.is_alive() and b.exitcode == 0
        assert list(sl) == [0, 2]
        sl[0] = 3
        assert list(sl) == [3, 2]
        seq, owner = _trailer_state(sl)
        assert seq % 2 == 0 and owner == 0
    finally:
        _kill_and_cleanup(sl, a, b)
