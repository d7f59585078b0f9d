"""Run CPython's own multiprocessing tests with fastmp as multiprocessing.

    python tests/cpython_suite.py --start-method fork|spawn|forkserver
        [--classes _TestLock,_TestEvent ...] [--timeout 60] [-v]

Runs the running interpreter's ``test._test_multiprocessing`` (processes
flavour) with ``multiprocessing`` aliased to fastmp in the test process and
in every child (the same aliasing as ``python -m fastmp``).  Each test has
a time limit: a worker process runs the tests and streams results; if a
test exceeds the limit the worker's whole process group is killed, the test
counts as failed, and a new worker continues with the next test.

Honesty: before any test runs, the worker checks that ``multiprocessing``
is fastmp, that the test classes' ``Process`` is fastmp's, and creates one
object per class with the factory the class tests (``Lock()``,
``Value('i')`` ...).  A class whose object is not fastmp's (fastmp lacks
that module, so it fell through to the stdlib) is reported separately and
its tests are NOT counted as passed.  The stdlib's own skips stay skips.

The last line reads ``N passed, M failed, S skipped, F not counted``;
the exit status is 0 only when nothing failed and nothing fell through.
"""

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Started with SIGINT ignored (a background job), every child would
# inherit that and CPython's tests that expect KeyboardInterrupt would
# fail for a reason outside fastmp; a handler here is reset to the
# default in exec'd children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_MANAGER_PROBE = "__import__('multiprocessing.managers').managers.SyncManager"

# Test class -> (fastmp module it exercises, factory call that must give a
# fastmp object).  Adding a class to the run is one line here.
CLASSES = {
    "_TestProcess": ("context", "Process()"),
    "_TestSubclassingProcess": ("context", "Process()"),
    "_TestLock": ("synchronize", "Lock()"),
    "_TestSemaphore": ("synchronize", "Semaphore()"),
    "_TestCondition": ("synchronize", "Condition()"),
    "_TestEvent": ("synchronize", "Event()"),
    "_TestBarrier": ("synchronize", "Barrier(1)"),
    "_TestValue": ("sharedctypes", "Value('i')"),
    "_TestArray": ("sharedctypes", "Array('i', 1)"),
    # Raw objects are plain ctypes objects over arena memory by design;
    # the synchronized ones show whose sharedctypes is in use.
    "_TestSharedCTypes": ("sharedctypes", "Value('i')"),
    "_TestSharedMemory": (
        "shared_memory",
        "__import__('multiprocessing.shared_memory')"
        ".shared_memory.SharedMemory",
    ),
    "_TestQueue": ("queues", "Queue()"),
    "_TestConnection": ("connection", "Pipe()[0]"),
    "_TestListener": (
        "connection",
        "__import__('multiprocessing.connection').connection.Listener",
    ),
    "_TestListenerClient": (
        "connection",
        "__import__('multiprocessing.connection').connection.Client",
    ),
    "_TestPoll": ("connection", "Pipe()[0]"),
    "_TestPicklingConnections": ("connection", "Pipe()[0]"),
    # wait() is the stdlib's selector loop re-exported (docs/connection.md);
    # what the class exercises is fastmp's Connections.
    "TestWait": ("connection", "Pipe()[0]"),
    "TestSimpleQueue": ("queues", "SimpleQueue()"),
    # The pool classes: the Pool class itself shows whose pool is in use
    # (making one here would leave a pool running).
    "_TestPool": ("pool", "__import__('multiprocessing.pool').pool.Pool"),
    "_TestPoolWorkerErrors": (
        "pool",
        "__import__('multiprocessing.pool').pool.Pool",
    ),
    "_TestPoolWorkerLifetime": (
        "pool",
        "__import__('multiprocessing.pool').pool.Pool",
    ),
    # (Its other test starts a manager: both are fastmp's.)
    "TestInitializers": (
        "pool",
        "__import__('multiprocessing.pool').pool.Pool",
    ),
    "TestPoolNotLeakOnFailure": (
        "pool",
        "__import__('multiprocessing.pool').pool.Pool",
    ),
    # Managers: the manager flavours of the classes above run under their
    # full names (WithManagerTest...); the probe is the manager class the
    # tests start.
    "WithManagerTestContainers": ("managers", _MANAGER_PROBE),
    "WithManagerTestMyManager": ("managers", _MANAGER_PROBE),
    "WithManagerTestRemoteManager": ("managers", _MANAGER_PROBE),
    "_TestManagerRestart": ("managers", _MANAGER_PROBE),
    "WithManagerTestManagerRestart": ("managers", _MANAGER_PROBE),
    "TestSyncManagerTypes": ("managers", _MANAGER_PROBE),
    "WithManagerTestBarrier": ("managers", _MANAGER_PROBE),
    "WithManagerTestCondition": ("managers", _MANAGER_PROBE),
    "WithManagerTestEvent": ("managers", _MANAGER_PROBE),
    "WithManagerTestLock": ("managers", _MANAGER_PROBE),
    "WithManagerTestPool": ("managers", _MANAGER_PROBE),
    "WithManagerTestQueue": ("managers", _MANAGER_PROBE),
    "WithManagerTestSemaphore": ("managers", _MANAGER_PROBE),
}

