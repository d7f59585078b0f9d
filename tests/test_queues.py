"""Queue, JoinableQueue and SimpleQueue: parity with the stdlib (ctx) and
fastmp-only behaviour (fctx)."""

import pickle
import queue
import time

import pytest

pytestmark = pytest.mark.timeout(60)


# ---- helpers run in children (module level for spawn) -----------------


def _produce(q, tag, n):
    for i in range(n):
        q.put((tag, i))


def _consume(q, out, n):
    got = []
    for _ in range(n):
        got.append(q.get(timeout=30))
    out.put(got)


def _echo(q_in, q_out):
    while True:
        item = q_in.get()
        if item is None:
            break
        q_out.put(item)


def _drain_joinable(q):
    while True:
        item = q.get()
        q.task_done()
        if item is None:
            break


def _put_one_late(q, item, delay):
    time.sleep(delay)
    q.put(item)


def _get_one_late(q, out, delay):
    time.sleep(delay)
    out.put(q.get())


def _simple_echo(q_in, q_out):
    q_out.put(q_in.get() * 2)


def _put_big(q, size):
    q.put(b"x" * size)


# ---- single-process API ------------------------------------------------


def test_fifo_qsize_empty_full(ctx):
    q = ctx.Queue(3)
    assert q.empty() and not q.full()
    for i in range(3):
        q.put(i)
    assert q.full()
    # The stdlib's put() returns before its feeder thread has written.
    deadline = time.monotonic() + 5
    while q.qsize() != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.qsize() == 3
    assert [q.get() for _ in range(3)] == [0, 1, 2]
    assert q.empty() and q.qsize() == 0


def test_nowait_and_exceptions(ctx):
    q = ctx.Queue(1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    q.put_nowait("a")
    with pytest.raises(queue.Full):
        q.put_nowait("b")
    with pytest.raises(queue.Full):
        q.put("b", False)
    with pytest.raises(queue.Full):
        q.put("b", block=False, timeout=10)
    assert q.get(timeout=5) == "a"


def test_timeouts(ctx):
    q = ctx.Queue(1)
    for timeout in (0.2, -1, 0):
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(True, timeout)
        dt = time.monotonic() - t0
        assert dt < 2.0
        if timeout == 0.2:
            assert dt >= 0.15
    q.put(1)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2.0


def test_various_items(ctx):
    q = ctx.Queue()
    items = [
        None,
        True,
        0,
        -1,
        2**100,
        1.5,
        "",
        "é" * 1000,
        b"\0" * 7,
        (1, "a"),
        [1, [2, [3]]],
        {"k": (1, 2)},
        set(range(10)),
        bytearray(b"abc"),
        b"y" * 100000,
    ]
    for it in items:
        q.put(it)
    got = [q.get(timeout=10) for _ in items]
    assert got == items


def test_close(ctx):
    q = ctx.Queue()
    q.put(1)
    q.close()
    with pytest.raises(ValueError):
        q.put(2)
    with pytest.raises(ValueError):
        q.get()
    q.join_thread()
    q2 = ctx.Queue()
    q2.cancel_join_thread()
    q2.close()
    q2.join_thread()


def test_pickle_outside_spawning(ctx):
    for q in (ctx.Queue(), ctx.JoinableQueue(), ctx.SimpleQueue()):
        with pytest.raises(RuntimeError):
            pickle.dumps(q)


def test_joinable_task_done(ctx):
    q = ctx.JoinableQueue()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    q.put(1)
    q.put(2)
    q.get(timeout=5)
    q.task_done()
    q.get(timeout=5)
    q.task_done()
    q.join()
    with pytest.raises(ValueError):
        q.task_done()


def test_simple_queue(ctx):
    q = ctx.SimpleQueue()
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]
    assert q.empty()
    q.close()


# ---- across processes ---------------------------------------------------


def test_child_producer(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=_produce, args=(q, "p", 500))
    p.start()
    got = [q.get(timeout=30) for _ in range(500)]
    p.join(30)
    assert p.exitcode == 0
    assert got == [("p", i) for i in range(500)]


