"""What the tests share besides fixtures: the implementations and start
methods under test, where fastmp under test lives, and the environment a
child interpreter needs to import it (and a way to run a program under
``python -m fastmp``).  Tests import these from here;
conftest.py holds the fixtures only."""

import multiprocessing
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

IMPLS = ["multiprocessing", "fastmp"]
METHODS = [
    m
    for m in ("fork", "spawn", "forkserver")
    if m in multiprocessing.get_all_start_methods()
]


def is_fastmp(obj):
    """True when a context/module belongs to fastmp."""
    mod = getattr(type(obj), "__module__", "") or ""
    name = getattr(obj, "__name__", "") or ""
    return mod.startswith("fastmp") or name.startswith("fastmp")


TESTS = os.path.dirname(os.path.abspath(__file__))

# The folder fastmp under test was imported from (the installed package, or
# the source tree of an in-place build): what child interpreters need on
# their path.  The source tree alone has no compiled module, so it is never
# put on a child's path by itself.
try:
    import fastmp as _fastmp_pkg  # noqa: E402
    import fastmp._fastmp  # noqa: E402,F401
except ImportError as e:  # pragma: no cover (a setup error, not a test)
    raise ImportError(
        "fastmp under test has no compiled extension (%s). Install it "
        "(pip install '.[test]') and run the tests from the tests folder "
        "(cd tests && python -m pytest): run from the repository's root, "
        "`python -m pytest` imports the uncompiled source tree instead." % e
    ) from e

FASTMP_PATH = os.path.dirname(
    os.path.dirname(os.path.abspath(_fastmp_pkg.__file__))
)


def _site_dirs():
    import site

    dirs = set()
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover (old virtualenvs)
        pass
    if getattr(site, "ENABLE_USER_SITE", False) and site.USER_SITE:
        dirs.add(site.USER_SITE)
    return {os.path.realpath(d) for d in dirs}


# True when fastmp comes from site-packages: a child finds it by itself.
FASTMP_INSTALLED = os.path.realpath(FASTMP_PATH) in _site_dirs()


def child_env(env=None, **extra):
    """Environment for a child interpreter that must import the fastmp
    under test: ``env`` (default os.environ) with FASTMP_PATH first on
    PYTHONPATH unless fastmp is installed in site-packages, then ``extra``."""
    e = dict(os.environ if env is None else env)
    if not FASTMP_INSTALLED:
        e["PYTHONPATH"] = os.pathsep.join(
            [FASTMP_PATH] + [p for p in [e.get("PYTHONPATH")] if p]
        )
    e.update(extra)
    return e


def fastmp_env(**extra):
    """child_env() for ``python -m fastmp``: the fall-through to the
    stdlib allowed unless ``extra`` says otherwise."""
    e = child_env()
    e.pop("FASTMP_NO_FALLBACK", None)
    e.update(extra)
    return e


def python_m_fastmp(*args, env=None, cwd=None, timeout=120):
    """``python -m fastmp args...`` in a child interpreter (environment:
    fastmp_env(**env)); returns the CompletedProcess (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "fastmp", *args],
        capture_output=True,
        text=True,
        env=fastmp_env(**(env or {})),
        cwd=None if cwd is None else str(cwd),
        timeout=timeout,
    )


def run_fastmp(
    tmp_path, source, *args, env=None, opts=(), timeout=120, cwd=None
):
    """Run `source` (dedented into tmp_path/script.py) as an unchanged
    program under ``python -m fastmp [opts] script.py [args]``, in
    tmp_path unless `cwd` says otherwise."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return python_m_fastmp(
        *opts,
        str(script),
        *args,
        env=env,
        cwd=cwd or tmp_path,
        timeout=timeout,
    )


# A child started with ``python -c`` has the working directory first on its
# path.  Run from the repository's root, that is the uncompiled source tree,
# which would shadow the installed package: work from this folder instead.
if os.path.isfile(
    os.path.join(os.getcwd(), "fastmp", "__init__.py")
) and os.path.realpath(os.getcwd()) != os.path.realpath(FASTMP_PATH):
    os.chdir(TESTS)
