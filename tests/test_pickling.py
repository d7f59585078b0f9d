"""fastmp's one pickling layer (src/pickling.c) against ForkingPickler.

``_fastmp._dumps(obj)`` must give exactly ``ForkingPickler.dumps(obj)``'s
bytes, with the same reducers (including ones registered or replaced after
the first use) and the same exceptions; Connection.send and Queue.put use
it, so they follow every change of reducer too.
"""

import copyreg
import pickle
import threading
from multiprocessing.reduction import ForkingPickler

import pytest

import fastmp
from fastmp import _fastmp


@pytest.fixture
def reducers():
    """Drop the reducers a test registers for this module's classes (and
    only those: importing part of fastmp during a test registers its own,
    which must stay)."""
    yield
    for cls in (Tagged, Point):
        ForkingPickler._extra_reducers.pop(cls, None)
        copyreg.dispatch_table.pop(cls, None)


def same(obj):
    """Both pickle obj to the same bytes; returns them."""
    data = _fastmp._dumps(obj)
    assert type(data) is bytes
    assert data == bytes(ForkingPickler.dumps(obj))
    return data


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is type(self) and vars(self) == vars(other)


class Reduced:
    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        return Reduced, (self.v * 2,)


class Tagged:
    def __init__(self, tag):
        self.tag = tag


def _rebuild_tagged(tag):
    return Tagged("rebuilt:" + tag)


def _reduce_tagged_a(t):
    return _rebuild_tagged, ("a",)


def _reduce_tagged_b(t):
    return _rebuild_tagged, ("b",)


def _reduce_point(p):
    return Point, (p.y, p.x)


PLAIN = [
    None,
    True,
    False,
    0,
    1,
    -1,
    255,
    256,
    2**31,
    -(2**63),
    2**100,
    1.5,
    float("inf"),
    1j,
    "",
    "x",
    "é" * 10,
    "s" * 100_000,
    b"",
    b"\0" * 10,
    b"x" * 65_535,
    b"x" * 65_536,
    b"y" * (3 << 20),
    bytearray(b"ab" * 40_000),
    (),
    (1,),
    (1, "x", 2.0),
    [],
    [1, [2, [3, [4, [5]]]]],
    {},
    {"a": 1},
    {1: {2: {3: (4, [5])}}},
    {1, 2, 3},
    frozenset("abc"),
    range(10),
    slice(1, 2),
    Ellipsis,
    NotImplemented,
    type,
    int,
    len,
    pickle.dumps,
    [b"z" * 70_000, "m" * 70_000, b"w" * 70_000],
    list(range(10_000)),
    {i: str(i) for i in range(1000)},
    Point(1, 2),
    [Point(i, -i) for i in range(100)],
    Reduced(21),
    Exception("boom"),
    ValueError(1, 2),
    KeyError("k"),
]


@pytest.mark.parametrize("obj", PLAIN, ids=lambda o: type(o).__name__)
def test_same_bytes_and_round_trip(obj):
    data = same(obj)
    back = _fastmp._loads(data)
    want = ForkingPickler.loads(data)
    assert type(back) is type(want)
    assert same(back) == same(want)


def test_shared_references_and_recursion():
    x = [1, 2]
    shared = [x, x, {"again": x}]
    same(shared)
    back = _fastmp._loads(_fastmp._dumps(shared))
    assert back[0] is back[1] is back[2]["again"]

    rec = [1]
    rec.append(rec)
    d = {}
    d["self"] = d
    same(rec)
    same(d)
    back = _fastmp._loads(_fastmp._dumps(rec))
    assert back[1] is back
    back = _fastmp._loads(_fastmp._dumps(d))
    assert back["self"] is back


def test_memo_cleared_between_dumps():
    # A reused pickler that kept its memo would emit a back-reference.
    x = ["shared"]
    first = _fastmp._dumps(x)
    assert _fastmp._dumps(x) == first == bytes(ForkingPickler.dumps(x))