def test_echo_round_trip(ctx):
    a, b = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_echo, args=(a, b))
    p.start()
    for i in range(50):
        a.put(i)
        assert b.get(timeout=30) == i
    a.put(None)
    p.join(30)
    assert p.exitcode == 0


def test_blocked_get_woken_by_child(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=_put_one_late, args=(q, "late", 0.3))
    p.start()
    assert q.get(timeout=30) == "late"
    p.join(30)


def test_bounded_put_unblocked_by_child(ctx):
    q = ctx.Queue(1)
    out = ctx.Queue()
    q.put("first")
    p = ctx.Process(target=_get_one_late, args=(q, out, 0.3))
    p.start()
    q.put("second", timeout=30)
    assert out.get(timeout=30) == "first"
    assert q.get(timeout=5) == "second"
    p.join(30)


def test_joinable_join_with_worker(ctx):
    q = ctx.JoinableQueue()
    p = ctx.Process(target=_drain_joinable, args=(q,))
    p.start()
    for i in range(20):
        q.put(i)
    q.put(None)
    q.join()
    p.join(30)
    assert p.exitcode == 0


def test_simple_queue_child(ctx):
    a, b = ctx.SimpleQueue(), ctx.SimpleQueue()
    p = ctx.Process(target=_simple_echo, args=(a, b))
    p.start()
    a.put(21)
    assert b.get() == 42
    p.join(30)


def test_many_producers_many_consumers(ctx):
    nprod, ncons, n = 3, 2, 400
    q, out = ctx.Queue(), ctx.Queue()
    share = nprod * n // ncons
    procs = [
        ctx.Process(target=_produce, args=(q, k, n)) for k in range(nprod)
    ]
    procs += [
        ctx.Process(target=_consume, args=(q, out, share))
        for _ in range(ncons)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in range(ncons)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    everything = sorted(x for r in results for x in r)
    assert everything == sorted((k, i) for k in range(nprod) for i in range(n))
    # FIFO per producer, as seen by each consumer.
    for r in results:
        for k in range(nprod):
            seq = [i for (tag, i) in r if tag == k]
            assert seq == sorted(seq)


# ---- fastmp only ----------------------------------------------------------


def test_qsize_exact_immediately(fctx):
    q = fctx.Queue()
    for i in range(1000):
        q.put(i)
        assert q.qsize() == i + 1
    for _ in range(1000):
        q.get()
    assert q.qsize() == 0


def test_unpicklable_raises_in_put(fctx):
    q = fctx.Queue()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(lambda: None)
    import threading

    with pytest.raises(TypeError):
        q.put(threading.Lock())
    assert q.empty()
    q.put("fine")
    assert q.get() == "fine"


def test_big_item_from_child(fctx):
    q = fctx.Queue()
    size = 40 * 1024 * 1024
    p = fctx.Process(target=_put_big, args=(q, size))
    p.start()
    p.join(60)  # no "join before get" deadlock
    assert p.exitcode == 0
    data = q.get(timeout=10)
    assert len(data) == size and data == b"x" * size


def test_unbounded_never_blocks(fctx):
    q = fctx.Queue()
    chunk = b"z" * (1 << 20)
    for _ in range(64):  # 64 MiB with nobody reading
        q.put_nowait(chunk)
    assert q.qsize() == 64
    for _ in range(64):
        assert q.get_nowait() == chunk


def test_signature_and_names(fctx):
    import inspect
    import multiprocessing.queues as sq

    import fastmp.queues as fq

    assert fq.__all__ == sq.__all__
    q = fctx.Queue()
    assert list(inspect.signature(q.put).parameters) == [
        "obj",
        "block",
        "timeout",
    ]
    assert list(inspect.signature(q.get).parameters) == ["block", "timeout"]
    assert repr(q).startswith("<fastmp.queues.Queue object at")
    assert q.put(obj=1, block=True, timeout=None) is None
    assert q.get(block=True, timeout=None) == 1
    with pytest.raises(TypeError):
        q.put()
    with pytest.raises(TypeError):
        q.put(1, True, None, 4)
    with pytest.raises(TypeError):
        q.get(nonsense=1)
    with pytest.raises(TypeError):
        q.put(1, obj=2)


def test_empty_after_close(ctx):
    # Unused then closed: empty() still answers.
    for q in (ctx.Queue(), ctx.JoinableQueue()):
        q.close()
        q.join_thread()
        assert q.empty()
    # Used then closed: the reading side is gone.
    for q in (ctx.Queue(), ctx.JoinableQueue()):
        q.put("foo")
        q.close()
        q.join_thread()
        with pytest.raises(OSError, match="is closed"):
            q.empty()
    s = ctx.SimpleQueue()
    s.close()
    s.close()
    with pytest.raises(OSError, match="is closed"):
        s.empty()


def test_wrap_grow_and_shrink_keep_order(fctx):
    # Sizes chosen to make records wrap around the ring's end and the ring
    # grow while wrapped, then drain and shrink, several times over.
    import random

    rnd = random.Random(4)
    q = fctx.Queue()
    expect = []
    seq = 0
    for _ in range(300):
        for _ in range(rnd.randrange(1, 6)):
            size = rnd.choice([10, 1000, 20000, 70000, 300000])
            item = (seq, bytes([seq % 256]) * size)
            q.put(item)
            expect.append(item)
            seq += 1
        for _ in range(rnd.randrange(0, len(expect) + 1)):
            assert q.get_nowait() == expect.pop(0)
        assert q.qsize() == len(expect)
    while expect:
        assert q.get_nowait() == expect.pop(0)
    assert q.empty()


def _square(x):
    return x * x


def test_stdlib_pool_and_executor_with_fastmp_context(fctx):
    # The stdlib's Pool and ProcessPoolExecutor reach into their
    # SimpleQueue's pipe ends; with a fastmp context they must still work.
    import concurrent.futures
    import multiprocessing.pool

    with multiprocessing.pool.Pool(2, context=fctx) as pool:
        assert pool.map(_square, range(20)) == [x * x for x in range(20)]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=fctx) as ex:
        assert list(ex.map(_square, range(10))) == [x * x for x in range(10)]
    # Everyone else gets fastmp's own SimpleQueue.
    assert type(fctx.SimpleQueue()).__module__ == "fastmp.queues"


