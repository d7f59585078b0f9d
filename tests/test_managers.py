"""Managers: SyncManager's types and BaseManager's API, the stdlib's and
fastmp's side by side (parity), under every start method; remote managers
over loopback TCP with a stdlib peer each way; what a manager's server
survives (wrong keys, garbage, half-open and killed clients); leaks.

A stdlib peer runs as ``python -I``: it cannot import fastmp at all.
"""

import copy
import gc
import importlib
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import ProcessError

import pytest
from support import IMPLS, METHODS, TESTS, child_env, run_fastmp

PY314 = sys.version_info >= (3, 14)


def _load(impl):
    import importlib

    return importlib.import_module(impl)


@pytest.fixture(
    scope="module",
    params=[(i, m) for i in IMPLS for m in METHODS],
    ids=lambda p: "%s-%s" % p,
)
def manager(request):
    """A started SyncManager of one implementation under one start method
    (one per module and parameter: starting one under spawn is slow)."""
    impl, method = request.param
    ctx = _load(impl).get_context(method)
    m = ctx.Manager()
    m._test_ctx = ctx
    m._test_impl = impl
    yield m
    m.shutdown()
    m.join()


def _is_fastmp(manager):
    return manager._test_impl == "fastmp"


# ------------------------------------------------------------ containers


def test_dict_every_method(manager):
    d = manager.dict({"a": 1}, b=2)
    assert type(d).__module__ == manager._test_impl + ".managers"
    d["c"] = 3
    assert d["c"] == 3 and len(d) == 3 and "a" in d and "z" not in d
    assert d.get("z") is None and d.get("z", 7) == 7
    assert d.setdefault("e", 5) == 5 and d["e"] == 5
    d.update({"f": 6}, g=7)
    assert sorted(d.keys()) == list("abcefg")
    assert sorted(d.values()) == [1, 2, 3, 5, 6, 7]
    assert ("a", 1) in d.items()
    assert list(iter(d)) == list("abcefg")
    assert d.pop("g") == 7 and d.pop("g", None) is None
    assert d.popitem() == ("f", 6)
    del d["e"]
    assert d.copy() == {"a": 1, "b": 2, "c": 3}
    assert d._getvalue() == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(KeyError):
        d["nope"]
    with pytest.raises(KeyError):
        del d["nope"]
    with pytest.raises(KeyError):
        manager.dict().popitem()
    d.clear()
    assert len(d) == 0 and d.copy() == {}


def test_dict_314_methods(manager):
    if not _is_fastmp(manager) and not PY314:
        pytest.skip("the stdlib has them from 3.14")
    d = manager.dict(a=1, b=2)
    assert d | {"c": 3} == {"a": 1, "b": 2, "c": 3}
    assert {"z": 0} | d == {"z": 0, "a": 1, "b": 2}
    d |= {"c": 3}
    assert d.copy() == {"a": 1, "b": 2, "c": 3}
    assert d.fromkeys(["x", "y"], 0) == {"x": 0, "y": 0}
    assert list(reversed(d)) == ["c", "b", "a"]


def test_list_every_method(manager):
    a = manager.list(range(5))
    assert a[:] == [0, 1, 2, 3, 4] and a[1] == 1 and a[-1] == 4
    assert a[1:3] == [1, 2] and len(a) == 5 and 3 in a
    a.append(5)
    a.extend([6, 7])
    a.insert(0, -1)
    assert a[:] == [-1, 0, 1, 2, 3, 4, 5, 6, 7]
    assert a.pop() == 7 and a.pop(0) == -1
    a.remove(6)
    assert a.index(3) == 3 and a.count(3) == 1
    a[0] = 10
    del a[1]
    assert a[:] == [10, 2, 3, 4, 5]
    a.reverse()
    assert a[:] == [5, 4, 3, 2, 10]
    a.sort()
    assert a[:] == [2, 3, 4, 5, 10]
    a.sort(reverse=True)
    assert a[:] == [10, 5, 4, 3, 2]
    assert a + [1] == [10, 5, 4, 3, 2, 1]
    assert a * 2 == [10, 5, 4, 3, 2] * 2
    assert 2 * a == [10, 5, 4, 3, 2] * 2
    a += [0]
    assert a[:] == [10, 5, 4, 3, 2, 0]
    b = manager.list([1])
    b *= 3
    assert b[:] == [1, 1, 1]
    with pytest.raises(IndexError):
        a[100]
    with pytest.raises(ValueError):
        a.index(999)
    with pytest.raises(ValueError):
        a.remove(999)
    assert list(iter(a)) == [10, 5, 4, 3, 2, 0]