def test_loads_accepts_bytes_like():
    data = _fastmp._dumps({"a": [1, 2]})
    for buf in (data, bytearray(data), memoryview(data)):
        assert _fastmp._loads(buf) == {"a": [1, 2]}


def test_register_after_first_use(reducers):
    t = Tagged("orig")
    same(t)  # first use: no reducer
    assert _fastmp._loads(_fastmp._dumps(t)).tag == "orig"
    ForkingPickler.register(Tagged, _reduce_tagged_a)
    same(t)
    assert _fastmp._loads(_fastmp._dumps(t)).tag == "rebuilt:a"


def test_replaced_reducer(reducers):
    t = Tagged("orig")
    ForkingPickler.register(Tagged, _reduce_tagged_a)
    assert _fastmp._loads(_fastmp._dumps(t)).tag == "rebuilt:a"
    # Replacing a registered reducer leaves the table's size unchanged.
    ForkingPickler.register(Tagged, _reduce_tagged_b)
    same(t)
    assert _fastmp._loads(_fastmp._dumps(t)).tag == "rebuilt:b"
    del ForkingPickler._extra_reducers[Tagged]
    same(t)
    assert _fastmp._loads(_fastmp._dumps(t)).tag == "orig"


def test_copyreg_pickle(reducers):
    p = Point(1, 2)
    same(p)
    copyreg.pickle(Point, _reduce_point)
    same(p)
    assert _fastmp._loads(_fastmp._dumps(p)) == Point(2, 1)
    # Replaced in place: the table's size does not change.
    copyreg.pickle(Point, lambda p: (Point, (0, 0)))
    same(p)
    assert _fastmp._loads(_fastmp._dumps(p)) == Point(0, 0)


def test_extra_reducers_win_over_copyreg(reducers):
    t = Tagged("orig")
    copyreg.pickle(Tagged, _reduce_tagged_a)
    ForkingPickler.register(Tagged, _reduce_tagged_b)
    same(t)
    assert _fastmp._loads(_fastmp._dumps(t)).tag == "rebuilt:b"


class Boom(Exception):
    pass


def _raising_reducer(obj):
    raise Boom("no")


@pytest.mark.parametrize(
    "obj",
    [
        lambda: None,  # not importable by name
        threading.Lock(),  # TypeError: cannot pickle
        [1, 2, (lambda: None)],  # deep in a container, after output
    ],
)
def test_unpicklable_same_exception(obj):
    with pytest.raises(Exception) as want:
        ForkingPickler.dumps(obj)
    with pytest.raises(want.type):
        _fastmp._dumps(obj)
    # The pickler is usable afterwards.
    same([1, "after"])


def test_raising_reducer(reducers):
    ForkingPickler.register(Tagged, _raising_reducer)
    with pytest.raises(Boom):
        ForkingPickler.dumps([b"x" * 100_000, Tagged("t")])
    with pytest.raises(Boom):
        _fastmp._dumps([b"x" * 100_000, Tagged("t")])
    same(Tagged.__name__)


class Nested:
    """Its reducer pickles again while the outer dump is running."""

    def __init__(self, inner):
        self.inner = inner

    def __reduce__(self):
        return _fastmp._loads, (_fastmp._dumps(self.inner),)


def test_reentrant_reducer():
    obj = [1, Nested(["inner", Nested({"deep": (1, 2)})]), "tail"]
    data = same(obj)
    assert _fastmp._loads(data) == [1, ["inner", {"deep": (1, 2)}], "tail"]
    same(["after", 1])


def _sending_reducer_factory(conn):
    def reduce_(obj):
        conn.send(("side", obj.tag))
        return _rebuild_tagged, (obj.tag,)

    return reduce_


