"""Manager containers served without a round trip (fastmp._manager_fast):
the same operations give the same results, exceptions and reprs as the
stdlib's round trips, under every start method and across hash seeds;
concurrent writers lose nothing; a writer killed mid-update leaves the
container consistent; no shared memory is left behind by any exit path;
what cannot use the fast path (TCP managers, custom types) goes through
the server.
"""

import gc
import os
import pickle
import queue
import signal
import sys
import time

import pytest
from support import IMPLS, METHODS


def _load(impl):
    import importlib

    return importlib.import_module(impl)


@pytest.fixture(
    scope="module",
    params=[(i, m) for i in IMPLS for m in METHODS],
    ids=lambda p: "%s-%s" % p,
)
def manager(request):
    impl, method = request.param
    ctx = _load(impl).get_context(method)
    m = ctx.Manager()
    m._test_ctx = ctx
    m._test_impl = impl
    yield m
    m.shutdown()
    m.join()


@pytest.fixture(scope="module")
def fmanager():
    """One fastmp manager (fork) for the fastmp-only tests."""
    import fastmp

    m = fastmp.get_context("fork").Manager()
    yield m
    m.shutdown()
    m.join()


# A manager Queue is replicated where queue.Queue has no shutdown()
# (before Python 3.13); there the server serves it.
QUEUE_REPLICATED = not hasattr(queue.Queue, "shutdown")
fast_queue = pytest.mark.skipif(
    not QUEUE_REPLICATED,
    reason="queue.Queue.shutdown (3.13+): the server serves manager queues",
)


def _segments(address=None):
    names = [n for n in os.listdir("/dev/shm") if n.startswith("fmpm_")]
    if address is None:
        return set(names)
    from fastmp._manager_fast import segment_names

    prefix = segment_names(address, "x")[0][1:].rsplit("_", 2)[0]
    return {n for n in names if n.startswith(prefix)}


def _outcome(fn):
    """(result or None, exception type name and args or None)."""
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001
        return ("raise", type(e).__name__, e.args)


# ------------------------------------------------------------ parity


def _dict_script(d):
    out = []
    r = out.append
    d[1] = "int"
    d[1.0] = "float"
    d[True] = "bool"
    r(_outcome(lambda: d.copy()))
    r(_outcome(lambda: (d[1], d[1.0], d[True], len(d))))
    d["s"] = [1, 2]
    d[(1, "t")] = {"x": None}
    d[b"b"] = 2.5
    r(_outcome(lambda: list(d.keys())))
    r(_outcome(lambda: list(d.values())))
    r(_outcome(lambda: list(d.items())))
    r(_outcome(lambda: list(d)))
    r(_outcome(lambda: str(d)))
    r(_outcome(lambda: d["missing"]))
    r(_outcome(lambda: d.__delitem__("missing")))
    r(_outcome(lambda: d.pop("missing")))
    r(_outcome(lambda: d.pop("missing", 7)))
    r(_outcome(lambda: d.pop("s")))
    r(_outcome(lambda: d.setdefault("n", [])))
    r(_outcome(lambda: d.setdefault("n", [5])))
    r(_outcome(lambda: d.get("n")))
    r(_outcome(lambda: d.get("zz", "dflt")))
    r(_outcome(lambda: d.update([("u", 1)], v=2)))
    r(_outcome(lambda: d.update(1)))
    r(_outcome(lambda: d.update([(1, 2, 3)])))
    r(_outcome(lambda: d.__setitem__([], 1)))
    r(_outcome(lambda: d[[]]))
    r(_outcome(lambda: d.popitem()))
    r(_outcome(lambda: 1 in d))
    r(_outcome(lambda: [] in d))
    r(_outcome(lambda: d == d.copy()))
    r(_outcome(lambda: d.copy() == dict(d.items())))
    r(_outcome(lambda: d.clear()))
    r(_outcome(lambda: d.popitem()))
    r(_outcome(lambda: (len(d), str(d))))
    return out


def test_dict_parity(manager):
    got = _dict_script(manager.dict())
    if manager._test_impl == "fastmp":
        assert manager.dict()._r is not None  # (the fast path ran)
    std = _dict_script(
        _Plain(dict())
    )  # the stdlib's manager gives exactly what a plain dict gives
    assert got == std


