"""``python -m fastmp --progress`` and ``--insight`` on an unchanged script,
with local pools and in cluster mode: the bar on a terminal (a
pseudo-terminal here), nothing when stderr is not one, never on stdout;
the insight table on stderr and its JSON."""

import fcntl
import importlib.util
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap

import pytest
from support import child_env, python_m_fastmp

HAVE_TQDM = importlib.util.find_spec("tqdm") is not None
HAVE_DASK = importlib.util.find_spec("distributed") is not None
need_tqdm = pytest.mark.skipif(not HAVE_TQDM, reason="tqdm is not installed")
need_dask = pytest.mark.skipif(
    not HAVE_DASK, reason="Dask distributed is not installed"
)

SCRIPT = textwrap.dedent(
    """
    import time
    from multiprocessing import Pool

    def square(x):
        time.sleep(0.001 * (x == 7) * 50)
        return x * x

    if __name__ == "__main__":
        with Pool(2) as p:
            print(sum(p.map(square, range(50))))
            print(sum(p.imap(square, (i for i in range(30)))))
            print(sorted(p.imap_unordered(square, range(5))))
    """
)
OUT = "40425\n8555\n[0, 1, 4, 9, 16]\n"


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(SCRIPT)
    return str(path)


def _run(args, **env):
    return python_m_fastmp(*args, env=env, timeout=180)


def _run_pty(args, **env):
    """(stdout, what reached the terminal on stderr, exit status)."""
    master, slave = pty.openpty()
    # A terminal of 24 rows and 100 columns (a new pty has no size).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen(
        [sys.executable, "-m", "fastmp"] + args,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            r, _, _ = select.select([master], [], [], 120)
            if not r:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    out = p.stdout.read().decode()
    p.stdout.close()
    code = p.wait(60)
    return out, b"".join(chunks).decode(errors="replace"), code


@need_tqdm
def test_progress_on_a_terminal(script):
    out, term, code = _run_pty(["--progress", script])
    assert code == 0, term
    assert out == OUT
    assert "map(square)" in term and "50/50" in term
    assert "imap(square)" in term and "30" in term
    assert "5/5" in term


@need_tqdm
def test_progress_silent_when_not_a_terminal(script):
    r = _run(["--progress", script])
    assert r.returncode == 0, r.stderr
    assert r.stdout == OUT
    assert r.stderr == ""


@need_tqdm
def test_progress_forced(script):
    r = _run([script], FASTMP_PROGRESS="force")
    assert r.returncode == 0, r.stderr
    assert r.stdout == OUT
    assert "map(square)" in r.stderr and "50/50" in r.stderr


def test_progress_off_is_quiet(script):
    r = _run([script])
    assert r.stdout == OUT and r.stderr == ""


@need_tqdm
@need_dask
def test_progress_in_cluster_mode(script):
    out, term, code = _run_pty(["--progress", "--cluster", "local:2", script])
    assert code == 0, term
    assert out == OUT
    assert "map(square)" in term and "50/50" in term


def _check_insight(r, path, pool_name, cluster=None):
    assert r.returncode == 0, r.stderr
    assert r.stdout == OUT
    assert "fastmp insight: %s" % pool_name in r.stderr
    for col in ("worker", "tasks", "busy s", "idle s", "start s"):
        assert col in r.stderr
    assert "slowest tasks:" in r.stderr
    with open(path) as f:
        data = json.load(f)
    (pool,) = data["pools"]
    assert pool["pool"] == pool_name
    assert pool["cluster"] == cluster
    # Every call ran somewhere: 50 + 30 + 5 items.
    assert sum(w["tasks"] for w in pool["workers"]) == 85
    for w in pool["workers"]:
        assert w["busy"] >= 0 and w["idle"] >= 0 and w["startup"] >= 0
    # The slow item (7, 50 ms) is the slowest, with its argument.
    assert pool["slowest"][0]["args"] == "7"
    assert pool["slowest"][0]["seconds"] >= 0.05


def test_insight_local(script, tmp_path):
    path = str(tmp_path / "insight.json")
    r = _run(["--insight=%s" % path, script])
    _check_insight(r, path, "Pool(2)")
    assert r.stderr.count("PoolWorker") >= 1


def test_insight_env_text_only(script):
    r = _run([script], FASTMP_INSIGHT="1")
    assert r.returncode == 0 and r.stdout == OUT
    assert "fastmp insight: Pool(2)" in r.stderr


@need_dask
def test_insight_cluster(script, tmp_path):
    path = str(tmp_path / "insight.json")
    r = _run(["--insight=%s" % path, "--cluster", "local:2", script])
    _check_insight(r, path, "ClusterPool(2)", "local:2")
    assert r.stderr.count("tcp://127.0.0.1") >= 1


def test_help_names_the_switches():
    r = _run(["--help"])
    assert r.returncode == 0
    for opt in ("--cluster ADDRESS", "--progress", "--insight[=FILE]"):
        assert opt in r.stdout
    assert "pip install 'fastmp[cluster]'" in r.stdout