def test_reducer_that_sends(reducers):
    a, b = fastmp.Pipe()
    ForkingPickler.register(Tagged, _sending_reducer_factory(a))
    a.send([Tagged("x"), 2])
    assert b.recv() == ("side", "x")
    got = b.recv()
    assert got[0].tag == "rebuilt:x" and got[1] == 2
    a.close()
    b.close()


def test_threads_share_the_layer():
    errors = []

    def work(k):
        try:
            for i in range(2000):
                obj = [k, i, Nested(("n", k, i)), "s" * (i % 50)]
                assert _fastmp._loads(_fastmp._dumps(obj))[2] == ("n", k, i)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def test_connection_and_queue_follow_reducers(reducers):
    a, b = fastmp.Pipe()
    q = fastmp.Queue()
    t = Tagged("orig")
    a.send(t)
    q.put(t)
    assert b.recv().tag == "orig" and q.get().tag == "orig"
    ForkingPickler.register(Tagged, _reduce_tagged_a)
    a.send(t)
    q.put(t)
    assert b.recv().tag == "rebuilt:a" and q.get().tag == "rebuilt:a"
    ForkingPickler.register(Tagged, _reduce_tagged_b)
    a.send(t)
    q.put(t)
    assert b.recv().tag == "rebuilt:b" and q.get().tag == "rebuilt:b"
    a.close()
    b.close()
    q.close()


def test_connection_and_queue_same_errors(reducers):
    a, b = fastmp.Pipe()
    q = fastmp.Queue()
    ForkingPickler.register(Tagged, _raising_reducer)
    with pytest.raises(Boom):
        a.send(Tagged("t"))
    with pytest.raises(Boom):
        q.put(Tagged("t"))
    a.send("fine")
    q.put("fine")
    assert b.recv() == "fine" and q.get() == "fine"
    a.close()
    b.close()
    q.close()


# --- _dumps_list / _loads_list: a Pool's chunks and results ---------------


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2, 3],
        [-(2**63), 2**63 - 1],
        [0.5, -0.0, float("inf")],
        [2**63],
        [1, True],
        [True],
        [1.0, 2],
        [],
        (1, 2),
        "text",
        {"a": [1]},
        None,
    ],
    ids=repr,
)
def test_list_form_round_trip(obj):
    back = _fastmp._loads_list(_fastmp._dumps_list(obj))
    assert back == obj and type(back) is type(obj)
    if isinstance(obj, list):
        assert [type(x) for x in back] == [type(x) for x in obj]


def test_list_form_compact_only_for_plain_numbers():
    assert _fastmp._dumps_list([1, 2]) != _fastmp._dumps([1, 2])
    assert len(_fastmp._dumps_list(list(range(1000, 2000)))) == 2 + 8000
    for obj in ([1, True], [2**64], [1.0, 1], [], ["a"], (1, 2)):
        assert _fastmp._dumps_list(obj) == _fastmp._dumps(obj)
    # Anything pickled stays a pickle to _loads_list.
    assert _fastmp._loads_list(_fastmp._dumps([5, 6])) == [5, 6]


@pytest.mark.parametrize(
    "data",
    [b"\x00i" + b"1" * 7, b"\x00z" + b"1" * 8, b"\x00", b"", b"garbage"],
    ids=repr,
)
def test_list_form_corrupt_input_is_an_error(data):
    with pytest.raises((ValueError, pickle.UnpicklingError, EOFError)):
        _fastmp._loads_list(data)


@pytest.mark.parametrize(
    "obj", [list(range(10)), [0.5] * 10, [1, "a", 2.0] * 4, [True] * 10]
)
@pytest.mark.parametrize("start, stop", [(0, 10), (3, 7), (8, 100), (5, 5)])
def test_list_form_of_a_range(obj, start, stop):
    # The form of a list's chunk is the form of the slice.
    data = _fastmp._dumps_list(obj, start, stop)
    assert data == _fastmp._dumps_list(obj[start:stop])
    back = _fastmp._loads_list(data)
    assert back == obj[start:stop]
    assert [type(x) for x in back] == [type(x) for x in obj[start:stop]]