class _Plain:
    """A plain container behind the proxy API the scripts use (what the
    stdlib's server does with each call: a copy in, a copy out)."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        meth = getattr(self._obj, name)

        def call(*args, **kwds):
            args, kwds = pickle.loads(pickle.dumps((args, kwds)))
            res = meth(*args, **kwds)
            if type(res).__name__.startswith("dict_"):
                res = list(res)
            return pickle.loads(pickle.dumps(res))

        return call

    def __getitem__(self, k):
        return self.__getattr__("__getitem__")(k)

    def __setitem__(self, k, v):
        return self.__getattr__("__setitem__")(k, v)

    def __delitem__(self, k):
        return self.__getattr__("__delitem__")(k)

    def __contains__(self, k):
        return self.__getattr__("__contains__")(k)

    def __len__(self):
        return self.__getattr__("__len__")()

    def __iter__(self):
        return iter(list(self._obj))

    def __str__(self):
        return str(self._obj)

    def __eq__(self, other):
        return self is other


def _list_script(a):
    out = []
    r = out.append
    a.append(1)
    a.append([2])
    a.extend(["three", 4.0])
    r(_outcome(lambda: a[:]))
    r(_outcome(lambda: (a[0], a[-1], a[1:3], len(a))))
    r(_outcome(lambda: a[10]))
    r(_outcome(lambda: a["x"]))
    r(_outcome(lambda: a.__setitem__(-1, "neg")))
    r(_outcome(lambda: a.__setitem__(9, 0)))
    r(_outcome(lambda: a.__setitem__(slice(0, 1), ["s0", "s1"])))
    r(_outcome(lambda: a.__delitem__(-2)))
    r(_outcome(lambda: a.__delitem__(99)))
    r(_outcome(lambda: a.pop()))
    r(_outcome(lambda: a.pop(0)))
    r(_outcome(lambda: a.pop(50)))
    r(_outcome(lambda: a.insert(1, "ins")))
    r(_outcome(lambda: a.remove("nope")))
    r(_outcome(lambda: a.index("nope")))
    r(_outcome(lambda: a.count("ins")))
    r(_outcome(lambda: a.sort()))
    r(_outcome(lambda: a[:]))
    r(_outcome(lambda: a.append(3)))
    r(_outcome(lambda: a.sort(key=str, reverse=True)))
    r(_outcome(lambda: a.reverse()))
    r(_outcome(lambda: (a + [9], a * 2, 2 * a, "ins" in a, str(a))))
    r(_outcome(lambda: a.__add__(3)))
    r(_outcome(lambda: list(iter(a))))
    r(_outcome(lambda: a.__imul__(2)))
    r(_outcome(lambda: a[:]))
    r(_outcome(lambda: a.__delitem__(slice(None))))
    r(_outcome(lambda: (a.pop(), len(a))))
    return out


def test_list_parity(manager):
    a = manager.list()
    if manager._test_impl == "fastmp":
        assert a._r is not None
    got = _list_script(a)
    std = _list_script(_PlainList([]))
    # (the in-place operators return the proxy itself there)
    got = [g for i, g in enumerate(got) if i != 24]
    std = [s for i, s in enumerate(std) if i != 24]
    assert got == std


class _PlainList(_Plain):
    def __add__(self, o):
        return self.__getattr__("__add__")(o)

    def __mul__(self, o):
        return self.__getattr__("__mul__")(o)

    def __rmul__(self, o):
        return self.__getattr__("__rmul__")(o)

    def __getitem__(self, k):
        res = self._obj[k]
        return pickle.loads(pickle.dumps(res))


def test_namespace_value_parity(manager):
    ns = manager.Namespace(a=1, _hidden=2)
    ns.b = [1]
    ns.c = "x"
    del ns.c
    assert (ns.a, ns.b) == (1, [1])
    assert str(ns) == "Namespace(a=1, b=[1])"
    with pytest.raises(AttributeError) as e:
        assert ns.c
    assert "'c'" in str(e.value)
    with pytest.raises(AttributeError):
        del ns.nope
    b = ns.b
    b.append(2)
    assert ns.b == [1]  # a copy
    v = manager.Value("d", 1.5)
    assert v.value == 1.5 and v.get() == 1.5
    v.value = {"k": "v"}
    assert v.get() == {"k": "v"}
    assert str(v) == "Value('d', {'k': 'v'})"
    got = v._getvalue()
    assert (type(got).__name__, got.value) == ("Value", {"k": "v"})
    assert ns._getvalue().a == 1
    if manager._test_impl == "fastmp":
        assert ns._r is not None and v._r is not None


# ------------------------------------------------------------ processes


def _child_uses(d, ns, lst, v, out):
    # (under spawn this interpreter has its own str hash seed)
    out.put(
        (
            sys.flags.hash_randomization,
            hash("key-a"),
            d["key-a"],
            sorted(map(str, d.keys())),
            d[1.0],
            ns.x,
            lst[:],
            v.value,
        )
    )
    d["key-child"] = "from child"
    d[True] = "child bool"
    del d["key-b"]
    ns.y = "child"
    lst.append("child")
    v.value = -1


def test_children_share_across_hash_seeds(manager):
    d = manager.dict({"key-a": 1, "key-b": 2, 1: "one"})
    ns = manager.Namespace(x=1)
    lst = manager.list([1])
    v = manager.Value("i", 5)
    ctx = manager._test_ctx
    out = ctx.Queue()
    seeds = set()
    for _ in range(2):
        p = ctx.Process(target=_child_uses, args=(d, ns, lst, v, out))
        p.start()
        got = out.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0
        seeds.add(got[1])
        assert got[2] == 1 and got[4] in ("one", "child bool")
        assert got[5] == 1
        d["key-b"] = 2
    assert d.copy() == {
        "key-a": 1,
        "key-b": 2,
        1: "child bool",
        "key-child": "from child",
    }
    assert list(d.keys()) == ["key-a", 1, "key-child", "key-b"]
    assert ns.y == "child" and lst[:] == [1, "child", "child"]
    assert v.value == -1
    if ctx.get_start_method() == "spawn":
        assert len(seeds | {hash("key-a")}) > 1  # (really other seeds)


def _increment(d, lock, n):
    for _ in range(n):
        with lock:
            d["n"] = d["n"] + 1
        d["own-%d" % os.getpid()] = d.get("own-%d" % os.getpid(), 0) + 1


def test_concurrent_writers_lose_nothing(manager):
    d = manager.dict(n=0)
    lock = manager.Lock()
    ctx = manager._test_ctx
    n = 200
    ps = [ctx.Process(target=_increment, args=(d, lock, n)) for _ in range(4)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    assert d["n"] == 4 * n
    own = [v for k, v in d.items() if k.startswith("own-")]
    assert own == [n] * 4


# ------------------------------------------------------------ crashes


def _stall_holding(d):
    from fastmp import _fastmp

    # The next owner-lock acquisition in this process stops it (SIGSTOP)
    # while it holds the container's log lock, mid-update.
    _fastmp._owner_stall(-1)
    d["half"] = "never seen"


def test_writer_killed_holding_the_log_lock(fmanager):
    import fastmp

    d = fmanager.dict(a=1)
    ctx = fastmp.get_context("fork")
    p = ctx.Process(target=_stall_holding, args=(d,))
    p.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open("/proc/%d/stat" % p.pid) as f:
            if f.read().split(")")[-1].split()[0] == "T":
                break
        time.sleep(0.01)
    else:
        pytest.fail("the writer never stopped")
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    # The dead holder's lock is taken over; its update never happened.
    d["b"] = 2
    assert d.copy() == {"a": 1, "b": 2}
    assert d._callmethod("copy") == {"a": 1, "b": 2}


def _hammer(d, ready):
    ready.set()
    i = 0
    while True:
        d["k"] = i
        d["big"] = list(range(i % 500))
        d.update(x=i, y=-i)
        i += 1


def test_writer_sigkilled_mid_update_many_times(fmanager):
    import fastmp

    ctx = fastmp.get_context("fork")
    d = fmanager.dict(k=0)
    for _ in range(5):
        ready = ctx.Event()
        p = ctx.Process(target=_hammer, args=(d, ready))
        p.start()
        assert ready.wait(30)
        time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        v = d.copy()
        assert v["big"] == list(range(len(v["big"])))
        assert v.get("x", 0) == -v.get("y", 0)
        d["k"] = "after"
        assert d._callmethod("__getitem__", ("k",)) == "after"


def test_corrupt_log_is_an_error_not_a_hang(fmanager):
    from fastmp import _fastmp
    from fastmp._manager_fast import segment_names

    d = fmanager.dict(a=1)
    names = segment_names(d._token.address, d._token.id)
    dmap = _fastmp._shm_open(names[0], False, 0, 0o600)
    mv = memoryview(dmap)
    try:
        st = int.from_bytes(mv[16:24], sys.byteorder)
        # A commit word whose tail lies past the log's end.
        mv[16:24] = ((st >> 40 << 40) | ((1 << 40) - 8)).to_bytes(
            8, sys.byteorder
        )
        with pytest.raises(ValueError, match="corrupt"):
            d["a"]
        # Entries with lengths pointing out of the log.
        mv[16:24] = st.to_bytes(8, sys.byteorder)
    finally:
        mv.release()
    assert d["a"] == 1


# ------------------------------------------------------------ cleanup


def _exit_kind(d, how):
    d["from child"] = how
    if how == "os._exit":
        os._exit(0)
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("method", METHODS)
def test_no_shared_memory_left_behind(method):
    import fastmp

    ctx = fastmp.get_context(method)
    m = ctx.Manager()
    d = m.dict(a=1)
    lst = m.list()
    ns = m.Namespace()
    v = m.Value("i", 0)
    address = m.address
    assert len(_segments(address)) == 4 * 3
    lst.append(1)
    del lst
    gc.collect()
    assert len(_segments(address)) == 3 * 3  # (the list's went with it)
    # (A fork child that dies without running finalizers keeps its
    # references in the server, as the stdlib's does, until shutdown.)
    for how in ("return", "os._exit", "SIGKILL"):
        p = ctx.Process(target=_exit_kind, args=(d, how))
        p.start()
        p.join(60)
        assert d["from child"] == how
    ns.x = 1
    v.value = 1
    m.shutdown()
    m.join()
    assert _segments(address) == set()
    del d, ns, v


def test_no_shared_memory_left_by_a_killed_server():
    import fastmp
    from fastmp import shared_memory

    # This process has a tracker of its own (it created a segment): the
    # fork server's segments must not wait for it.
    own = shared_memory.SharedMemory(create=True, size=16)
    m = fastmp.get_context("fork").Manager()
    d = m.dict(a=1)
    address = m.address
    assert len(_segments(address)) == 3
    os.kill(m._process.pid, signal.SIGKILL)
    m._process.join(30)
    # The server's shared-memory tracker unlinks what it created.
    deadline = time.monotonic() + 30
    while _segments(address) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _segments(address) == set()
    assert d["a"] == 1  # (this process's mapping still works)
    m.shutdown()
    own.close()
    own.unlink()


def test_many_live_containers_hold_no_fds(fmanager):
    fds = len(os.listdir("/proc/self/fd"))
    live = [fmanager.dict(i=i) for i in range(300)]
    assert all(d._r is not None for d in live)
    assert len(os.listdir("/proc/self/fd")) < fds + 20
    server_fds = len(os.listdir("/proc/%d/fd" % fmanager._process.pid))
    assert server_fds < 300
    del live


def test_many_proxies_leave_nothing(fmanager):
    before = _segments(fmanager.address)
    for i in range(300):
        d = fmanager.dict(i=i)
        d["x"] = i
        del d
    gc.collect()
    assert _segments(fmanager.address) == before
    assert fmanager._number_of_objects() == len(before) // 3


# ------------------------------------------------------------ via server


def test_proxy_values_go_through_the_server(fmanager):
    inner = fmanager.dict(water=1)
    outer = fmanager.dict()
    outer["inner"] = inner
    lst = fmanager.list()
    lst.append(inner)
    del inner
    gc.collect()
    assert outer["inner"]["water"] == 1
    outer["inner"]["more"] = 2
    assert lst[0]["more"] == 2


def test_tcp_manager_goes_through_the_server():
    import fastmp.managers

    m = fastmp.managers.SyncManager(address=("127.0.0.1", 0), authkey=b"k")
    m.start()
    try:
        c = fastmp.managers.SyncManager(address=m.address, authkey=b"k")
        c.connect()
        d = c.dict(a=1)
        assert d._r is None
        d[1] = 2
        d[True] = 3
        assert d.copy() == {"a": 1, 1: 3}
        ns = c.Namespace(x=1)
        assert ns._r is None and ns.x == 1
    finally:
        m.shutdown()
        m.join()


def test_custom_registration_goes_through_the_server():
    import collections

    import fastmp.managers

    class M(fastmp.managers.BaseManager):
        pass

    M.register("dict", collections.OrderedDict, fastmp.managers.DictProxy)
    with M() as m:
        d = m.dict()
        assert d._r is None
        d["a"] = 1
        assert d.copy() == {"a": 1}


class _ReentrantKey:
    target = None

    def __hash__(self):
        return 1

    def __eq__(self, other):
        _ReentrantKey.target["inner"] = 1  # (mid-operation here)
        return True


def test_reentrant_use_from_a_key_is_an_error(fmanager):
    d = fmanager.dict()
    _ReentrantKey.target = d
    d[_ReentrantKey()] = 1
    with pytest.raises(RuntimeError, match="inside one of its own"):
        d[_ReentrantKey()] = 2
    d["after"] = 3
    assert len(d) == 2


# ------------------------------------------------------------ Lock


def _release_other(lock):
    lock.release()  # (a manager Lock: any process may release it)


def _outcomes_lock(lock):
    out = [str(lock).split(" object")[0]]
    out.append(_outcome(lock.release))
    out.append(_outcome(lambda: lock.acquire(False, 1)))
    out.append(_outcome(lambda: lock.acquire(True, -2)))
    out.append(_outcome(lambda: lock.acquire(True, "x")))
    out.append(lock.acquire())
    out.append(str(lock).split(" object")[0])
    out.append((lock.acquire(False), lock.acquire(True, 0.05)))
    return out


def test_lock_parity(manager):
    lock = manager.Lock()
    got = _outcomes_lock(lock)
    ctx = manager._test_ctx
    p = ctx.Process(target=_release_other, args=(lock,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    got.append(lock.acquire(True, 10))
    lock.release()
    with lock:
        got.append(lock.acquire(False))
    got.append(lock.acquire(False))
    lock.release()
    import threading

    ref = _outcomes_lock(threading.Lock())
    assert got == ref + [True, False, True]
    if manager._test_impl == "fastmp":
        assert lock._r is not None


def _die_holding(lock):
    lock.acquire()
    os._exit(0)


def test_lock_dead_holder_taken_over(fmanager):
    import fastmp

    lock = fmanager.Lock()
    p = fastmp.get_context("fork").Process(target=_die_holding, args=(lock,))
    p.start()
    p.join(30)
    with pytest.warns(fastmp.AbandonedLockWarning):
        assert lock.acquire(True, 30)
    lock.release()


# ------------------------------------------------------------ set


def _set_script(s):
    out = []
    r = out.append
    s.add(1)
    s.add(1.0)
    s.add(True)
    s.add("str")
    s.update({"u", (1, 2)}, ["v"])
    r(_outcome(lambda: (len(s), 1 in s, "u" in s, [] in s)))
    r(_outcome(lambda: s.remove("nope")))
    r(_outcome(lambda: s.discard("nope")))
    r(_outcome(lambda: s.add([])))
    r(_outcome(lambda: sorted(map(repr, s.copy()))))
    r(_outcome(lambda: sorted(map(repr, s | {9}))))
    r(_outcome(lambda: sorted(map(repr, s & {1, "u"}))))
    r(_outcome(lambda: sorted(map(repr, s - {1}))))
    r(_outcome(lambda: sorted(map(repr, s ^ {1, 7}))))
    r(_outcome(lambda: (s <= {1}, s >= {1}, s < s.copy(), s > {1})))
    r(_outcome(lambda: s.issubset([1]) or s.issuperset([1])))
    r(_outcome(lambda: s.intersection_update({1, "u", "v", "w"})))
    r(_outcome(lambda: sorted(map(repr, s.copy()))))
    r(_outcome(lambda: s.difference_update(["v"])))
    r(_outcome(lambda: s.symmetric_difference_update(["z", 1])))
    r(_outcome(lambda: sorted(map(repr, s.copy()))))
    r(_outcome(lambda: s.update(5)))
    r(_outcome(lambda: sorted(map(repr, [s.pop(), s.pop()]))))
    r(_outcome(lambda: s.pop()))
    r(_outcome(lambda: (s.clear(), len(s))))
    return out


def test_set_parity(manager):
    if not hasattr(manager, "set"):
        pytest.skip("the stdlib's managers have set from 3.14")
    s = manager.set()
    if manager._test_impl == "fastmp":
        assert s._r is not None
    assert _set_script(s) == _set_script(_PlainSet(set()))


class _PlainSet(_Plain):
    def __or__(self, o):
        return self.__getattr__("__or__")(o)

    def __and__(self, o):
        return self.__getattr__("__and__")(o)

    def __sub__(self, o):
        return self.__getattr__("__sub__")(o)

    def __xor__(self, o):
        return self.__getattr__("__xor__")(o)

    def __le__(self, o):
        return self.__getattr__("__le__")(o)

    def __ge__(self, o):
        return self.__getattr__("__ge__")(o)

    def __lt__(self, o):
        return self.__getattr__("__lt__")(o)

    def __gt__(self, o):
        return self.__getattr__("__gt__")(o)


def _child_set(s):
    s.discard("a")
    s.add("child-%d" % hash("x"))


def test_set_across_hash_seeds(manager):
    if not hasattr(manager, "set"):
        pytest.skip("the stdlib's managers have set from 3.14")
    s = manager.set(["a", "b", "c"])
    p = manager._test_ctx.Process(target=_child_set, args=(s,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert len(s) == 3 and "a" not in s and "b" in s and "c" in s
    (child,) = [e for e in s if e.startswith("child-")]
    if manager._test_ctx.get_start_method() == "spawn":
        assert child != "child-%d" % hash("x")  # (another seed there)


# ------------------------------------------------------------ Array


def _array_script(a):
    out = []
    r = out.append
    r(_outcome(lambda: (len(a), a[0], a[-1], list(a[:]), list(a[1:]))))
    r(_outcome(lambda: a[10]))
    r(_outcome(lambda: a.__setitem__(0, 7)))
    r(_outcome(lambda: a.__setitem__(-1, 9)))
    r(_outcome(lambda: a.__setitem__(5, 1)))
    r(_outcome(lambda: a.__setitem__(0, "x")))
    r(_outcome(lambda: a.__setitem__(0, 2**40)))
    r(_outcome(lambda: a.__setitem__(slice(0, 2), [1, 2])))
    import array

    r(_outcome(lambda: a.__setitem__(slice(0, 2), array.array("i", [4, 5]))))
    r(_outcome(lambda: (list(a[:]), str(a))))
    return out


def test_array_parity(manager):
    import array

    a = manager.Array("i", [1, 2, 3])
    if manager._test_impl == "fastmp":
        assert a._r is not None
    got = _array_script(a)
    ref = _array_script(array.array("i", [1, 2, 3]))
    assert got == ref
    assert list(a._getvalue()) == [4, 5, 9]


# ------------------------------------------------------------ Event, Semaphore


def _sem_script(sem):
    out = []
    r = out.append
    r(_outcome(lambda: sem.acquire(False, 1)))
    r(_outcome(lambda: sem.acquire()))
    r(_outcome(lambda: sem.acquire(True, 0.05)))
    r(_outcome(lambda: sem.acquire(False)))
    r(_outcome(sem.release))
    r(_outcome(sem.release))
    r(_outcome(sem.release))
    r(_outcome(lambda: (sem.acquire(False), sem.acquire(False))))
    return out


@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_semaphore_parity(manager, kind):
    import threading

    sem = getattr(manager, kind)(1)
    if manager._test_impl == "fastmp":
        assert sem._r is not None
    assert _sem_script(sem) == _sem_script(getattr(threading, kind)(1))
    # (a creation error comes back as the server's traceback)
    mod = _load(manager._test_impl + ".managers")
    with pytest.raises(mod.RemoteError, match="initial value must be >= 0"):
        getattr(manager, kind)(-1)


def _event_script(ev):
    return [
        ev.is_set(),
        ev.wait(0.05),
        ev.set(),
        ev.is_set(),
        ev.wait(),
        ev.wait(0),
        ev.clear(),
        ev.wait(0.01),
        ev.is_set(),
    ]


def _set_later(ev, sem):
    time.sleep(0.1)
    sem.release()
    ev.set()


def test_event_parity_and_across_processes(manager):
    import threading

    ev = manager.Event()
    if manager._test_impl == "fastmp":
        assert ev._r is not None
    assert _event_script(ev) == _event_script(threading.Event())
    sem = manager.Semaphore(0)
    p = manager._test_ctx.Process(target=_set_later, args=(ev, sem))
    p.start()
    assert sem.acquire(True, 60)
    assert ev.wait(60)
    p.join(60)
    assert p.exitcode == 0


# ------------------------------------------------------------ RLock


def _rlock_script(lk):
    import threading

    out = [_outcome(lk.release)]
    out.append(_outcome(lambda: lk.acquire(False, 1)))
    out.append((lk.acquire(), lk.acquire(), lk.acquire(False)))
    got = []
    t = threading.Thread(
        target=lambda: got.append(
            (lk.acquire(False), lk.acquire(True, 0.05), _outcome(lk.release))
        )
    )
    t.start()
    t.join()
    out.append(got)
    out.append((_outcome(lk.release), _outcome(lk.release)))
    out.append(_outcome(lk.release))
    with lk:
        out.append(lk.acquire(False))
        lk.release()
    out.append(_outcome(lk.release))
    return out


def _rlock_other_process(lk, out):
    out.put((lk.acquire(False), _outcome(lk.release)))


def test_rlock_parity(manager):
    import threading

    lk = manager.RLock()
    if manager._test_impl == "fastmp":
        assert lk._r is not None
    assert _rlock_script(lk) == _rlock_script(threading.RLock())
    # Another process: neither holder nor able to release.
    lk.acquire()
    q = manager._test_ctx.Queue()
    p = manager._test_ctx.Process(target=_rlock_other_process, args=(lk, q))
    p.start()
    assert q.get(timeout=60) == (
        False,
        ("raise", "RuntimeError", ("cannot release un-acquired lock",)),
    )
    p.join(60)
    lk.release()
    assert lk.acquire(False)
    lk.release()


# ------------------------------------------------------------ Barrier


def _until(fn, limit=30):
    end = time.monotonic() + limit
    while not fn():
        assert time.monotonic() < end
        time.sleep(0.005)


def _barrier_repr(b):
    import re

    return re.sub(r"0x[0-9a-f]+", "ID", str(b))


def _barrier_script(b):
    import threading

    out = [b.parties, b.n_waiting, b.broken, _barrier_repr(b)]
    got = []
    t = threading.Thread(target=lambda: got.append(b.wait(60)))
    t.start()
    _until(lambda: b.n_waiting == 1)
    out.append((b.n_waiting, _barrier_repr(b)))
    out.append(b.wait(60))
    t.join()
    out.append(got)
    out.append(_outcome(lambda: b.wait(0.05)))
    out.append((b.broken, b.n_waiting, _barrier_repr(b)))
    out.append(_outcome(b.wait))
    b.reset()
    out.append(b.broken)
    b.abort()
    out.append((b.broken, _outcome(lambda: b.wait(0))))
    b.reset()
    out.append(_outcome(lambda: b.wait("x")))
    out.append((b.broken, b.n_waiting))
    out.append(_outcome(lambda: b.wait(-1)))
    b.reset()
    # A reset while a thread waits breaks its wait.
    got = []
    t = threading.Thread(target=lambda: got.append(_outcome(b.wait)))
    t.start()
    _until(lambda: b.n_waiting == 1)
    b.reset()
    t.join()
    out.append((got, b.broken, b.n_waiting))
    return out


def _barrier_child(b, out):
    out.put(b.wait(60))


def _barrier_action():
    pass


def test_barrier_parity(manager):
    import threading

    b = manager.Barrier(2)
    ref = _barrier_script(threading.Barrier(2))
    assert _barrier_script(b) == ref
    if manager._test_impl == "fastmp":
        assert b._r is not None
        # The same object through the server gives the same answers.
        via = manager.Barrier(2)
        via._r = None
        assert _barrier_script(via) == ref
    # A default timeout.
    bt = manager.Barrier(2, timeout=0.05)
    assert _outcome(bt.wait) == ("raise", "BrokenBarrierError", ())
    assert bt.broken
    # Another process.
    q = manager._test_ctx.Queue()
    p = manager._test_ctx.Process(target=_barrier_child, args=(b, q))
    p.start()
    assert sorted([b.wait(60), q.get(timeout=60)]) == [0, 1]
    p.join(60)
    assert p.exitcode == 0
    # An action runs in the server: that Barrier goes through it.
    ba = manager.Barrier(1, action=_barrier_action)
    assert (ba.wait(), ba.parties) == (0, 1)
    if manager._test_impl == "fastmp":
        assert ba._r is None
    mod = _load(manager._test_impl + ".managers")
    with pytest.raises(mod.RemoteError, match="cannot pickle"):
        b._getvalue()


def test_barrier_without_the_server(fmanager):
    import threading

    b = fmanager.Barrier(3)
    assert b._r is not None
    os.kill(fmanager._process.pid, signal.SIGSTOP)
    try:
        got = []
        ts = [
            threading.Thread(target=lambda: got.append(b.wait(30)))
            for _ in range(3)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        b.abort()
        assert b.broken
        b.reset()
    finally:
        os.kill(fmanager._process.pid, signal.SIGCONT)
    assert sorted(got) == [0, 1, 2]


def _barrier_wait_forever(b):
    print("READY", flush=True)
    b.wait()


def test_barrier_sigkilled_waiter(fmanager):
    import threading

    import fastmp

    ctx = fastmp.get_context("fork")
    b = fmanager.Barrier(3)
    p = ctx.Process(target=_barrier_wait_forever, args=(b,))
    p.start()
    _until(lambda: b.n_waiting == 1)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    # As with the stdlib's server thread, the dead waiter still counts.
    assert b.n_waiting == 1
    got = []
    t = threading.Thread(target=lambda: got.append(b.wait(30)))
    t.start()
    got.append(b.wait(30))
    t.join(30)
    assert sorted(got) == [1, 2]
    # Its slot does not keep the barrier draining: the next round runs.
    got = []
    ts = [
        threading.Thread(target=lambda: got.append(b.wait(30)))
        for _ in range(3)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert sorted(got) == [0, 1, 2]


@pytest.mark.parametrize("method", METHODS)
def test_barrier_segments(method):
    import fastmp

    m = fastmp.get_context(method).Manager()
    address = m.address
    b = m.Barrier(2)
    ba = m.Barrier(1, action=_barrier_action)
    assert len(_segments(address)) == 1
    del b
    gc.collect()
    assert _segments(address) == set()
    b = m.Barrier(2)
    assert len(_segments(address)) == 1
    m.shutdown()
    m.join()
    assert _segments(address) == set()
    del b, ba


# ------------------------------------------------------------ Condition


def _cond_repr(c):
    import re

    return re.sub(
        r"owner=\d+", "owner=N", re.sub(r"0x[0-9a-f]+", "ID", str(c))
    )


def _cond_waiting(c):
    return int(str(c).rsplit(", ", 1)[1][:-2])


def _cond_script(c):
    import threading

    out = [_cond_repr(c)]
    out.append(_outcome(lambda: c.wait(0)))
    out.append(_outcome(c.notify))
    out.append(_outcome(c.notify_all))
    with c:
        out.append(_outcome(lambda: c.wait(0.05)))
        out.append(_outcome(lambda: c.wait(0)))
        out.append(_outcome(lambda: c.wait(-1)))
        out.append(_outcome(lambda: c.wait("x")))
        out.append(_outcome(lambda: c.notify(-1)))
        out.append(_outcome(lambda: c.notify("x")))
        out.append(_outcome(lambda: c.wait_for(lambda: 3, 1)))
        out.append(_outcome(lambda: c.wait_for(lambda: 0, 0.05)))
        out.append(_cond_repr(c))
    # Waiters are notified in the order they came.
    got = []

    def waiter(k):
        with c:
            got.append((k, c.wait(60)))

    ts = []
    for k in range(3):
        ts.append(threading.Thread(target=waiter, args=(k,)))
        ts[-1].start()
        _until(lambda k=k: _cond_waiting(c) == k + 1)
    with c:
        out.append(_cond_repr(c))
        c.notify()
    _until(lambda: len(got) == 1)
    with c:
        c.notify_all()
    for t in ts:
        t.join(60)
    out.append((got[0], sorted(got)))
    out.append(_cond_repr(c))
    return out


def _cond_child(c, q):
    with c:
        q.put("in")
        q.put(c.wait(60))


@pytest.mark.parametrize("lock", ["none", "Lock", "RLock"])
def test_condition_parity(manager, lock):
    import threading

    if lock == "none":
        c = manager.Condition()
        ref = threading.Condition()
    elif lock == "Lock":
        c = manager.Condition(manager.Lock())
        ref = threading.Condition(threading.Lock())
    else:
        c = manager.Condition(manager.RLock())
        ref = None
    if manager._test_impl == "fastmp":
        assert c._r is not None
    if ref is None:
        # The server's Condition holds the RLock's proxy, which has no
        # _is_owned: its acquire(False) by the holder succeeds, so the
        # lock never looks owned (the stdlib's behaviour, kept).
        with c:
            assert _outcome(lambda: c.wait(0)) == (
                "raise",
                "RuntimeError",
                ("cannot wait on un-acquired lock",),
            )
            assert _outcome(c.notify) == (
                "raise",
                "RuntimeError",
                ("cannot notify on un-acquired lock",),
            )
        return
    expected = _cond_script(ref)
    assert _cond_script(c) == expected
    mod = _load(manager._test_impl + ".managers")
    if lock == "none":
        with pytest.raises(mod.RemoteError, match="cannot pickle"):
            c._getvalue()
    else:
        assert isinstance(c._getvalue(), threading.Condition)
    if manager._test_impl == "fastmp":
        via = manager.Condition(*([] if lock == "none" else [manager.Lock()]))
        via._r = None
        assert _cond_script(via) == expected
    q = manager._test_ctx.Queue()
    p = manager._test_ctx.Process(target=_cond_child, args=(c, q))
    p.start()
    assert q.get(timeout=60) == "in"
    with c:
        c.notify()
    assert q.get(timeout=60) is True
    p.join(60)
    assert p.exitcode == 0


def test_condition_over_another_lock_goes_through_the_server(fmanager):
    c = fmanager.Condition(fmanager.Semaphore(1))
    assert c._r is None
    with c:
        assert c.wait(0.01) is False


def test_condition_without_the_server(fmanager):
    import threading

    conds = [fmanager.Condition(), fmanager.Condition(fmanager.Lock())]
    assert all(c._r is not None for c in conds)
    os.kill(fmanager._process.pid, signal.SIGSTOP)
    try:
        for c in conds:
            flag = []
            got = []

            def waiter(c=c, flag=flag, got=got):
                with c:
                    got.append(c.wait_for(lambda: flag, 30))

            t = threading.Thread(target=waiter)
            t.start()
            _until(lambda c=c: c._r._waiting())
            with c:
                flag.append("go")
                c.notify()
            t.join(30)
            assert got == [["go"]]
    finally:
        os.kill(fmanager._process.pid, signal.SIGCONT)


def _cond_wait_forever(c):
    with c:
        c.wait()


def _cond_die_holding(c):
    c.acquire()
    os._exit(0)


def test_condition_sigkilled_waiter_and_holder(fmanager):
    import threading

    import fastmp

    ctx = fastmp.get_context("fork")
    c = fmanager.Condition()
    p = ctx.Process(target=_cond_wait_forever, args=(c,))
    p.start()
    _until(lambda: _cond_waiting(c) == 1)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    # The notification goes to a live waiter, not to the dead one.
    got = []

    def waiter():
        with c:
            got.append(c.wait(30))

    t = threading.Thread(target=waiter)
    t.start()
    _until(lambda: _cond_waiting(c) == 2)
    with c:
        c.notify()
    t.join(30)
    assert got == [True]
    assert _cond_waiting(c) == 0
    # A holder that died is taken over.
    p = ctx.Process(target=_cond_die_holding, args=(c,))
    p.start()
    p.join(30)
    with pytest.warns(fastmp.AbandonedLockWarning):
        assert c.acquire(True, 30)
    c.release()


@pytest.mark.parametrize("method", METHODS)
def test_condition_segments(method):
    import fastmp

    m = fastmp.get_context(method).Manager()
    address = m.address
    c = m.Condition()
    assert len(_segments(address)) == 1
    del c
    gc.collect()
    assert _segments(address) == set()
    lock = m.Lock()
    c = m.Condition(lock)
    assert len(_segments(address)) == 2
    m.shutdown()
    m.join()
    assert _segments(address) == set()
    del c, lock


# ------------------------------------------------------------ Queue


def _queue_script(q):
    o = _outcome
    return [
        o(lambda: q.put(1)),
        o(lambda: q.put_nowait([2])),
        o(lambda: q.put(3, timeout=0.05)),
        o(lambda: q.put(3, False)),
        o(lambda: q.put(3, True, -1)),
        o(lambda: q.put(3, True, "x")),
        o(q.qsize),
        o(q.full),
        o(q.empty),
        o(q.get),
        o(q.get_nowait),
        o(q.get_nowait),
        o(lambda: q.get(True, 0.05)),
        o(lambda: q.get(True, -1)),
        o(lambda: q.get(False, -1)),
        o(lambda: q.get(True, "x")),
        o(lambda: q.get(timeout=None, block=False)),
        o(q.task_done),
        o(q.task_done),
        o(q.task_done),
        o(q.join),
        o(q.qsize),
    ]


def _unbounded_script(q):
    o = _outcome
    return [
        o(lambda: q.put(1, True, -1)),
        o(lambda: q.put(2, True, "x")),
        o(lambda: q.put(b"x" * 300000)),
        o(q.full),
        o(q.qsize),
        [q.get() for _ in range(3)][2] == b"x" * 300000,
        o(q.empty),
    ]


def _queue_child(q, out):
    out.put(("child", q.get(timeout=60)))
    q.task_done()


@pytest.mark.parametrize("kind", ["Queue", "JoinableQueue"])
def test_queue_parity(manager, kind):
    import queue

    q = getattr(manager, kind)(2)
    if manager._test_impl == "fastmp":
        assert (q._r is not None) == QUEUE_REPLICATED
    assert str(q).startswith("<queue.Queue object at ")
    assert sorted(q._exposed_) == sorted(
        [
            "empty",
            "full",
            "get",
            "get_nowait",
            "join",
            "put",
            "put_nowait",
            "qsize",
            "task_done",
            *(() if QUEUE_REPLICATED else ("shutdown",)),
        ]
    )
    assert _queue_script(q) == _queue_script(queue.Queue(2))
    # An item that cannot be pickled fails in the caller.
    assert _outcome(lambda: q.put(lambda: 1))[:2] == (
        "raise",
        "AttributeError",
    )
    assert q.qsize() == 0
    u = getattr(manager, kind)()
    assert _unbounded_script(u) == _unbounded_script(queue.Queue())
    mod = _load(manager._test_impl + ".managers")
    with pytest.raises(mod.RemoteError, match="cannot pickle"):
        q._getvalue()
    # Another process gets what this one put; join() waits for its
    # task_done().
    q.put({"a": 1})
    out = manager.Queue()
    p = manager._test_ctx.Process(target=_queue_child, args=(q, out))
    p.start()
    q.join()
    assert out.get(timeout=60) == ("child", {"a": 1})
    p.join(60)
    assert p.exitcode == 0


def _queue_put_from(q):
    q.put("from child")


def test_queue_outlives_its_proxies(manager):
    import gc

    q = manager.Queue()
    d = manager.dict(a=1)
    # A proxy in an item keeps its referent alive while queued.
    q.put(d)
    del d
    gc.collect()
    assert q.get(timeout=60)["a"] == 1
    ns = manager.Namespace()
    ns.q = q
    q.put(5)
    p = manager._test_ctx.Process(target=_queue_put_from, args=(q,))
    p.start()
    p.join(60)
    del q
    gc.collect()
    q2 = ns.q
    assert (q2.get(timeout=60), q2.get(timeout=60), q2.qsize()) == (
        5,
        "from child",
        0,
    )
    if manager._test_impl == "fastmp":
        assert (q2._r is not None) == QUEUE_REPLICATED


@fast_queue
def test_queue_without_the_server(fmanager):
    import threading

    q = fmanager.JoinableQueue(1)
    assert q._r is not None
    os.kill(fmanager._process.pid, signal.SIGSTOP)
    try:
        got = []

        def consumer():
            for _ in range(100):
                got.append(q.get(timeout=30))
                q.task_done()

        t = threading.Thread(target=consumer)
        t.start()
        for i in range(100):
            q.put(i, timeout=30)
        q.join()
        t.join(30)
        assert got == list(range(100))
        assert q.empty()
    finally:
        os.kill(fmanager._process.pid, signal.SIGCONT)


def _queue_get_forever(q):
    print("READY", flush=True)
    q.get()


def _queue_die_holding_the_lock(q):
    q._r._ring._debug_hold_lock()
    os._exit(0)


@fast_queue
def test_queue_sigkilled_getter_and_lock_holder(fmanager):
    import fastmp

    ctx = fastmp.get_context("fork")
    q = fmanager.Queue()
    p = ctx.Process(target=_queue_get_forever, args=(q,))
    p.start()
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    q.put(1)
    assert q.get(timeout=30) == 1
    p = ctx.Process(target=_queue_die_holding_the_lock, args=(q,))
    p.start()
    p.join(30)
    q.put(2, timeout=30)
    assert (q.get(timeout=30), q.qsize()) == (2, 0)


@fast_queue
@pytest.mark.parametrize("method", METHODS)
def test_queue_segments(method):
    import fastmp

    m = fastmp.get_context(method).Manager()
    address = m.address
    q = m.Queue()
    jq = m.JoinableQueue()
    q.put(b"x" * 300000)
    assert len(_segments(address)) == 2
    del q
    gc.collect()
    assert len(_segments(address)) == 1
    m.shutdown()
    m.join()
    assert _segments(address) == set()
    del jq


def test_queue_with_odd_maxsize_goes_through_the_server(fmanager):
    q = fmanager.Queue(2.5)
    assert q._r is None
    q.put(1)
    assert (q.full(), q.get()) == (False, 1)


@fast_queue
def test_many_queues_leave_nothing(fmanager):
    before = _segments(fmanager.address)
    for i in range(50):  # (warm up)
        q = fmanager.Queue()
        q.put(i)
        del q
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    server_fds = len(os.listdir("/proc/%d/fd" % fmanager._process.pid))
    for i in range(300):
        q = fmanager.JoinableQueue()
        q.put(b"x" * (i * 1000))
        assert len(q.get()) == i * 1000
        del q
    gc.collect()
    assert _segments(fmanager.address) == before
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    pid = fmanager._process.pid
    assert len(os.listdir("/proc/%d/fd" % pid)) <= server_fds + 2
