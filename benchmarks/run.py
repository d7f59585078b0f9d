"""fastmp benchmark harness: the stdlib and fastmp, same run, same machine.

    python benchmarks/run.py [--quick] [--only PATTERN] [--rounds N]
                             [--json out.json] [--markdown out.md]
                             [--plot out.png] [--markdown-into DOC]
                             [--target SECONDS] [--list]

Every (case, implementation, round) runs in a fresh interpreter
(benchmarks/_worker.py); within a round the implementations run one after
the other (stdlib, fastmp, then any peer such as faster-fifo; the order is
reversed every other round), so slow drifts of a shared machine hit both
alike.  Each measurement calibrates its
iteration count to a target duration.  The table reports the median per-op
time over rounds for each implementation and the ratio stdlib/fastmp (the
median of the per-round ratios; > 1 means fastmp is faster), next to the
project's stated goal for it (docs/performance.md).

It measures the fastmp this interpreter imports: the installed package
(``pip install .``), or an in-place build put on ``PYTHONPATH``.
"""

import argparse
import datetime
import fnmatch
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cases as _cases  # noqa: E402 (found through the path set above)

IMPLS = ("multiprocessing", "fastmp")
PEER_LABELS = {
    "faster_fifo": "faster-fifo",
    "mpire": "mpire",
    "loky": "loky",
    "ray": "Ray Pool",
    "dask": "raw Dask futures",
    "UltraDict": "UltraDict",
}
# "No slower" goals are judged with this tolerance: two equal
# implementations differ by a few percent run to run on a shared machine.
NO_SLOWER_TOLERANCE = 0.95
WORKER_TIMEOUT = 240


def fmt_time(s):
    if s is None:
        return "n/a"
    if s < 1e-6:
        return "%.0f ns" % (s * 1e9)
    if s < 1e-3:
        return "%.2f µs" % (s * 1e6) if s < 1e-5 else "%.1f µs" % (s * 1e6)
    if s < 1:
        return "%.2f ms" % (s * 1e3)
    return f"{s:.2f} s"


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}x"


def select(only):
    """Case names matching a comma-separated list of names, globs or
    group names (e.g. ``lock_create``, ``send_bytes_*``, ``queue``)."""
    names = list(_cases.CASES)
    if not only:
        return names
    pats = [p.strip() for p in only.split(",") if p.strip()]
    return [
        n
        for n in names
        if any(
            fnmatch.fnmatchcase(n, p) or p == _cases.CASES[n].group
            for p in pats
        )
    ]


def _site_dirs():
    import site

    dirs = set(getattr(site, "getsitepackages", lambda: [])())
    if getattr(site, "ENABLE_USER_SITE", False) and site.USER_SITE:
        dirs.add(site.USER_SITE)
    return {os.path.realpath(d) for d in dirs}


def find_fastmp():
    """The folder of the fastmp package this interpreter imports (the
    installed one, or an in-place build on PYTHONPATH), or None.  The
    working directory is not searched: the workers run elsewhere."""
    import importlib.util

    spec = importlib.util.find_spec("fastmp")
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(os.path.abspath(spec.origin))


def compile_tree(pkg):
    """Byte-compile an in-place fastmp package, as `pip install` does.

    The stdlib's modules come with their .pyc files; measured from a source
    tree where nothing wrote fastmp's (PYTHONDONTWRITEBYTECODE, a read-only
    checkout), every fresh interpreter -- each spawn child, each import
    measurement -- would compile fastmp from source first.  An installed
    package was compiled by pip already."""
    import compileall

    if pkg and os.path.realpath(os.path.dirname(pkg)) not in _site_dirs():
        compileall.compile_dir(pkg, quiet=1)