def test_list_form_without_a_range():
    assert _fastmp._dumps_list([1, 2], None, None) == _fastmp._dumps_list(
        [1, 2]
    )
    assert _fastmp._dumps_list("x", None, None) == _fastmp._dumps("x")


def test_list_form_of_a_range_bad_arguments():
    with pytest.raises(TypeError):
        _fastmp._dumps_list((1, 2), 0, 1)
    with pytest.raises(TypeError):
        _fastmp._dumps_list([1], 0)
    with pytest.raises(TypeError):
        _fastmp._dumps_list([1], "0", 1)
    with pytest.raises(ValueError):
        _fastmp._dumps_list([1, 2], 2, 1)
    with pytest.raises(ValueError):
        _fastmp._dumps_list([1, 2], -1, 1)


def test_list_form_of_a_range_whose_bounds_shrink_the_list():
    # __index__ runs Python code before the items are read: the range is
    # clamped to the list as it is then.
    items = list(range(10))

    class Shrinker:
        def __index__(self):
            del items[2:]
            return 8

    back = _fastmp._loads_list(_fastmp._dumps_list(items, 1, Shrinker()))
    assert back == [1]


def _twice(x):
    return 2 * x


@pytest.mark.parametrize(
    "obj",
    [list(range(-5, 5)), [0.5, -1.5], ["a", "b"], [(1, 2)], []],
    ids=repr,
)
def test_map_list_is_list_map_loads(obj):
    data = _fastmp._dumps_list(obj)
    assert _fastmp._map_list(_twice, data) == list(map(_twice, obj))


def test_map_list_stops_at_the_first_exception():
    seen = []

    def f(x):
        seen.append(x)
        if x == 3:
            raise KeyError(x)
        return x

    for data in (
        _fastmp._dumps_list(list(range(10))),
        _fastmp._dumps([0, 1, 2, 3, 4]),
    ):
        seen.clear()
        with pytest.raises(KeyError):
            _fastmp._map_list(f, data)
        assert seen == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "data", [b"\x00i" + b"1" * 7, b"\x00z" + b"1" * 8, b"garbage"], ids=repr
)
def test_map_list_corrupt_input_is_an_error(data):
    with pytest.raises((ValueError, pickle.UnpicklingError, EOFError)):
        _fastmp._map_list(_twice, data)
    with pytest.raises(TypeError):
        _fastmp._map_list(_twice)


def test_map_list_result_is_never_seen_half_made():
    # func runs Python code mid-map: the list being filled must not be
    # reachable through the gc module (its empty slots would crash).
    import gc

    def peek(x):
        for o in gc.get_objects():
            if type(o) is list and len(o) == 50:
                list(o)  # every slot read
        return x

    data = _fastmp._dumps_list(list(range(50)))
    assert _fastmp._map_list(peek, data) == list(range(50))


# The small path (src/pickling_small.c): tuples of None, bools, ints
# within 32 bits, floats, str, bytes and empty dicts, written and read
# without a Pickler.  The same bytes as ForkingPickler, at every border
# where it hands over to the Pickler, and the same objects or errors from
# any pickle, whoever wrote it.


class _MyInt(int):
    pass


class _MyStr(str):
    pass