def test_list_314_methods(manager):
    if not _is_fastmp(manager) and not PY314:
        pytest.skip("the stdlib has them from 3.14")
    a = manager.list([1, 2, 3])
    assert a.copy() == [1, 2, 3]
    assert list(reversed(a)) == [3, 2, 1]
    a.clear()
    assert len(a) == 0


def test_set(manager):
    if not _is_fastmp(manager) and not PY314:
        pytest.skip("the stdlib has it from 3.14")
    s = manager.set({1, 2})
    s.add(3)
    assert 3 in s and len(s) == 3 and sorted(s) == [1, 2, 3]
    s |= {4}
    s -= {1}
    s &= {2, 3, 4, 9}
    s ^= {9}
    assert s.copy() == {2, 3, 4, 9}
    assert s | {0} == {0, 2, 3, 4, 9} and s & {2} == {2}
    assert s - {2} == {3, 4, 9} and s ^ {2} == {3, 4, 9}
    assert s.issubset({2, 3, 4, 9, 10}) and s.issuperset({2})
    assert s.isdisjoint({100}) and s.union({1}) == {1, 2, 3, 4, 9}
    s.discard(9)
    s.remove(4)
    with pytest.raises(KeyError):
        s.remove(4)
    assert s.pop() in (2, 3)
    s.clear()
    assert len(s) == 0
    with pytest.raises(KeyError):
        s.pop()


def test_namespace_value_array(manager):
    ns = manager.Namespace(x=1)
    ns.y = "two"
    assert ns.x == 1 and ns.y == "two"
    assert str(ns) == "Namespace(x=1, y='two')"
    del ns.x
    with pytest.raises(AttributeError):
        assert ns.x
    v = manager.Value("i", 3)
    v.value += 1
    assert v.value == 4 and v.get() == 4
    v.set(9)
    assert v.value == 9
    arr = manager.Array("i", [1, 2, 3])
    assert len(arr) == 3 and arr[0] == 1 and list(arr[:]) == [1, 2, 3]
    arr[0] = 5
    assert list(arr[:]) == [5, 2, 3]
    with pytest.raises(IndexError):
        arr[10]


def test_values_are_copies(manager):
    d = manager.dict(x=[])
    d["x"].append(1)  # mutates a copy
    assert d["x"] == []
    inner = d["x"]
    inner.append(1)
    d["x"] = inner
    assert d["x"] == [1]
    assert copy.deepcopy(d) == {"x": [1]}


def test_proxies_holding_proxies(manager):
    inner = manager.dict(water=10)
    outer = manager.list([inner, manager.list([1, 2])])
    outer[0]["blankets"] = 5
    assert inner["blankets"] == 5
    assert outer[1][:] == [1, 2]
    del inner
    gc.collect()
    assert outer[0]["water"] == 10


def test_str_repr_and_errors(manager):
    d = manager.dict(a=1)
    assert str(d) == "{'a': 1}"
    assert repr(d).startswith("<DictProxy object, typeid 'dict' at ")
    mod = _load(manager._test_impl + ".managers")
    with pytest.raises(mod.RemoteError) as e:
        d._callmethod("no_such_method")
    assert "no_such_method" in str(e.value)
    assert "Traceback" in str(e.value)
    with pytest.raises(TypeError, match="unhashable"):
        d[{}] = 1


# ------------------------------------------------------------ sync types


