"""Progress bars and insight for Pool jobs, local and in cluster mode.

Both are decided when a pool is made (``FASTMP_PROGRESS``,
``FASTMP_INSIGHT``, set by ``python -m fastmp --progress/--insight``):
when off, the pool holds None and a job pays one None check.

* Progress: a tqdm bar on stderr per map/starmap/imap/imap_unordered job,
  advanced as results are delivered (the job's ``_set`` is wrapped).  Only
  when stderr is a terminal, unless FASTMP_PROGRESS=force.
* Insight: the job's function is wrapped (``Timed``) so that each call
  records (worker, start, end, short args) where it runs: appended to a
  file of the pool's (local pools) or returned with the results (cluster
  pools).  When the pool is terminated or joined (or at exit), a per-worker
  table goes to stderr and, when FASTMP_INSIGHT names a file, JSON to it.
"""

import json
import os
import reprlib
import sys
import tempfile
import threading
import time

# ---------------------------------------------------------------- progress


def progress():
    """A Progress for a new pool, or None when bars are off."""
    v = os.environ.get("FASTMP_PROGRESS", "")
    if v in ("", "0"):
        return None
    if v != "force":
        try:
            if sys.stderr is None or not sys.stderr.isatty():
                return None
        except (AttributeError, ValueError):
            return None
    try:
        import tqdm
    except ImportError:
        sys.stderr.write(
            "fastmp: --progress needs tqdm: pip install 'fastmp[progress]'\n"
        )
        os.environ["FASTMP_PROGRESS"] = "0"
        return None
    return Progress(tqdm.tqdm)


def _columns():
    # stderr's terminal width (80 for one that reports no size).
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


_KIND_NAMES = {1: "imap", 2: "map", 3: "starmap"}


class Progress:
    def __init__(self, tqdm):
        self.tqdm = tqdm

    def track(self, result, total, kind, func, chunksize=1):
        """Show a bar for `result` (a MapResult or an imap iterator) of
        `total` items (None: unknown)."""
        from ._pool_core import _func_name

        name = "%s(%s)" % (_KIND_NAMES.get(kind, "map"), _func_name(func))
        bar = self.tqdm(
            total=total,
            desc=name,
            unit="item",
            file=sys.stderr,
            ncols=_columns(),
            mininterval=0.1,
        )
        orig_set = result._set
        if hasattr(result, "_number_left"):  # map: chunks of chunksize
            cs = result._chunksize
            if cs <= 0:
                bar.close()
                return

            def _set(i, obj):
                bar.update(min(cs, total - i * cs))
                after = orig_set(i, obj)
                if result._number_left == 0:
                    bar.close()
                return after

        else:
            orig_done = result._done

            def _set(i, obj):
                ok, value = obj
                n = len(value) if chunksize > 1 and ok else chunksize
                bar.update(n)
                return orig_set(i, obj)

            def _done():
                bar.close()
                orig_done()

            result._done = _done
        result._set = _set


# ---------------------------------------------------------------- insight

_records: list = []  # calls timed in this process, not yet sent
_files: dict = {}  # path -> fd (append), per process
_ident = None


def _who():
    global _ident
    if _ident is None or _ident[0] != os.getpid():
        name = None
        if "distributed" in sys.modules:
            try:
                from distributed import get_worker

                name = get_worker().address
            except Exception:  # noqa: BLE001 (not a Dask worker)
                name = None
        if name is None:
            from multiprocessing import current_process

            name = current_process().name
        _ident = (os.getpid(), "%s (pid %d)" % (name, os.getpid()))
    return _ident[1]


def short_args(args, kwds=None):
    r = reprlib.Repr()
    r.maxstring = 30
    r.maxother = 30
    r.maxlist = r.maxtuple = r.maxdict = 4
    text = ", ".join(r.repr(a) for a in args)
    if kwds:
        text += ", " + ", ".join(
            "%s=%s" % (k, r.repr(v)) for k, v in kwds.items()
        )
    return text[:80]


class Timed:
    """A task function that records each call: to the file `path` (a
    local pool's), or to this process's list (a cluster pool's, sent back
    with the results)."""

    def __init__(self, func, path):
        self.func = func
        self.path = path
        self.__qualname__ = getattr(func, "__qualname__", "?")

    def __call__(self, *args, **kwds):
        t0 = time.time()
        try:
            return self.func(*args, **kwds)
        finally:
            rec = (_who(), t0, time.time(), short_args(args, kwds))
            if self.path is None:
                _records.append(rec)
            else:
                _append(self.path, rec)


