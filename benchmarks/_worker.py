"""Run one benchmark case for one implementation, in this fresh interpreter.

Usage (internal, driven by run.py):
    python benchmarks/_worker.py CASE IMPL TARGET_SECONDS REPEATS

Prints one JSON line: {"per_op": seconds, "n": iterations} on success
(the best of REPEATS timed runs of n iterations, after calibration),
{"na": reason} when the implementation lacks the API, or
{"error": message} when the case failed.
"""

import importlib
import json
import sys
import traceback


def calibrate(run, target, max_n):
    """Find n such that run(n) takes about ``target`` seconds.

    A run of a two-process case has a fixed cost (waking the helper), which
    on a busy machine can exceed the cost of a few operations; so after the
    first estimate, n is refined until one run really lasts half the target
    or more, i.e. until the fixed cost is small next to the operations.
    """
    run(1)  # warm-up: imports, page faults, helper wake-up
    n = 1
    while True:
        dt = run(n)
        if dt >= target / 4 or n >= max_n:
            break
        if dt <= 0:
            n = min(max_n, n * 10)
        else:
            n = min(max_n, max(n * 2, int(n * (target / 2) / dt)))
    for _ in range(6):
        if dt >= target / 2 or n >= max_n:
            break
        n = min(max_n, max(n + 1, int(n * min(10.0, target / dt))))
        dt = run(n)
    if dt > 0:
        n = int(n * target / dt)
    return max(1, min(max_n, n))


def measure(case, impl, target, repeats):
    import cases

    mp = None if impl in case.peers else importlib.import_module(impl)
    target = max(target, case.min_target)
    cases.TARGET, cases.REPEATS = target, repeats
    bench = case.fn(mp, impl)
    if isinstance(bench, cases.Direct):
        return {"per_op": bench.per_op, "n": bench.n}
    try:
        n = bench.n or calibrate(bench.run, target, case.max_n)
        # The least disturbed of the repeats: on a shared machine the
        # extra time of the others is interference, not the operation.
        per_op = min(bench.run(n) / n for _ in range(repeats))
    finally:
        bench.close()
    return {"per_op": per_op, "n": n}


def main(argv):
    name, impl, target, repeats = (
        argv[1],
        argv[2],
        float(argv[3]),
        int(argv[4]),
    )
    import cases

    case = cases.CASES[name]
    try:
        out = measure(case, impl, target, repeats)
    except cases.NotAvailable as e:
        out = {"na": str(e)}
    except Exception as e:  # noqa: BLE001 (reported in the table)
        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.flush()
    print("\n" + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv)