def test_which_simplequeue_each_requester_gets(fctx):
    # queues._stdlib_caller(), case by case with real requesters: the
    # stdlib's Pool and ProcessPoolExecutor get the stdlib's SimpleQueue
    # (they use its pipe ends), made with the fastmp context; everyone
    # else gets fastmp's.
    import concurrent.futures
    import multiprocessing.pool
    import multiprocessing.queues

    import fastmp
    import fastmp.queues

    stdlib_sq = multiprocessing.queues.SimpleQueue
    fastmp_sq = fastmp.queues.SimpleQueue
    with multiprocessing.pool.Pool(1, context=fctx) as pool:
        assert type(pool._inqueue) is stdlib_sq
        assert type(pool._outqueue) is stdlib_sq
        assert type(pool._inqueue._rlock) is fastmp.synchronize.Lock
        assert pool.map(_square, range(3)) == [0, 1, 4]
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=fctx) as ex:
        assert list(ex.map(_square, range(3))) == [0, 1, 4]
        assert type(ex._result_queue) is stdlib_sq
    # The user's code: through a context, the default context, the class.
    assert type(fctx.SimpleQueue()) is fastmp_sq
    assert type(fastmp.SimpleQueue()) is fastmp_sq
    assert type(fastmp_sq(ctx=fctx)) is fastmp_sq
    # Stdlib code that only calls the user's request back is not the
    # requester; nor is the user's code run by the stdlib.
    with concurrent.futures.ThreadPoolExecutor(1) as tex:
        assert type(tex.submit(fctx.SimpleQueue).result()) is fastmp_sq
        assert type(tex.submit(lambda: fctx.SimpleQueue()).result()) is (
            fastmp_sq
        )