def _append(path, rec):
    fd = _files.get(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError:
            return
        _files[path] = fd
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    except OSError:
        pass


def take_records():
    """The calls timed here since the last take (cluster workers)."""
    out = _records[:]
    del _records[: len(out)]
    return out


def insight_for(pool, nworkers, local=False):
    """An Insight for a new pool, or None when insight is off."""
    v = os.environ.get("FASTMP_INSIGHT", "")
    if v in ("", "0"):
        return None
    return Insight(pool, nworkers, None if v == "1" else v, local)


_reports: list = []  # every pool reported in this process (for the JSON)
_reports_lock = threading.Lock()


class Insight:
    def __init__(self, pool, nworkers, json_path, local):
        self.name = "%s(%d)" % (
            "ClusterPool" if not local else "Pool",
            nworkers,
        )
        self.cluster = getattr(pool, "_cluster", None)
        self.created = time.time()
        self.json_path = json_path
        self.stats = {}
        self.lock = threading.Lock()
        self.done = False
        self.path = None
        if local:
            fd, self.path = tempfile.mkstemp(prefix="fastmp-insight-")
            os.close(fd)

    def wrap(self, func):
        return Timed(func, self.path)

    def add(self, records):
        with self.lock:
            for who, t0, t1, args in records:
                s = self.stats.get(who)
                if s is None:
                    s = self.stats[who] = {
                        "tasks": 0,
                        "busy": 0.0,
                        "first": t0,
                        "last": t1,
                        "slowest": [],
                    }
                s["tasks"] += 1
                s["busy"] += t1 - t0
                s["first"] = min(s["first"], t0)
                s["last"] = max(s["last"], t1)
                slow = s["slowest"]
                slow.append((t1 - t0, args))
                if len(slow) > 20:
                    slow.sort(reverse=True)
                    del slow[5:]

    def _read_file(self):
        if self.path is None:
            return
        recs = []
        try:
            with open(self.path) as f:
                for line in f:
                    try:
                        recs.append(json.loads(line))
                    except ValueError:  # a worker killed mid-write
                        pass
            os.unlink(self.path)
        except OSError:
            pass
        self.path = None
        self.add(recs)

    def summary(self):
        end = time.time()
        workers = []
        slowest = []
        for who, s in sorted(self.stats.items()):
            startup = max(0.0, s["first"] - self.created)
            busy = s["busy"]
            idle = max(0.0, end - self.created - startup - busy)
            workers.append(
                {
                    "worker": who,
                    "tasks": s["tasks"],
                    "busy": busy,
                    "idle": idle,
                    "startup": startup,
                }
            )
            slowest.extend((d, who, a) for d, a in s["slowest"])
        slowest.sort(reverse=True)
        return {
            "pool": self.name,
            "cluster": self.cluster,
            "wall": end - self.created,
            "workers": workers,
            "slowest": [
                {"seconds": d, "worker": w, "args": a}
                for d, w, a in slowest[:5]
            ],
        }

    def report(self):
        """Once: the table on stderr, the JSON to the file."""
        if self.done:
            return
        self.done = True
        self._read_file()
        rep = self.summary()
        sys.stderr.write(format_text(rep))
        sys.stderr.flush()
        if self.json_path:
            with _reports_lock:
                _reports.append(rep)
                with open(self.json_path, "w") as f:
                    json.dump({"pools": _reports}, f, indent=1)


def format_text(rep):
    lines = [
        "fastmp insight: %s%s, %.3f s"
        % (
            rep["pool"],
            " on %s" % rep["cluster"] if rep["cluster"] else "",
            rep["wall"],
        ),
        "  %-40s %7s %9s %9s %9s"
        % ("worker", "tasks", "busy s", "idle s", "start s"),
    ]
    for w in rep["workers"]:
        lines.append(
            "  %-40s %7d %9.3f %9.3f %9.3f"
            % (
                w["worker"][:40],
                w["tasks"],
                w["busy"],
                w["idle"],
                w["startup"],
            )
        )
    if rep["slowest"]:
        lines.append("  slowest tasks:")
        for s in rep["slowest"]:
            lines.append(
                "    %8.4f s  %s  (%s)"
                % (s["seconds"], s["args"], s["worker"])
            )
    return "\n".join(lines) + "\n"
