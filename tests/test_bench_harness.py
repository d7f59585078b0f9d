"""The benchmark harness runs end to end and writes well-formed output.

These tests check structure only (columns, keys, medians present, n/a
handled), never speed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from support import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")


def _run(*args, timeout=120):
    # From the repository's root, as the README runs it: the harness
    # measures the installed fastmp, not the uncompiled source tree there.
    proc = subprocess.run(
        [sys.executable, RUN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_list_names_every_documented_case():
    out = _run("--list").stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    for name in (
        "lock",
        "rlock_with",
        "semaphore",
        "lock_contended",
        "event_handoff",
        "lock_create",
        "process_fork",
        "process_spawn",
        "process_forkserver",
        "import",
        "import_first_use",
        "value_read",
        "value_write",
        "value_locked_incr",
        "value_atomic_add",
        "array_getitem",
        "array_slice_read",
        "array_slice_assign",
        "value_contended_incr",
        "shareable_list_getset",
        "shm_create",
        "shm_attach",
        "pipe_pingpong",
        "send_bytes_1KiB",
        "send_bytes_64KiB",
        "send_bytes_1MiB",
        "send_bytes_64MiB",
        "queue_1to1_small",
        "queue_1to1_1MiB",
        "queue_4to4",
        "joinable_queue",
        "fasterfifo_20to20",
        "pool_map",
        "pool_map_chunksize1",
        "pool_apply_async",
        "pool_imap_unordered",
        "pool_create_fork",
        "pool_create_spawn",
        "pool_create_forkserver",
        "pool_cpu_bound",
        "executor_submit",
        "executor_map",
        "executor_submit_program",
        "executor_map_program",
        "manager_dict",
        "manager_list",
        "manager_namespace",
        "manager_lock",
        "manager_queue",
        "manager_remote_dict",
    ):
        assert name in names


def test_unknown_case_is_an_error_not_a_crash():
    proc = subprocess.run(
        [sys.executable, RUN, "--only", "no_such_case"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_env(),
    )
    assert proc.returncode == 2
    assert "no case matches" in proc.stderr


@pytest.mark.timeout(120)
def test_tiny_run_end_to_end(tmp_path):
    js, md, png = (
        tmp_path / "out.json",
        tmp_path / "out.md",
        tmp_path / "out.png",
    )
    proc = _run(
        "--quick",
        "--only",
        "lock_create,value_atomic_add",
        "--rounds",
        "1",
        "--target",
        "0.01",
        "--json",
        str(js),
        "--markdown",
        str(md),
        "--plot",
        str(png),
    )

    # The stdout table: a header and one line per case.
    lines = proc.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("case"))
    for col in ("stdlib", "fastmp", "stdlib/fastmp", "goal", "status"):
        assert col in header
    assert any(ln.startswith("lock_create ") for ln in lines)
    assert any(ln.startswith("value_atomic_add ") for ln in lines)

    data = json.loads(js.read_text())
    assert data["meta"]["rounds"] == 1
    assert data["meta"]["quick"] is True
    rows = {r["name"]: r for r in data["cases"]}
    assert set(rows) == {"lock_create", "value_atomic_add"}

    lc = rows["lock_create"]
    assert set(lc["impls"]) == {"multiprocessing", "fastmp"}
    for info in lc["impls"].values():
        assert len(info["rounds"]) == 1
        assert isinstance(info["median"], float) and info["median"] > 0
        assert info["n"][0] >= 1
    assert lc["ratio"] == pytest.approx(
        lc["impls"]["multiprocessing"]["median"]
        / lc["impls"]["fastmp"]["median"]
    )
    assert lc["goal"] == 10.0
    assert lc["goal_met"] in (True, False)

    # The atomic case: the stdlib column runs the stated baseline; fastmp
    # either measures add(1) or is reported n/a -- never an error.
    aa = rows["value_atomic_add"]
    assert aa["baseline"]
    assert aa["impls"]["multiprocessing"]["median"] > 0
    fm = aa["impls"]["fastmp"]
    assert "error" not in fm
    assert fm["median"] is not None or fm.get("na")

    # Markdown: a pipe table with the same rows.
    text = md.read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| case | operation | stdlib | fastmp |")
    assert set(table[1]) <= set("|-: ")
    assert len(table) == 2 + 2
    ncols = table[0].count("|")
    assert all(ln.count("|") - ln.count("\\|") == ncols for ln in table)

    # The plot is optional: written when matplotlib is there, else skipped
    # with a message.
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in proc.stderr
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _harness():
    spec = importlib.util.spec_from_file_location("_bench_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(RUN))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(os.path.dirname(RUN))
    return mod


def test_summary_medians_paired_ratio_and_goals():
    run = _harness()
    case = run._cases.CASES["lock"]
    std = [{"per_op": t, "n": 10} for t in (4.0, 2.0, 8.0)]
    fm = [{"per_op": t, "n": 10} for t in (1.0, 1.0, 4.0)]
    row = run.summarize(case, {"multiprocessing": std, "fastmp": fm})
    assert row["impls"]["multiprocessing"]["median"] == 4.0
    assert row["impls"]["fastmp"]["median"] == 1.0
    assert row["ratio"] == 2.0  # median of 4, 2, 2
    assert row["ratio_of_medians"] == 4.0
    assert row["goal_met"] is True  # goal >= 2x

    na = [{"na": "missing"}] * 3
    row = run.summarize(case, {"multiprocessing": std, "fastmp": na})
    assert row["ratio"] is None and row["goal_met"] is None
    assert row["impls"]["fastmp"]["na"] == "missing"
    assert "n/a" in run.notes(row)

    err = [{"per_op": 1.0, "n": 1}, {"error": "boom"}, {"per_op": 1.0}]
    row = run.summarize(case, {"multiprocessing": std, "fastmp": err})
    assert row["impls"]["fastmp"]["error"] == "boom"
    assert row["ratio"] is None

    # A peer goal: met only when fastmp beats the peer.
    ff = run._cases.CASES["fasterfifo_20to20"]
    peer = [{"per_op": 0.5, "n": 1}] * 3
    row = run.summarize(
        ff, {"multiprocessing": std, "fastmp": fm, "faster_fifo": peer}
    )
    assert row["peer_ratio"]["faster_fifo"] == 0.5
    assert row["goal_met"] is False
    assert run.goal_ratio(row) == pytest.approx(4.0 / 0.5)


def test_goal_with_ratio_and_peers():
    run = _harness()
    # pool_map: a ratio goal and fastmp ahead of each peer; both must hold.
    case = run._cases.CASES["pool_map"]
    assert case.goal == 2.0 and set(case.peers) == {"mpire", "loky"}
    std = [{"per_op": 3.0, "n": 1}] * 3
    fm = [{"per_op": 1.0, "n": 1}] * 3
    fast_peer = [{"per_op": 0.5, "n": 1}] * 3
    slow_peer = [{"per_op": 2.0, "n": 1}] * 3
    row = run.summarize(
        case,
        {
            "multiprocessing": std,
            "fastmp": fm,
            "mpire": slow_peer,
            "loky": slow_peer,
        },
    )
    assert row["ratio"] == 3.0 and row["goal_met"] is True
    row = run.summarize(
        case,
        {
            "multiprocessing": std,
            "fastmp": fm,
            "mpire": slow_peer,
            "loky": fast_peer,
        },
    )
    assert row["goal_met"] is False
    slow_std = [{"per_op": 1.5, "n": 1}] * 3
    row = run.summarize(
        case,
        {
            "multiprocessing": slow_std,
            "fastmp": fm,
            "mpire": slow_peer,
            "loky": slow_peer,
        },
    )
    assert row["goal_met"] is False  # 1.5x < 2x
    # A peer that is not installed: the goal cannot be judged.
    na = [{"na": "loky is not installed"}] * 3
    row = run.summarize(
        case,
        {"multiprocessing": std, "fastmp": fm, "mpire": slow_peer, "loky": na},
    )
    assert row["goal_met"] is None
    assert "loky: n/a (loky is not installed)" in run.notes(row)
    # executor_submit: loky is shown, but the goal is the stdlib ratio.
    case = run._cases.CASES["executor_submit"]
    assert case.peers == ("loky",) and not case.beat_peers
    row = run.summarize(
        case, {"multiprocessing": std, "fastmp": fm, "loky": fast_peer}
    )
    assert row["goal_met"] is True


@pytest.mark.timeout(180)
def test_pool_case_with_fixed_count_and_peer(tmp_path):
    # A map() case runs a fixed number of items (no calibration); a peer
    # that is not installed reads n/a, never an error.
    js = tmp_path / "out.json"
    _run(
        "--quick",
        "--only",
        "pool_map_chunksize1",
        "--rounds",
        "1",
        "--json",
        str(js),
        timeout=170,
    )
    (row,) = json.loads(js.read_text())["cases"]
    cases = _harness()._cases
    for impl, info in row["impls"].items():
        missing = importlib.util.find_spec(impl) is None
        if impl in ("mpire", "loky") and missing:
            assert "not installed" in info["na"]
            continue
        assert "error" not in info, (impl, info)
        assert info["n"] == [cases.MAP1_ITEMS]
        assert info["median"] > 0


def test_select_by_name_glob_and_group():
    run = _harness()
    assert run.select("lock_create") == ["lock_create"]
    assert run.select("send_bytes_*") == [
        "send_bytes_1KiB",
        "send_bytes_64KiB",
        "send_bytes_1MiB",
        "send_bytes_64MiB",
    ]
    assert set(run.select("process")) == {
        "process_fork",
        "process_spawn",
        "process_forkserver",
        "import",
        "import_first_use",
    }
    assert run.select("nothing_like_this") == []