# Classes known to the runner but not run by default.
OPTIONAL = {}

# Tests left out on purpose, with the reason.  Keep this empty or tiny.
EXCLUDED = {
    # fastmp's Queue pickles in put() (no feeder thread), so an unpicklable
    # item raises there (only a subclass that overrides the
    # _on_queue_feeder_error hook has it called instead); see
    # docs/queues.md.
    "WithProcessesTestQueue.test_queue_feeder_donot_stop_onexc": (
        "no feeder thread: put() raises the pickling error itself"
    ),
    # Inspects SimpleQueue._reader/_writer, the pipe ends a ring buffer
    # does not have; closing is tested in tests/test_queues.py.
    "TestSimpleQueue.test_closed": (
        "SimpleQueue has no pipe ends (_reader/_writer)"
    ),
}


def _class_name(name):
    """Name install_tests_in_module_dict gives the processes flavour."""
    return "WithProcesses" + name[1:] if name.startswith("_") else name


# ------------------------------------------------------------ module level
# Runs in the worker and, re-imported as __mp_main__, in spawn and
# forkserver children, which find the test classes here by name.


def _install():
    try:
        import fastmp  # noqa: F401  (the installed package)
    except ImportError:
        if ROOT not in sys.path:  # an in-place build in the source tree
            sys.path.insert(0, ROOT)
    from fastmp import _alias

    _alias.install()
    import test._test_multiprocessing as tmp

    ns = {"__name__": __name__}
    tmp.install_tests_in_module_dict(ns, "fork")
    for name in list(CLASSES) + list(OPTIONAL):
        cls = ns.get(_class_name(name))
        if cls is not None:
            globals()[_class_name(name)] = cls
    return tmp, ns


if os.environ.get("FASTMP_SUITE_WORKER") or __name__ != "__main__":
    _tmp_module, _installed_ns = _install()


# ------------------------------------------------------------ worker


def _emit(fd, **msg):
    os.write(fd, (json.dumps(msg) + "\n").encode())