def test_locks_and_semaphores(manager):
    lock = manager.Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.acquire(True, 0.05) is False
    lock.release()
    with lock:
        pass
    rlock = manager.RLock()
    with rlock:
        with rlock:
            pass
    sem = manager.Semaphore(2)
    assert sem.acquire() and sem.acquire() and not sem.acquire(False)
    sem.release()
    sem.release()
    bsem = manager.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        bsem.release()
    with pytest.raises(RuntimeError):
        manager.Lock().release()


def test_event_condition_barrier(manager):
    ev = manager.Event()
    assert not ev.is_set() and ev.wait(0.01) is False
    ev.set()
    assert ev.is_set() and ev.wait() is True
    ev.clear()
    assert not ev.is_set()
    cond = manager.Condition()
    with cond:
        assert cond.wait(0.01) is False
        cond.notify()
        cond.notify_all()
        assert cond.wait_for(lambda: True) is True
    with pytest.raises(RuntimeError):
        cond.notify()
    bar = manager.Barrier(1)
    assert bar.parties == 1 and bar.n_waiting == 0 and not bar.broken
    assert bar.wait() == 0
    bar.abort()
    assert bar.broken
    bar.reset()
    assert not bar.broken


def test_queues(manager):
    q = manager.Queue()
    q.put(1)
    q.put_nowait(2)
    assert q.qsize() == 2 and not q.empty()
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    bq = manager.Queue(1)
    bq.put(1)
    assert bq.full()
    with pytest.raises(queue.Full):
        bq.put(2, timeout=0.01)
    jq = manager.JoinableQueue()
    jq.put("x")
    assert jq.get() == "x"
    jq.task_done()
    jq.join()


def _square(x):
    return x * x


def test_pool(manager):
    with manager.Pool(2) as p:
        assert p.map(_square, range(5)) == [0, 1, 4, 9, 16]
        assert p.apply(_square, (4,)) == 16
        assert p.apply_async(_square, (3,)).get(60) == 9
        assert p.map_async(_square, [1, 2]).get(60) == [1, 4]
        assert p.starmap(pow, [(2, 3)]) == [8]
        assert p.starmap_async(pow, [(3, 2)]).get(60) == [9]
        assert list(p.imap(_square, range(3))) == [0, 1, 4]
        assert sorted(p.imap_unordered(_square, range(3))) == [0, 1, 4]
    p = manager.Pool(1)
    p.close()
    p.join()


# ------------------------------------------------------------ children


def _child_updates(d, lst, ns, lock, q, ev):
    with lock:
        d["child"] = os.getpid()
        lst.append("from child")
        ns.count += 1
    q.put(str(d))
    ev.set()


