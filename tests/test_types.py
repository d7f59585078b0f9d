"""A user's typed code keeps its types with fastmp: mypy reports the same
diagnostics for a script written against ``import multiprocessing`` and
for the same script with ``import fastmp as multiprocessing``, including
the errors it must catch (fastmp's stubs, not an ``Any`` from the lazy
module ``__getattr__``)."""

import os
import re
import subprocess
import sys

import pytest
from support import child_env

# {mp} is "multiprocessing" or "fastmp"; both spellings have the same
# length in lines, so the diagnostics' line numbers compare as they are.
SCRIPT = '''\
import ctypes
from typing import List, Optional

import {mp} as multiprocessing
from {mp} import connection, pool, queues, shared_memory, synchronize


def work(q: "queues.Queue[int]", n: int) -> None:
    q.put(n * 2)


def square(x: int) -> int:
    return x * x


def main() -> None:
    q: "queues.Queue[int]" = multiprocessing.Queue()
    p = multiprocessing.Process(target=work, args=(q, 21))
    p.start()
    p.join(timeout=5.0)
    code: Optional[int] = p.exitcode
    doubled: int = q.get()
    counter = multiprocessing.Value("i", 0)
    with counter.get_lock():
        counter.value += 1
    arr = multiprocessing.Array(ctypes.c_double, [1.0, 2.0])
    total: float = sum(arr[:])
    lock: synchronize.Lock = multiprocessing.Lock()
    with lock:
        pass
    taken: bool = lock.acquire(timeout=0.1)
    with multiprocessing.Pool(2) as workers:
        squares: List[int] = workers.map(square, range(4))
        res: "pool.AsyncResult[int]" = workers.apply_async(square, (3,))
    a, b = multiprocessing.Pipe()
    a.send("x")
    end: connection.Connection = b
    shm = shared_memory.SharedMemory(create=True, size=16)
    size: int = shm.size
    shm.close()
    shm.unlink()
    ctx = multiprocessing.get_context("spawn")
    sq: "queues.SimpleQueue[str]" = ctx.SimpleQueue()
    sq.put("y")
    annotated: "multiprocessing.queues.Queue[int]" = q
    reveal_type(q)
    reveal_type(counter)
    reveal_type(arr)
    reveal_type(lock)
    reveal_type(ctx)
    reveal_type(multiprocessing.Pool)
    reveal_type(multiprocessing.Pipe)
    print(code, doubled, total, taken, squares, res, end, size, annotated)

    # Deliberate errors, which mypy must report with either package.
    multiprocessing.Semaphore("3")
    multiprocessing.this_does_not_exist()
    wrong: str = q.get()
    lock.acquire().upper()
'''

FASTMP_ONLY = '''\
from typing import List

import fastmp

version: str = fastmp.__version__
warning: type = fastmp.AbandonedLockWarning
assert issubclass(fastmp.AbandonedLockWarning, RuntimeWarning)


def square(x: int) -> int:
    return x * x


def cluster_pools() -> None:
    # Type-checked only, never called: Pool's cluster= (docs/cluster.md).
    with fastmp.Pool(2, cluster="local:2") as workers:
        squares: List[int] = workers.map(square, range(4))
    with fastmp.pool.Pool(2, cluster="local:2") as more:
        cubes: List[int] = more.map(square, range(4))
    print(squares, cubes)
'''


def mypy(tmp_path, name, source):
    """Type-check ``source`` as ``user.py`` in its own folder under
    tmp_path, with mypy run by this interpreter; return its output with
    the folder name taken out."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "user.py").write_text(source)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            str(tmp_path / ("cache-" + name)),
            "--no-color-output",
            "--show-error-codes",
            "user.py",
        ],
        cwd=str(folder),
        env=child_env(MYPYPATH=""),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "No module named mypy" not in proc.stderr, (
        "mypy is part of the test extra: pip install '.[test]'"
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.stdout.replace(str(folder) + os.sep, "")


@pytest.fixture(scope="module")
def diagnostics(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("types")
    return {
        mp: mypy(tmp_path, mp, SCRIPT.format(mp=mp))
        for mp in ("multiprocessing", "fastmp")
    }


def line_of(text):
    """The number of SCRIPT's first line with ``text`` in it."""
    lines = SCRIPT.splitlines()
    return 1 + next(i for i, s in enumerate(lines) if text in s)


def test_same_diagnostics_as_the_stdlib(diagnostics):
    # One difference, by design: fastmp.Pool takes cluster= besides the
    # stdlib's parameters (docs/cluster.md), so its revealed type has
    # that keyword-only parameter more; take exactly that text out of the
    # one line that reveals it and the outputs are the same.
    std = diagnostics["multiprocessing"]
    lines = diagnostics["fastmp"].splitlines(True)
    reveal = "user.py:%d: note: Revealed type is " % line_of(
        "reveal_type(multiprocessing.Pool)"
    )
    at = [i for i, s in enumerate(lines) if s.startswith(reveal)]
    assert len(at) == 1, (reveal, lines)
    cluster = re.findall(r", \*, cluster: [^=]*=", lines[at[0]])
    assert len(cluster) == 1, lines[at[0]]
    assert "str" in cluster[0] and "None" in cluster[0], cluster
    lines[at[0]] = lines[at[0]].replace(cluster[0], "")
    assert "".join(lines) == std


def test_deliberate_errors_are_reported(diagnostics):
    out = diagnostics["fastmp"]

    expected = [
        (line_of('Semaphore("3")'), r'incompatible type "str".*\[arg-type\]'),
        (
            line_of("this_does_not_exist()"),
            r'has no attribute "this_does_not_exist".*\[attr-defined\]',
        ),
        (line_of("wrong: str"), r"Incompatible types in assignment"),
        (line_of(".upper()"), r'"bool" has no attribute "upper"'),
    ]
    for line, pattern in expected:
        assert re.search(
            r"^user\.py:%d: error: .*%s" % (line, pattern), out, re.M
        ), (line, pattern, out)
    assert "Found 4 errors in 1 file" in out, out


def test_public_names_are_typed(diagnostics):
    # The revealed types are the stdlib's, never Any.
    out = diagnostics["fastmp"]
    revealed = re.findall(r'Revealed type is "(.*)"', out)
    assert len(revealed) == 7, out
    assert not [t for t in revealed if t == "Any"], out
    assert re.search(
        r'"multiprocessing\.queues\.Queue\[(builtins\.)?int\]"', out
    ), out
    assert "multiprocessing.sharedctypes.Synchronized[" in out, out
    assert "multiprocessing.context.SpawnContext" in out, out


def test_fastmp_own_names_are_typed(tmp_path):
    out = mypy(tmp_path, "own", FASTMP_ONLY)
    assert out.startswith("Success: no issues found"), out


def test_cluster_must_be_a_string(tmp_path):
    source = (
        "import fastmp\n\n"
        "fastmp.Pool(2, cluster=3)\n"
        "fastmp.pool.Pool(2, cluster=3)\n"
    )
    out = mypy(tmp_path, "cluster", source)
    for line in (3, 4):
        assert re.search(
            r'^user\.py:%d: error: Argument "cluster" to "Pool" has '
            r"incompatible type \"int\".*\[arg-type\]" % line,
            out,
            re.M,
        ), (line, out)
    assert "Found 2 errors in 1 file" in out, out


def test_misspelt_fastmp_name_is_an_error(tmp_path):
    out = mypy(tmp_path, "typo", "import fastmp\n\nfastmp.Quue()\n")
    assert re.search(
        r'^user\.py:3: error: Module has no attribute "Quue"', out, re.M
    ), out