def test_bad_timeout_rejected_without_waiting(ctx):
    # The stdlib checks a timeout that is not None even when nothing has
    # to wait: put() hands it to its semaphore, get() does arithmetic.
    q = ctx.Queue()
    for block in (True, False):
        with pytest.raises(TypeError):
            q.put(1, block, "x")
    with pytest.raises(TypeError):
        q.put(1, timeout="x")
    q.put(1)
    _wait_nonempty(q)
    for block in (True, False):
        with pytest.raises(TypeError):
            q.get(block, "x")
    with pytest.raises(TypeError):
        q.get(timeout="x")
    assert q.get(timeout=5) == 1
    with pytest.raises(TypeError):
        q.get(False, "x")
    bounded = ctx.Queue(2)
    with pytest.raises(TypeError):
        bounded.put(1, timeout="x")
    assert bounded.empty()


def _wait_nonempty(q):
    # The stdlib's put() returns before its feeder thread has written.
    deadline = time.monotonic() + 10
    while q.empty():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_empty_right_after_put_and_close(ctx):
    import sys

    q = ctx.Queue()
    q.put("foo")
    _wait_nonempty(q)
    # The stdlib's feeder thread closes the reading side only when it
    # handles close()'s sentinel; until then empty() still answers.
    # (A long switch interval keeps that thread from running early.)
    old = sys.getswitchinterval()
    sys.setswitchinterval(100)
    try:
        q.close()
        assert q.empty() is False
    finally:
        sys.setswitchinterval(old)
    q.join_thread()
    with pytest.raises(OSError, match="is closed"):
        q.empty()


def test_put_obj_keyword(ctx):
    # put_nowait(obj=...) and SimpleQueue.put(obj=...) as the stdlib's
    # Python methods take them; wrong calls give its TypeErrors.
    q = ctx.Queue()
    q.put_nowait(obj="a")
    assert q.get(timeout=30) == "a"
    with pytest.raises(TypeError, match=r"put_nowait\(\) missing 1"):
        q.put_nowait()
    s = ctx.SimpleQueue()
    s.put(obj="b")
    assert s.get() == "b"
    with pytest.raises(TypeError, match=r"put\(\) takes 2 positional"):
        s.put(1, 2)
    q.close()
    s.close()


def _get_with_interrupt(q, out, interrupt):
    # This process's blocked get returns Empty once interrupted; the
    # parent's interrupt (another process) leaves it waiting.
    import threading

    if interrupt:
        threading.Timer(0.3, q._interrupt_get).start()
    try:
        out.put(("item", q.get(timeout=120)))
    except queue.Empty:
        out.put(("empty", None))


def test_interrupt_get_wakes_this_process_only(fctx):
    # What a Pool's terminate() uses to wake its helper thread without
    # taking the queue's lock.
    import threading

    q, out = fctx.Queue(), fctx.Queue()
    t0 = time.monotonic()
    threading.Timer(0.2, q._interrupt_get).start()
    with pytest.raises(queue.Empty):
        q.get(timeout=120)
    assert time.monotonic() - t0 < 60  # (woken, not timed out)
    # Consumed by that get: the next one waits for an item as usual.
    q.put(1)
    assert q.get(timeout=30) == 1
    # Interrupted before the get: it returns Empty at once.
    q._interrupt_get()
    with pytest.raises(queue.Empty):
        q.get()
    # An item waiting is delivered, not hidden by the flag.
    q._interrupt_get()
    q.put(2)
    assert q.get(timeout=30) == 2
    with pytest.raises(queue.Empty):
        q.get(timeout=30)
    # A child's get is not interrupted by this process's flag, set before
    # the child started (a fork child has a copy of it) or while it waits.
    q._interrupt_get()
    p = fctx.Process(target=_get_with_interrupt, args=(q, out, False))
    p.start()
    time.sleep(0.3)
    q._interrupt_get()
    time.sleep(0.3)
    q.put("late")
    assert out.get(timeout=30) == ("item", "late")
    p.join(30)
    with pytest.raises(queue.Empty):
        q.get(timeout=30)  # (this process's flag)
    # ... but by its own.
    p = fctx.Process(target=_get_with_interrupt, args=(q, out, True))
    p.start()
    assert out.get(timeout=60) == ("empty", None)
    p.join(30)