def test_proxies_passed_to_children(manager):
    ctx = manager._test_ctx
    d = manager.dict()
    lst = manager.list()
    ns = manager.Namespace(count=0)
    lock = manager.Lock()
    q = manager.Queue()
    ev = manager.Event()
    procs = [
        ctx.Process(target=_child_updates, args=(d, lst, ns, lock, q, ev))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert ev.is_set()
    assert lst[:] == ["from child"] * 2
    assert ns.count == 2
    assert d["child"] in [p.pid for p in procs]
    assert q.get(timeout=10).startswith("{'child': ")


def test_context_manager_start_connect_join(ctx):
    m = ctx.Manager()
    addr = m.address
    mod = _load(type(m).__module__)
    other = mod.SyncManager(address=addr, authkey=m._authkey)
    other.connect()
    d = other.dict(a=1)
    assert d["a"] == 1
    del d
    m.shutdown()
    m.join(10)
    with mod.SyncManager(ctx=ctx) as m2:
        assert m2.list([1])[:] == [1]
    with pytest.raises(ProcessError):
        m2.start()


def _init(marker):
    os.environ["MANAGER_INIT"] = marker


class _Greeter:
    def hello(self, name):
        return "hello " + name

    def fail(self):
        raise ZeroDivisionError("on purpose")

    def child(self):
        return _Greeter()

    def _hidden(self):
        return "hidden"


def _make_greeter():
    return _Greeter()


def _manager_env():
    return os.environ.get("MANAGER_INIT")


def _custom_manager_class(mod):
    class Custom(mod.BaseManager):
        pass

    Custom.register("Greeter", _make_greeter)
    Custom.register(
        "Greeter2",
        _make_greeter,
        exposed=("hello", "_hidden", "child", "fail"),
        method_to_typeid={"child": "Child"},
    )
    Custom.register("Child", create_method=False)
    Custom.register("env", _manager_env)
    Custom.register("Hidden", _make_greeter, create_method=False)
    return Custom


# Module-level so spawn children find them by name.
import multiprocessing.managers as _sm  # noqa: E402

import fastmp.managers as _fm  # noqa: E402

FastCustom = _custom_manager_class(_fm)
FastCustom.__qualname__ = FastCustom.__name__ = "FastCustom"
StdCustom = _custom_manager_class(_sm)
StdCustom.__qualname__ = StdCustom.__name__ = "StdCustom"


def test_register_every_argument(ctx):
    cls = (
        FastCustom
        if type(ctx).__module__.startswith("fastmp")
        else (StdCustom)
    )
    m = cls(ctx=ctx)
    m.start(_init, ("yes",))
    try:
        assert not hasattr(m, "Hidden")
        g = m.Greeter()
        assert g.hello("x") == "hello x"
        assert not hasattr(g, "_hidden")
        with pytest.raises(ZeroDivisionError, match="on purpose") as e:
            g.fail()
        if cls is FastCustom:
            # The server's traceback comes along, as the error's cause.
            cause = str(e.value.__cause__)
            assert "in fail" in cause and "ZeroDivisionError" in cause
            assert not hasattr(e.value, "_fastmp_traceback")
        g2 = m.Greeter2()
        assert g2._hidden() == "hidden"
        c = g2.child()
        assert c.hello("y") == "hello y"
        assert str(m.env()) == "'yes'"
        assert m.env()._getvalue() == "yes"
    finally:
        m.shutdown()
    assert m._process.exitcode == 0


def _serve(cls, address, authkey):
    m = cls(address=address, authkey=authkey)
    m.get_server().serve_forever()


def test_get_server_serve_forever(ctx):
    is_f = type(ctx).__module__.startswith("fastmp")
    cls = FastCustom if is_f else StdCustom
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = ("127.0.0.1", port)
    p = ctx.Process(target=_serve, args=(cls, addr, b"k3y"), daemon=True)
    p.start()
    try:
        m = cls(address=addr, authkey=b"k3y")
        deadline = time.monotonic() + 60
        while True:
            try:
                m.connect()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert m.Greeter().hello("tcp") == "hello tcp"
    finally:
        p.terminate()
        p.join(10)


# ------------------------------------------------------------ remote, TCP

STD_SERVER = """
import sys
from multiprocessing.managers import SyncManager
m = SyncManager(address=("127.0.0.1", 0), authkey=b"secret")
s = m.get_server()
print(s.address[1], flush=True)
s.serve_forever()
"""

STD_CLIENT = """
import multiprocessing, sys
from multiprocessing.managers import SyncManager
# Proxies rebuilt from values (lst[0]) use the process's key, as always
# with the stdlib.
multiprocessing.current_process().authkey = b"secret"
m = SyncManager(address=("127.0.0.1", int(sys.argv[1])), authkey=b"secret")
m.connect()
d = m.dict(a=1)
d["b"] = [1, 2]
lst = m.list([d])
lst[0]["c"] = 3
ns = m.Namespace(x=1)
ns.x += 1
lock = m.Lock()
with lock:
    pass
try:
    d["missing"]
except KeyError as e:
    print("KeyError", e)
print(sorted(d.copy().items()), ns.x, len(lst), str(lst[0]))
# iter(): the server sends a new proxy's token ('#PROXY').
print(list(iter(d)))
"""


def _peer_pythons():
    """The stdlib peers: this interpreter, then every other CPython >= 3.9
    found on PATH (python3.N) or under pyenv, one per version: both
    handshake dialects (the legacy one before 3.12, the digest-prefixed
    one from 3.12) wherever the machine has both."""
    import glob
    import shutil

    found = {sys.version_info[:2]: sys.executable}
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.%d" % m) for m in range(9, 15)]
    candidates += sorted(
        glob.glob(os.path.join(root, "versions/*/bin/python3"))
    )
    for exe in filter(None, candidates):
        try:
            out = subprocess.run(
                [
                    exe,
                    "-I",
                    "-c",
                    "import sys, multiprocessing.managers;"
                    "print(sys.implementation.name, *sys.version_info[:2])",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        if len(out) == 3 and out[0] == "cpython":
            version = (int(out[1]), int(out[2]))
            if version >= (3, 9):
                found.setdefault(version, exe)
    return sorted(found.items())


_PEERS = _peer_pythons()
PEERS = [exe for _v, exe in _PEERS]
PEER_IDS = ["%d.%d" % v for v, _exe in _PEERS]


def _std(code, *args, python=sys.executable, **kw):
    # An interpreter that cannot import fastmp (-I: no PYTHONPATH, no
    # working directory on sys.path).
    return subprocess.Popen(
        [python, "-I", "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        **kw,
    )


def _fast_server(port_holder, handshake_timeout=None):
    import fastmp.managers

    if handshake_timeout is not None:
        fastmp.managers.Server.handshake_timeout = handshake_timeout

    m = fastmp.managers.SyncManager(
        address=("127.0.0.1", 0), authkey=b"secret"
    )
    s = m.get_server()
    port_holder.put(s.address[1])
    s.serve_forever()


@pytest.fixture
def fastmp_tcp_server():
    import fastmp

    ctx = fastmp.get_context("fork")
    q = ctx.SimpleQueue()
    p = ctx.Process(target=_fast_server, args=(q,), daemon=True)
    p.start()
    port = q.get()
    yield p, port
    p.kill()
    p.join(10)


@pytest.mark.parametrize("python", PEERS, ids=PEER_IDS)
def test_stdlib_client_fastmp_server(fastmp_tcp_server, python):
    _p, port = fastmp_tcp_server
    r = _std(STD_CLIENT, port, python=python)
    out, err = r.communicate(timeout=120)
    assert r.returncode == 0, err
    assert out.splitlines() == [
        "KeyError 'missing'",
        "[('a', 1), ('b', [1, 2]), ('c', 3)] 2 1 {'a': 1, 'b': [1, 2], "
        "'c': 3}",
        "['a', 'b', 'c']",
    ]


@pytest.mark.parametrize("python", PEERS, ids=PEER_IDS)
def test_fastmp_client_stdlib_server(python):
    import fastmp.managers

    srv = _std(STD_SERVER, python=python)
    try:
        port = int(srv.stdout.readline())
        m = fastmp.managers.SyncManager(
            address=("127.0.0.1", port), authkey=b"secret"
        )
        m.connect()
        d = m.dict(a=1)
        d["b"] = 2
        # (A proxy travels by its class's name: a peer that cannot import
        # fastmp cannot hold fastmp's proxies inside its values.)
        lst = m.list([1, [2]])
        lst.append(3)
        assert lst[:] == [1, [2], 3]
        d["c"] = 3
        assert d.copy() == {"a": 1, "b": 2, "c": 3}
        assert type(d) is fastmp.managers.DictProxy
        with pytest.raises(KeyError):
            d["missing"]
        lock = m.Lock()
        assert lock.acquire() and not lock.acquire(False)
        lock.release()
        assert str(d) == "{'a': 1, 'b': 2, 'c': 3}"
        it = iter(d)  # an Iterator proxy: a '#PROXY' reply
        assert list(it) == ["a", "b", "c"]
        del d, lst, it, lock
        gc.collect()
    finally:
        srv.kill()
        srv.communicate()


def test_wrong_key(fastmp_tcp_server):
    import fastmp
    import fastmp.managers

    _p, port = fastmp_tcp_server
    m = fastmp.managers.SyncManager(
        address=("127.0.0.1", port), authkey=b"wrong"
    )
    with pytest.raises(fastmp.AuthenticationError):
        m.connect()
    # A stdlib client with the wrong key too.
    r = _std(STD_CLIENT.replace('b"secret"', 'b"nope"'), port)
    out, err = r.communicate(timeout=120)
    assert r.returncode != 0 and "AuthenticationError" in err
    # The server still serves the right key.
    ok = fastmp.managers.SyncManager(
        address=("127.0.0.1", port), authkey=b"secret"
    )
    ok.connect()
    assert ok.dict(a=1)["a"] == 1


def test_wrong_key_against_stdlib_server():
    import fastmp
    import fastmp.managers

    srv = _std(STD_SERVER)
    try:
        port = int(srv.stdout.readline())
        m = fastmp.managers.SyncManager(
            address=("127.0.0.1", port), authkey=b"wrong"
        )
        with pytest.raises(fastmp.AuthenticationError):
            m.connect()
    finally:
        srv.kill()
        srv.communicate()


def _raw(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _hung_up(s):
    # True when the server closed the connection (an orderly end, or a
    # reset because our bytes were left unread); False if it is open.
    try:
        while True:
            if s.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_garbage_half_open_and_vanished_clients(fastmp_tcp_server):
    import fastmp.managers

    _p, port = fastmp_tcp_server
    m = fastmp.managers.SyncManager(
        address=("127.0.0.1", port), authkey=b"secret"
    )
    m.connect()
    d = m.dict(n=0)
    socks = []
    # Plain garbage instead of a challenge answer.
    s = _raw(port)
    s.sendall(os.urandom(4096))
    socks.append(s)
    # A frame header announcing 2 GiB: the server reads at most 256 bytes
    # before authentication and hangs up.
    s = _raw(port)
    s.recv(100)
    s.sendall(b"\x7f\xff\xff\xff" + b"x" * 100)
    assert _hung_up(s)
    socks.append(s)
    # A pickle that would run code if loaded before authentication.
    s = _raw(port)
    s.recv(100)
    evil = b"cos\nsystem\n(S'touch /tmp/fastmp-pwned'\ntR."
    s.sendall(len(evil).to_bytes(4, "big") + evil)
    socks.append(s)
    # Half-open: connects and never says anything; vanishes mid-frame.
    socks.append(_raw(port))
    s = _raw(port)
    s.sendall(b"\x00\x00\x01")
    s.close()
    for i in range(50):
        d["n"] = i
    assert d["n"] == 49
    assert not os.path.exists("/tmp/fastmp-pwned")
    # Garbage and the unauthenticated pickle were hung up on.
    assert _hung_up(socks[0]) and _hung_up(socks[2])
    for s in socks:
        s.close()
    assert m.list([1, 2])[:] == [1, 2]


def test_silent_client_is_dropped_after_the_handshake_timeout():
    import fastmp

    ctx = fastmp.get_context("fork")
    q = ctx.SimpleQueue()
    p = ctx.Process(target=_fast_server, args=(q, 0.5), daemon=True)
    p.start()
    try:
        port = q.get()
        s = _raw(port)
        t0 = time.monotonic()
        assert s.recv(4096).startswith(b"\x00")  # the challenge's frame
        assert _hung_up(s)  # never answered: dropped
        assert time.monotonic() - t0 < 5
        s.close()
    finally:
        p.kill()
        p.join(10)


def test_tcp_nodelay_both_ends(fastmp_tcp_server):
    import fastmp.managers

    _p, port = fastmp_tcp_server
    m = fastmp.managers.SyncManager(
        address=("127.0.0.1", port), authkey=b"secret"
    )
    m.connect()
    d = m.dict()
    d["a"] = 1
    s = socket.socket(fileno=d._tls.connection.fileno())
    try:
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        s.detach()
    # The server's end: what its listener accepts.
    listener = fastmp.managers.listener_client["pickle"][0]
    lst = listener(("127.0.0.1", 0))
    c = socket.create_connection(lst.address)
    conn = lst.accept()
    s = socket.socket(fileno=conn.fileno())
    try:
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        s.detach()
        conn.close()
        c.close()
        lst.close()


def test_authenticated_garbage_is_an_error_not_a_crash(manager):
    # A client that got through the handshake sends a frame that is no
    # pickle: it gets a traceback back, and the server keeps serving.
    d = manager.dict(a=1)
    # (a call through the server: this thread's connection is now open)
    assert d._callmethod("__getitem__", ("a",)) == 1
    conn = d._tls.connection
    conn.send_bytes(b"not a pickle")
    kind, result = conn.recv()
    assert kind == "#TRACEBACK" and isinstance(result, str)
    assert d._callmethod("__getitem__", ("a",)) == 1
    assert d["a"] == 1


def _tcp_manager(mp):
    managers = importlib.import_module(mp.__name__ + ".managers")
    m = managers.SyncManager(
        address=("127.0.0.1", 0),
        authkey=b"secret",
        ctx=mp.get_context("fork"),
    )
    m.start()
    return m


def test_tcp_requests_in_pieces_and_big_ones(mp):
    # Over TCP, a request may reach the server a few bytes at a time (its
    # header split, its body split), a reply may be far larger than one
    # segment, and requests of every size alternate: each is read whole,
    # and the stream stays in step.
    m = _tcp_manager(mp)
    try:
        d = m.dict()
        d["a"] = 1
        conn = d._tls.connection
        payload = pickle.dumps((d._id, "__getitem__", ("a",), {}))
        frame = len(payload).to_bytes(4, "big") + payload
        for cut in (1, 2, 3, 4, 5, len(frame) - 1):
            os.write(conn.fileno(), frame[:cut])
            time.sleep(0.02)
            os.write(conn.fileno(), frame[cut:])
            assert conn.recv() == ("#RETURN", 1)
        big = b"x" * (3 << 20)
        d["big"] = big
        assert d["big"] == big
        for i in range(200):
            d["v"] = "y" * (i * 97)
            assert d["v"] == "y" * (i * 97)
        assert d["a"] == 1
    finally:
        m.shutdown()


def test_tcp_error_from_the_referent(mp):
    # The referent's own exception reaches the caller, type and message,
    # and the connection stays usable.
    m = _tcp_manager(mp)
    try:
        d = m.dict()
        with pytest.raises(KeyError, match="missing"):
            d["missing"]
        lst = m.list([1])
        with pytest.raises(IndexError):
            lst[5]
        d["k"] = 2
        assert d["k"] == 2
    finally:
        m.shutdown()


@pytest.mark.timeout(120)
def test_tcp_bad_header_after_the_handshake(mp):
    # An authenticated client whose next frame header is no length a
    # sender writes (negative), followed by junk: the server does not
    # wedge, and serves every other connection as before.
    m = _tcp_manager(mp)
    try:
        d = m.dict()
        d["a"] = 1  # (this thread's connection is now open)
        conn = d._tls.connection
        os.write(conn.fileno(), b"\x80\x00\x00\x01" + os.urandom(64))
        # (another thread: proxies of one address share a thread's
        # connection)
        got = []

        def other():
            for i in range(20):
                d2 = m.dict(n=i)
                got.append(d2["n"])

        t = threading.Thread(target=other)
        t.start()
        t.join(60)
        assert got == list(range(20))
        del d
    finally:
        m.shutdown()


_BLOCKED_CLIENT = textwrap.dedent("""
    import importlib, sys, time
    mp = importlib.import_module(sys.argv[1])
    managers = importlib.import_module(sys.argv[1] + ".managers")
    m = managers.SyncManager(
        address=("127.0.0.1", 0), authkey=b"k", ctx=mp.get_context("fork")
    )
    m.start()
    ev = m.Event()
    print("READY", flush=True)
    t = time.monotonic()
    try:
        ev.wait()
    except KeyboardInterrupt:
        print("KI %.3f" % (time.monotonic() - t), flush=True)
    m.shutdown()
    """)


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_a_client_waiting_for_its_reply(mp):
    # A TCP manager's client blocked in a call (the server's Event.wait):
    # SIGINT raises KeyboardInterrupt in it at once.
    p = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_CLIENT, mp.__name__],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.5)
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        line = p.stdout.readline()
        assert line.startswith("KI"), line
        assert time.monotonic() - sent < 1.0  # generous for a loaded machine
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _hammer(d, ready):
    ready.set()
    i = 0
    while True:
        d["k"] = i
        d["big"] = list(range(i % 1000))
        i += 1


def test_client_sigkilled_mid_update(ctx):
    with ctx.Manager() as m:
        d = m.dict(k=0)
        ready = m.Event()
        p = ctx.Process(target=_hammer, args=(d, ready))
        p.start()
        assert ready.wait(60)
        time.sleep(0.2)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        # The dict is whole and the server keeps serving.
        assert isinstance(d["k"], int)
        assert d["big"] == list(range(len(d["big"])))
        d["k"] = "after"
        assert d["k"] == "after"
        assert m.list([3])[:] == [3]


# ------------------------------------------------------------ leaks


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _server_fds(m):
    return len(os.listdir("/proc/%d/fd" % m._process.pid))


def _shm_names(m):
    # The manager's own segments (fastmp's containers: fmpm_<address>_).
    import hashlib

    digest = hashlib.sha1(repr(m.address).encode()).hexdigest()[:16]
    prefix = "fmpm_%s_" % digest
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def _server_rss_kib(m):
    with open("/proc/%d/status" % m._process.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_no_leak_creating_and_dropping_proxies(mp):
    ctx = mp.get_context("fork")
    n = 10000 if mp.__name__ == "fastmp" else 2000
    with ctx.Manager() as m:
        d = m.dict()
        d["warm"] = 1
        m.list()

        def churn(count):
            for i in range(count):
                lst = m.list([i])
                if i % 2:
                    d["x"] = lst[0]
                del lst
            gc.collect()

        churn(n // 10)  # warm up: the server's threads, allocator pools
        fds0, sfds0 = _fds(), _server_fds(m)
        rss0 = _server_rss_kib(m)
        shm0 = _shm_names(m)
        churn(n)
        assert m._number_of_objects() == 1  # d only
        assert _shm_names(m) == shm0
        assert _server_rss_kib(m) - rss0 < 8 * 1024
        assert _fds() <= fds0
        # Server-side connection threads end as their clients hang up.
        deadline = time.monotonic() + 10
        while _server_fds(m) > sfds0 + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _server_fds(m) <= sfds0 + 2


def test_manager_threads_connections(manager):
    # Each thread has its own connection to the server.
    d = manager.dict()
    errors = []

    def work(k):
        try:
            for i in range(50):
                d[k] = i
                assert d[k] == i
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and d.copy() == {0: 49, 1: 49, 2: 49, 3: 49}


def test_python_m_fastmp_manager_script(tmp_path):
    # An unchanged script using Manager under python -m fastmp, with no
    # fallback to the stdlib allowed.
    r = run_fastmp(
        tmp_path,
        """
        import multiprocessing as mp

        def work(d, i):
            d[i] = i * i

        if __name__ == "__main__":
            mp.set_start_method("spawn")
            with mp.Manager() as m:
                d = m.dict()
                ps = [mp.Process(target=work, args=(d, i)) for i in range(3)]
                for p in ps: p.start()
                for p in ps: p.join()
                print(type(m).__module__, sorted(d.items()))
        """,
        env={"FASTMP_NO_FALLBACK": "1"},
        cwd=TESTS,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "fastmp.managers [(0, 0), (1, 1), (2, 4)]"