def worker_env(quick, pkg=None):
    """The workers' environment: the folder of the fastmp measured first on
    PYTHONPATH, unless it is installed in site-packages."""
    env = dict(os.environ)
    parent = os.path.dirname(pkg) if pkg else None
    if parent and os.path.realpath(parent) not in _site_dirs():
        env["PYTHONPATH"] = os.pathsep.join(
            [parent]
            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
    if quick:
        env.setdefault("FASTMP_BENCH_IMPORT_PAIRS", "4")
    return env


def run_worker(name, impl, target, repeats, env):
    """One measurement in a fresh interpreter; returns the worker's dict."""
    argv = [
        sys.executable,
        os.path.join(HERE, "_worker.py"),
        name,
        impl,
        repr(target),
        str(repeats),
    ]
    # cwd: not the repository's root, whose uncompiled source tree would
    # shadow the installed package in ``python -c`` children.
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {WORKER_TIMEOUT} s"}
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        res = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (err.strip().splitlines() or ["no output"])[-1]
        res = {"error": f"exit code {proc.returncode}: {tail}"}
    if "error" in res and err.strip():
        # The table has room for one line; the whole story goes here.
        print(
            f"--- {name} [{impl}] failed; its stderr:\n{err.rstrip()}\n---",
            file=sys.stderr,
            flush=True,
        )
    return res


def summarize(case, impl_runs):
    """Medians per implementation, ratio, goal status for one case."""
    row = {
        "name": case.name,
        "group": case.group,
        "desc": case.desc,
        "goal": case.goal,
        "goal_text": case.goal_text,
        "baseline": case.baseline,
        "nbytes": case.nbytes,
        "impls": {},
    }
    for impl, runs in impl_runs.items():
        times = [r["per_op"] for r in runs if "per_op" in r]
        info = {
            "rounds": [r.get("per_op") for r in runs],
            "n": [r.get("n") for r in runs],
        }
        if times and len(times) == len(runs):
            info["median"] = statistics.median(times)
        else:
            info["median"] = None
            bad = [r for r in runs if "per_op" not in r]
            info["na" if "na" in bad[0] else "error"] = bad[0].get(
                "na"
            ) or bad[0].get("error")
        row["impls"][impl] = info
    std = row["impls"]["multiprocessing"]["median"]
    fm = row["impls"]["fastmp"]["median"]
    row["ratio_of_medians"] = std / fm if std and fm else None
    row["ratio"] = paired_ratio(impl_runs, "multiprocessing", "fastmp")
    peer_ratio = {}
    for peer in case.peers:
        peer_ratio[peer] = paired_ratio(impl_runs, peer, "fastmp")
    row["peer_ratio"] = peer_ratio
    row["goal_met"] = goal_status(case, row)
    return row


def paired_ratio(impl_runs, num, den):
    """Median over rounds of time(num) / time(den) within each round.

    The two measurements of a round run back to back, so each round's
    ratio sees (nearly) the same machine load; the median of these paired
    ratios is steadier on a shared machine than the ratio of the medians.
    """
    a, b = impl_runs.get(num), impl_runs.get(den)
    if not a or not b:
        return None
    if any("per_op" not in r for r in a + b):
        return None
    return statistics.median(x["per_op"] / y["per_op"] for x, y in zip(a, b))


def goal_status(case, row):
    """True/False when every part of the case's goal could be judged: the
    ratio stdlib/fastmp, and fastmp ahead of each peer where the goal says
    so; None when a figure it needs is missing."""
    met = []
    if case.goal is not None:
        if row["ratio"] is None:
            return None
        need = case.goal * (NO_SLOWER_TOLERANCE if case.goal == 1.0 else 1.0)
        met.append(row["ratio"] >= need)
    if case.peers and case.beat_peers:
        vals = list(row["peer_ratio"].values())
        if not vals or any(v is None for v in vals):
            return None
        met.append(all(v > 1.0 for v in vals))
    return all(met) if met else None


def goal_ratio(row):
    """The stdlib/fastmp ratio the goal asks for (for a peer goal: the
    ratio at which fastmp would be level with the peer)."""
    if row["goal"]:
        return row["goal"]
    std = row["impls"]["multiprocessing"]["median"]
    for impl, info in row["impls"].items():
        if impl not in IMPLS and info["median"] and std:
            return std / info["median"]
    return None


def status_text(row):
    met = row["goal_met"]
    if not row["goal_text"]:
        return ""
    return {True: "met", False: "not met", None: "n/a"}[met]


def notes(row):
    out = []
    if row["baseline"]:
        out.append("stdlib runs `{}`".format(row["baseline"]))
    if row.get("peer_rounds"):
        out.append("peers: {} rounds".format(row["peer_rounds"]))
    for impl, info in row["impls"].items():
        label = PEER_LABELS.get(impl, impl)
        if impl not in IMPLS and info["median"]:
            out.append(
                "{} {}; {}/fastmp {}".format(
                    label,
                    fmt_time(info["median"]),
                    label,
                    fmt_ratio(row["peer_ratio"].get(impl)),
                )
            )
        if info.get("na"):
            out.append("{}: n/a ({})".format(label, info["na"]))
        if info.get("error"):
            out.append("{}: error ({})".format(label, info["error"][:80]))
    if row["nbytes"]:
        for impl in IMPLS:
            m = row["impls"][impl]["median"]
            if m:
                out.append(
                    "{} {:.0f} MB/s".format(
                        "stdlib" if impl == "multiprocessing" else impl,
                        row["nbytes"] / m / 1e6,
                    )
                )
    return "; ".join(out)


COLUMNS = (
    "case",
    "operation",
    "stdlib",
    "fastmp",
    "stdlib/fastmp",
    "goal",
    "status",
    "notes",
)


def table_rows(rows):
    for r in rows:
        yield (
            r["name"],
            r["desc"],
            fmt_time(r["impls"]["multiprocessing"]["median"]),
            fmt_time(r["impls"]["fastmp"]["median"]),
            fmt_ratio(r["ratio"]),
            r["goal_text"],
            status_text(r),
            notes(r),
        )


def print_table(rows, file=sys.stdout):
    data = [COLUMNS] + [tuple(x) for x in table_rows(rows)]
    shown = [c[:7] for c in data]  # notes go below the table
    widths = [max(len(r[i]) for r in shown) for i in range(7)]
    widths[1] = min(widths[1], 48)
    for r in shown:
        cells = [r[0].ljust(widths[0]), r[1][:48].ljust(widths[1])]
        cells += [r[i].rjust(widths[i]) for i in (2, 3, 4)]
        cells += [r[5].ljust(widths[5]), r[6]]
        print("  ".join(cells).rstrip(), file=file)
    for r in data[1:]:
        if r[7]:
            print(f"  {r[0]}: {r[7]}", file=file)


def markdown(rows, meta):
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in table_rows(rows):
        cells = [(f"`{r[0]}`")] + [c.replace("|", "\\|") for c in r[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "{}, {} rounds per implementation (medians), target {:.3g} s per "
        "measurement{}; times are medians over rounds, the ratio is the "
        "median of the per-round ratios stdlib time / fastmp time (> 1: "
        "fastmp faster); load average {} at start, {} at end.".format(
            meta["python"],
            meta["rounds"],
            meta["target"],
            ", --quick" if meta["quick"] else "",
            meta["loadavg_start"],
            meta["loadavg_end"],
        )
    )
    return "\n".join(lines) + "\n"


BEGIN = "<!-- bench-table: begin (generated by benchmarks/run.py) -->"
END = "<!-- bench-table: end -->"


def splice(path, table, meta):
    """Replace the text between BEGIN and END in ``path`` with ``table``."""
    with open(path) as f:
        text = f.read()
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"{path} has no bench-table markers") from None
    stamp = "Run of {} on {} ({} CPUs), {}.\n\n".format(
        meta["date"], meta["platform"], meta["cpus"], meta["python"]
    )
    with open(path, "w") as f:
        f.write(head + BEGIN + "\n" + stamp + table + END + tail)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed: skipping the plot "
            "(pip install matplotlib)",
            file=sys.stderr,
        )
        return False
    pts = [r for r in rows if r["ratio"]]
    if not pts:
        print("no ratios to plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(pts) + 1.4))
    names = [r["name"] for r in pts][::-1]
    ratios = [r["ratio"] for r in pts][::-1]
    colors = []
    for r in pts[::-1]:
        met = r["goal_met"]
        colors.append(
            "#2a9d3f" if met else "#c0392b" if met is False else "#7f8c8d"
        )
    ax.barh(names, ratios, color=colors)
    for i, r in enumerate(pts[::-1]):
        goal = goal_ratio(r)
        if goal:
            ax.plot([goal, goal], [i - 0.4, i + 0.4], color="k", linewidth=1.5)
    ax.axvline(1.0, color="#555", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel(
        "stdlib time / fastmp time (log scale; > 1: fastmp "
        "faster; black tick: goal)"
    )
    ax.set_title("fastmp vs multiprocessing (green: goal met, red: not met)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="shorter measurements and fewer rounds (~2 min)",
    )
    ap.add_argument(
        "--only",
        metavar="PATTERN",
        help="comma-separated case names, globs or groups",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        help="rounds per implementation (default 7, 3 with --quick)",
    )
    ap.add_argument(
        "--target",
        type=float,
        help="seconds per measurement (default 0.1, 0.03 with --quick)",
    )
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    ap.add_argument("--plot", metavar="PATH")
    ap.add_argument(
        "--markdown-into",
        metavar="DOC",
        help="replace the table between the bench-table "
        "markers of DOC (e.g. docs/performance.md)",
    )
    ap.add_argument("--list", action="store_true", help="list the cases")
    args = ap.parse_args(argv)

    if args.list:
        for name, c in _cases.CASES.items():
            print(f"{name:<24} {c.group:<10} {c.desc}")
        return 0
    names = select(args.only)
    if not names:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 7)
    target = args.target or (0.03 if args.quick else 0.1)
    repeats = 1 if args.quick else 3
    pkg = find_fastmp()
    if pkg is None:
        print(
            "fastmp is not installed: run `pip install .` first; its "
            "column will read n/a",
            file=sys.stderr,
        )
    elif not any(
        f.startswith("_fastmp") and f.endswith(".so") for f in os.listdir(pkg)
    ):
        print(
            f"fastmp at {pkg} has no compiled extension: run `pip "
            "install .` (or build it in place); its column will read n/a",
            file=sys.stderr,
        )
    else:
        print(f"measuring fastmp from {pkg}", file=sys.stderr)
    compile_tree(pkg)
    env = worker_env(args.quick, pkg)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "python": f"CPython {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "target": target,
        "repeats": repeats,
        "quick": args.quick,
        "loadavg_start": round(os.getloadavg()[0], 2),
    }
    t_start = time.monotonic()
    rows = []
    for name in names:
        case = _cases.CASES[name]
        impls = IMPLS + case.peers
        runs = {i: [] for i in impls}
        t0 = time.monotonic()
        peer_rounds = min(rounds, case.peer_rounds or rounds)
        for rnd in range(rounds):
            # A B, B A, A B, ...: a drift of the machine's load during the
            # case then weighs on both implementations alike.
            for impl in impls if rnd % 2 == 0 else impls[::-1]:
                if impl in case.peers and rnd >= peer_rounds:
                    continue
                runs[impl].append(run_worker(name, impl, target, repeats, env))
        row = summarize(case, runs)
        if peer_rounds < rounds:
            row["peer_rounds"] = peer_rounds
        rows.append(row)
        std = fmt_time(row["impls"]["multiprocessing"]["median"])
        fm = fmt_time(row["impls"]["fastmp"]["median"])
        print(
            f"[{time.monotonic() - t0:5.1f}s] {name:<24} stdlib {std:<10} "
            f"fastmp {fm:<10} {fmt_ratio(row['ratio'])}",
            file=sys.stderr,
            flush=True,
        )
    meta["seconds"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    print()
    print_table(rows)
    print(
        f"\n{meta['python']} on {meta['platform']}, {meta['cpus']} CPUs; "
        f"median of {rounds} round(s); total {meta['seconds']:.0f} s; "
        f"load average {meta['loadavg_start']} at start, "
        f"{meta['loadavg_end']} at end"
    )
    if max(meta["loadavg_start"], meta["loadavg_end"]) > (meta["cpus"] or 1):
        print(
            "warning: the machine was busy (load average above the CPU "
            "count): expect noisy figures",
            file=sys.stderr,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "cases": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, meta))
    if args.markdown_into:
        splice(args.markdown_into, markdown(rows, meta), meta)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