class _StreamResult(unittest.TestResult):
    def __init__(self, fd):
        super().__init__()
        self.fd = fd
        self.outcome = None

    def startTest(self, test):
        super().startTest(test)
        self.outcome = ("passed", "")
        _emit(self.fd, event="start", test=test.id())

    def _set(self, status, detail):
        # A failure or error wins over a skip or a pass.
        if self.outcome is None or self.outcome[0] != "failed":
            self.outcome = (status, detail)

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._set("failed", self._exc_info_to_string(err, test))
        else:  # a class or module fixture failed
            _emit(
                self.fd,
                event="fixture",
                test=str(test),
                detail=self._exc_info_to_string(err, test),
            )

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set("failed", self._exc_info_to_string(err, test))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._set("failed", self._exc_info_to_string(err, subtest))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if self.outcome is not None:
            self._set("skipped", reason)
        else:  # a whole class skipped in setUpClass: stdlib skips stay skips
            _emit(
                self.fd,
                event="result",
                test=str(test),
                status="skipped",
                detail=reason,
            )

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set("passed", "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set("failed", "unexpected success")

    def stopTest(self, test):
        super().stopTest(test)
        status, detail = self.outcome or ("failed", "no outcome")
        _emit(
            self.fd,
            event="result",
            test=test.id(),
            status=status,
            detail=detail,
        )
        self.outcome = None


def _honesty(method, classes):
    """Per class: is what it tests fastmp's?  Returns {name: reason or ''}."""
    import multiprocessing

    import fastmp

    out = {}
    if multiprocessing is not fastmp:
        return {n: "multiprocessing is not fastmp" for n in classes}
    ctx = fastmp.get_context(method)
    for name in classes:
        mod, probe = {**CLASSES, **OPTIONAL}[name]
        cls = globals().get(_class_name(name))
        if cls is None:
            out[name] = "no such class in this Python's test suite"
            continue
        proc = getattr(cls, "Process", None)
        if proc is not None and not proc.__module__.startswith("fastmp"):
            out[name] = "Process is %s's" % proc.__module__
            continue
        try:
            obj = eval(
                probe,
                {"__builtins__": __builtins__},
                {
                    n: getattr(ctx, n)
                    for n in dir(ctx)
                    if not n.startswith("_")
                },
            )
        except Exception as e:  # noqa: BLE001
            out[name] = "probe %s raised %r" % (probe, e)
            continue
        owner = getattr(obj, "__module__", None) or type(obj).__module__
        if not owner.startswith("fastmp"):
            out[name] = "%s is %s's (fell through to the stdlib)" % (
                probe,
                owner,
            )
        else:
            out[name] = ""
    return out


def worker(method, classes, skip_ids, fd):
    import fastmp

    # The tests' module fixtures set the start method; the honesty probes
    # use the context of the method under test.
    _emit(fd, event="honesty", classes=_honesty(method, classes))
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name in classes:
        cls = globals().get(_class_name(name))
        if cls is None:
            continue
        for test in loader.loadTestsFromTestCase(cls):
            if test.id() in skip_ids or _short_id(test.id()) in EXCLUDED:
                continue
            suite.addTest(test)
    # setUpModule/tearDownModule of the installed module, for our method.
    ns = {"__name__": __name__}
    _tmp_module.install_tests_in_module_dict(ns, method)
    globals()["setUpModule"] = ns["setUpModule"]
    globals()["tearDownModule"] = ns["tearDownModule"]
    assert fastmp.get_context(method).get_start_method() == method
    result = _StreamResult(fd)
    suite.run(result)
    _emit(fd, event="done")


def _fastmp_path():
    """The folder to put on the worker's PYTHONPATH so that it imports the
    fastmp this driver found: None when that is the installed package in
    site-packages (the worker finds it by itself), else its folder (an
    in-place build in this source tree, or a PYTHONPATH entry)."""
    import importlib.util
    import site

    spec = importlib.util.find_spec("fastmp")
    if spec is None or not spec.origin:
        return ROOT
    path = os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
    dirs = set(getattr(site, "getsitepackages", lambda: [])())
    if getattr(site, "ENABLE_USER_SITE", False) and site.USER_SITE:
        dirs.add(site.USER_SITE)
    if os.path.realpath(path) in {os.path.realpath(d) for d in dirs}:
        return None
    return path


def _short_id(test_id):
    # "__main__.WithProcessesTestLock.test_lock"
    #   -> "WithProcessesTestLock.test_lock"
    return test_id.split(".", 1)[1] if "." in test_id else test_id


# ------------------------------------------------------------ driver


def _spawn_worker(args, classes, skip_ids, log, cwd):
    r, w = os.pipe()
    env = dict(os.environ)
    env["FASTMP_SUITE_WORKER"] = "1"
    env["FASTMP_SUITE_FD"] = str(w)
    path = _fastmp_path()
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [path] + [p for p in [env.get("PYTHONPATH")] if p]
        )
    env.pop("FASTMP_NO_FALLBACK", None)
    spec = json.dumps(
        {
            "method": args.start_method,
            "classes": classes,
            "skip": sorted(skip_ids),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", spec],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=[w],
        env=env,
        start_new_session=True,
        cwd=cwd,
    )
    os.close(w)
    return proc, r


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_lines(fd, buf, timeout):
    """Lines from fd within timeout: (lines, eof)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return [], False
    data = os.read(fd, 65536)
    if not data:
        return [], True
    buf.extend(data)
    lines = []
    while b"\n" in buf:
        i = buf.index(b"\n")
        lines.append(json.loads(bytes(buf[:i])))
        del buf[: i + 1]
    return lines, False


def drive(args):
    classes = args.classes
    results = {}  # test id -> (status, detail)
    test_class = {}  # test id -> class name
    honesty = {}
    done = set()
    log = tempfile.NamedTemporaryFile(
        prefix="fastmp-cpython-suite-", suffix=".log", delete=False
    )
    t_start = time.monotonic()
    # The worker and its children (the forkserver, the resource tracker:
    # ``python -c``) have their working directory first on sys.path; the
    # source tree there would shadow the installed package.  A folder of
    # their own also keeps the files the tests write out of the checkout.
    cwd = tempfile.mkdtemp(prefix="fastmp-cpython-suite-")
    while True:
        proc, fd = _spawn_worker(args, classes, done, log, cwd)
        buf = bytearray()
        current, since = None, time.monotonic()
        finished = False
        while True:
            limit = args.timeout if current else args.timeout + 120
            lines, eof = _read_lines(fd, buf, 1.0)
            for msg in lines:
                ev = msg["event"]
                if ev == "honesty":
                    honesty.update(msg["classes"])
                elif ev == "start":
                    current, since = msg["test"], time.monotonic()
                elif ev == "result":
                    tid = _short_id(msg["test"])
                    results[tid] = (msg["status"], msg["detail"])
                    done.add(msg["test"])
                    current = None
                    since = time.monotonic()
                    if args.verbose or msg["status"] == "failed":
                        print("%-7s %s" % (msg["status"], tid), flush=True)
                        if msg["status"] == "failed" and args.verbose:
                            print(msg["detail"], flush=True)
                elif ev == "fixture":
                    # A class or module fixture error fails the run.
                    results["<fixture> " + msg["test"]] = (
                        "failed",
                        msg["detail"],
                    )
                    print(
                        "fixture error %s\n%s" % (msg["test"], msg["detail"])
                    )
                elif ev == "done":
                    finished = True
            if finished or eof:
                break
            if time.monotonic() - since > limit:
                break
        if not finished:
            if current is not None:
                tid = _short_id(current)
                why = (
                    "timed out after %ss" % args.timeout
                    if not eof
                    else "worker died"
                )
                results[tid] = ("failed", why)
                done.add(current)
                print("failed  %s (%s)" % (tid, why), flush=True)
                _kill_group(proc)
                os.close(fd)
                continue
            _kill_group(proc)
            os.close(fd)
            print("worker stopped outside a test; see %s" % log.name)
            results["<worker>"] = ("failed", "worker stopped")
            break
        proc.wait()
        os.close(fd)
        _kill_group(proc)
        break
    elapsed = time.monotonic() - t_start
    import shutil

    shutil.rmtree(cwd, ignore_errors=True)

    for tid in results:
        cls = tid.split(".")[0]
        for name in classes:
            if _class_name(name) == cls:
                test_class[tid] = name
    counts = {"passed": 0, "failed": 0, "skipped": 0, "uncounted": 0}
    per_class = {}
    for tid, (status, _) in results.items():
        name = test_class.get(tid)
        c = per_class.setdefault(
            name, {"passed": 0, "failed": 0, "skipped": 0}
        )
        c[status] += 1
        if status == "passed" and honesty.get(name):
            counts["uncounted"] += 1
        else:
            counts[status] += 1
    print()
    print(
        "CPython %s test._test_multiprocessing, processes, start method "
        "%s, %.0f s (worker output: %s)"
        % (
            ".".join(map(str, sys.version_info[:3])),
            args.start_method,
            elapsed,
            log.name,
        )
    )
    for name in classes:
        c = per_class.get(name, {"passed": 0, "failed": 0, "skipped": 0})
        note = honesty.get(name, "not checked")
        print(
            "  %-28s %3d passed %3d failed %3d skipped  %s"
            % (
                name,
                c["passed"],
                c["failed"],
                c["skipped"],
                "fastmp" if note == "" else "NOT COUNTED: " + note,
            )
        )
    if EXCLUDED:
        print("  excluded on purpose: %s" % ", ".join(sorted(EXCLUDED)))
    print(
        "%d passed, %d failed, %d skipped, %d not counted (not fastmp's)"
        % (
            counts["passed"],
            counts["failed"],
            counts["skipped"],
            counts["uncounted"],
        )
    )
    return 0 if counts["failed"] == 0 and counts["uncounted"] == 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--start-method", default=None, choices=["fork", "spawn", "forkserver"]
    )
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated test classes (default: %s)" % ",".join(CLASSES),
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60,
        help="seconds per test (default 60)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        spec = json.loads(args.worker)
        fd = int(os.environ["FASTMP_SUITE_FD"])
        os.set_inheritable(fd, False)
        worker(spec["method"], spec["classes"], set(spec["skip"]), fd)
        return 0
    if args.start_method is None:
        import multiprocessing

        args.start_method = multiprocessing.get_start_method()
    if args.classes:
        args.classes = [
            c.strip() for c in args.classes.split(",") if c.strip()
        ]
        unknown = [
            c for c in args.classes if c not in CLASSES and c not in OPTIONAL
        ]
        if unknown:
            p.error(
                "unknown classes %s (add them to CLASSES or OPTIONAL)"
                % ", ".join(unknown)
            )
    else:
        args.classes = list(CLASSES)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