_S = "shared"
_T = ("inner",)
SMALL = [
    None,
    True,
    False,
    0,
    255,
    256,
    65535,
    65536,
    -1,
    2**31 - 1,
    -(2**31),
    2**31,
    -(2**31) - 1,
    1.5,
    -0.0,
    float("inf"),
    "",
    "abc",
    "é" * 100,
    "x" * 255,
    "x" * 256,
    "x" * 2040,
    "x" * 3000,
    "\ud800",
    b"",
    b"ab" * 200,
    b"z" * 5000,
    (),
    (1,),
    (1, 2),
    (1, 2, 3),
    (1, 2, 3, 4),
    ((), (), ()),
    ({},),
    ({}, {}),
    ({1: 2},),
    ("#RETURN", None),
    ("7f3a", "__setitem__", ("k", 1), {}),
    (_S, _S, (_S,), _S),
    (_T, _T, [_T]),
    tuple(range(40)),
    tuple(range(400)),
    (((((((((((1,),),),),),),),),),),),
    (True, 3 + 4j),
    ("x", bytearray(b"x")),
    (_MyInt(3),),
    (_MyStr("s"),),
]


@pytest.mark.parametrize("obj", SMALL, ids=repr)
def test_small_same_bytes_and_round_trip(obj):
    data = same(obj)
    back = _fastmp._loads(data)
    want = ForkingPickler.loads(data)
    assert type(back) is type(want)
    assert repr(back) == repr(want)
    # Every protocol's pickle reads as the Unpickler reads it.
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(obj, proto)
        assert repr(_fastmp._loads(data)) == repr(pickle.loads(data))


def test_small_shared_references():
    back = _fastmp._loads(_fastmp._dumps((_S, _S, {}, ())))
    assert back[0] is back[1]
    d = {}
    back = _fastmp._loads(_fastmp._dumps((d, d)))
    assert back[0] is back[1]


def test_small_corrupt_input_same_outcome():
    import random

    def outcome(loads, data):
        try:
            return ("ok", repr(loads(data)))
        except Exception as e:  # noqa: BLE001
            return ("error", type(e))

    seeds = [
        ("#RETURN", None),
        ("7f3a", "__setitem__", ("k", 1), {}),
        (_S, _S, (_S,), b"xy", -7, 70000, 2.5),
        ("é", (), (True, False), ("a", "b", "c", "d")),
    ]
    rng = random.Random(7)
    for _ in range(3000):
        data = bytearray(pickle.dumps(rng.choice(seeds)))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        data = bytes(data)
        assert outcome(_fastmp._loads, data) == outcome(pickle.loads, data)


def test_loads_list_into_places_the_items():
    target = [None] * 10
    data = _fastmp._dumps_list([5, 6, 7])
    assert _fastmp._loads_list_into(data, target, 4) is True
    assert target == [None] * 4 + [5, 6, 7] + [None] * 3
    floats = _fastmp._dumps_list([0.5, -0.0])
    assert _fastmp._loads_list_into(floats, target, 8) is True
    assert target[8:] == [0.5, -0.0]
    assert [type(x) for x in target[8:]] == [float, float]


@pytest.mark.parametrize(
    "data, target, start",
    [
        (_fastmp._dumps([1, 2]), [None] * 4, 0),  # a pickle
        (_fastmp._dumps_list([1, 2]), [None] * 4, 3),  # no room
        (_fastmp._dumps_list([1, 2]), [None] * 4, -1),
        (_fastmp._dumps_list([1, 2]), (None,) * 4, 0),  # not a list
    ],
    ids=["pickle", "no room", "negative start", "tuple"],
)
def test_loads_list_into_declines_and_changes_nothing(data, target, start):
    before = list(target)
    assert _fastmp._loads_list_into(data, target, start) is False
    assert list(target) == before


def test_loads_list_into_corrupt_input_is_an_error():
    with pytest.raises(ValueError):
        _fastmp._loads_list_into(b"\x00i" + b"1" * 7, [None] * 9, 0)


def test_loads_list_into_a_list_shrunk_by_a_del():
    # Releasing an old item may run Python code that changes the list.
    target = []

    class Shrinks:
        def __del__(self):
            del target[1:]

    target.extend([Shrinks(), None, None])
    with pytest.raises(RuntimeError):
        _fastmp._loads_list_into(_fastmp._dumps_list([1, 2, 3]), target, 0)
    assert target == [1]
