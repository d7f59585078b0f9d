"""The package a user gets: the sdist holds everything the build needs, a
wheel built from that sdist installs into a fresh virtual environment and
works there, and the metadata says what the project says.

Offline: the build runs without isolation, with this environment's
setuptools (the test extra brings a recent enough one), and the fresh
environment installs the wheel with ``--no-index``.
"""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest
from support import TESTS

import fastmp

ROOT = os.path.dirname(TESTS)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.isfile(os.path.join(ROOT, "pyproject.toml")),
        reason="not run from a source checkout",
    ),
]


def _require_build_tools():
    if importlib.util.find_spec("build") is None:
        pytest.skip(
            "the build package is not installed "
            "(pip install '.[test]' brings it)"
        )
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    if major < 77:
        pytest.skip(
            "setuptools %s is older than the build needs (77); "
            "pip install '.[test]' brings a newer one" % setuptools.__version__
        )


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """sdist and wheel made by ``python -m build`` from a copy of the
    checkout: the wheel is built from the sdist, so a file missing from
    the sdist breaks it."""
    _require_build_tools()
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        str(src),
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "*.so",
            "__pycache__",
            ".pytest_cache",
            ".venv",
            "venv*",
        ),
    )
    out = tmp / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--outdir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdists = glob.glob(str(out / "fastmp-*.tar.gz"))
    wheels = glob.glob(str(out / "fastmp-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(str(out))
    return sdists[0], wheels[0]


def test_sdist_contents(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    want = {
        "LICENSE",
        "pyproject.toml",
        "setup.py",
        "README.md",
        "fastmp/_fastmp.pyi",
        "fastmp/py.typed",
        "fastmp/__init__.py",
    }
    want |= {
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "src", "*.[ch]"))
    }
    assert "src/fastmp.h" in want
    assert want <= names, sorted(want - names)


def test_wheel_metadata(dist):
    sdist, wheel = dist
    assert os.path.basename(sdist) == "fastmp-%s.tar.gz" % fastmp.__version__
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(
            n for n in z.namelist() if n.endswith(".dist-info/METADATA")
        )
        meta = z.read(meta_name).decode()
        names = z.namelist()
    assert "Version: %s\n" % fastmp.__version__ in meta
    assert "License-Expression: MIT\n" in meta
    assert "License-File: LICENSE\n" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "fastmp/py.typed" in names and "fastmp/_fastmp.pyi" in names
    assert any(
        n.startswith("fastmp/_fastmp") and n.endswith(".so") for n in names
    )


def test_wheel_installs_and_works_in_a_fresh_venv(dist, tmp_path):
    _, wheel = dist
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    py = str(venv / "bin" / "python")
    # The fresh venv sees nothing of the tree under test (pip would
    # otherwise find fastmp already there through PYTHONPATH).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME")
    }
    r = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", wheel],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    code = textwrap.dedent("""
        import fastmp, sys
        lock = fastmp.Lock()
        assert lock.acquire(False) and not lock.acquire(False)
        lock.release()
        print(fastmp.__version__, fastmp.__file__.startswith(sys.prefix))
    """)
    r = subprocess.run(
        [py, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [fastmp.__version__, "True"]
    r = subprocess.run(
        [py, "-m", "fastmp", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("fastmp %s " % fastmp.__version__)
