"""Every lecture script in ../shared/lecture-examples runs unchanged through
``python -m fastmp`` and passes its .expected checks (check.py, both
buffered and unbuffered stdout).

Scripts listed in NO_FALLBACK run with FASTMP_NO_FALLBACK=1 as soon as
fastmp has every module they need: that proves they ran on fastmp alone.
The others may still fall through to the stdlib for what fastmp lacks.
"""

import concurrent.futures
import glob
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from support import FASTMP_PATH, ROOT


def _examples_dir():
    """<repo>/../shared/lecture-examples; FASTMP_LECTURE_EXAMPLES overrides
    it, and in a linked git worktree <main checkout>/../shared is tried."""
    env = os.environ.get("FASTMP_LECTURE_EXAMPLES")
    if env:
        return env
    here = os.path.join(os.path.dirname(ROOT), "shared", "lecture-examples")
    if os.path.isdir(here):
        return here
    try:
        common = subprocess.run(
            [
                "git",
                "-C",
                ROOT,
                "rev-parse",
                "--path-format=absolute",
                "--git-common-dir",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        common = ""
    if common:
        main = os.path.dirname(common)
        alt = os.path.join(os.path.dirname(main), "shared", "lecture-examples")
        if os.path.isdir(alt):
            return alt
    return here


EXAMPLES = _examples_dir()
CHECK = os.path.join(EXAMPLES, "check.py")

# script stem -> the fastmp modules it needs to run with no fall-through.
# Extend this as modules land.
NO_FALLBACK = {
    "s000_01_global_counter_not_shared": (),
    "s001_01_process_count": (),
    "s000_08_lock_workers": ("synchronize",),
    "s000_09_rlock_recursive": ("synchronize",),
    "s000_10_semaphore": ("synchronize",),
    "s000_11_event": ("synchronize",),
    "s000_13_barrier": ("synchronize",),
    "s001_04_rlock_print": ("synchronize",),
    "s000_02_value_lock_counter": ("synchronize", "sharedctypes"),
    "s000_03_value_typecodes": ("sharedctypes",),
    "s000_04_array_workers": ("sharedctypes",),
    "s000_05_rawvalue_rawarray": ("synchronize", "sharedctypes"),
    "s000_06_shared_memory_numpy": ("shared_memory",),
    "s000_07_shareable_list": ("shared_memory",),
    "s000_19_shared_memory_cleanup.py3fix": ("shared_memory",),
    "s001_05_value_array": ("sharedctypes",),
    "s002_01_value_array": ("sharedctypes",),
    "s003_01_value_no_lock": ("sharedctypes",),
    "s003_02_value_get_lock": ("synchronize", "sharedctypes"),
    "s003_03_value_array_showdate": ("sharedctypes",),
    "s000_16_queue_producer_consumer": ("queues",),
    "s000_17_joinable_queue": ("queues",),
    "s001_02_queue_put_get": ("queues",),
    "s000_18_pipe_sender_receiver": ("connection",),
    "s000_18_pipe_sender_receiver.py3fix": ("connection",),
    "s000_19_shared_memory_cleanup": ("shared_memory",),
    "s001_03_pipe_duplex": ("connection",),
    "s000_12_condition_manager_list": ("managers", "synchronize"),
    "s000_14_manager_dict_list": ("managers",),
    "s000_15_manager_types": ("managers",),
    "s002_02_manager_dict_list": ("managers",),
    "s003_04_basemanager_register": ("managers",),
    "s003_05_namespace_inner_mutable": ("managers",),
    "s003_05_namespace_inner_mutable.py3fix": ("managers",),
    "s003_06_namespace_reassign": ("managers",),
    "s003_06_namespace_reassign.py3fix": ("managers",),
}

# Scripts whose .expected checks an error message worded as newer CPythons
# word it (the scripts are broken on purpose): stem -> first such version.
NEEDS_PYTHON = {
    "s000_19_shared_memory_cleanup": (3, 10),
    "s003_05_namespace_inner_mutable": (3, 10),
    "s003_06_namespace_reassign": (3, 10),
}

EXPECTED = sorted(glob.glob(os.path.join(EXAMPLES, "*.expected")))
IDS = [os.path.basename(p)[: -len(".expected")] for p in EXPECTED]


def _checker_python():
    """An interpreter for check.py itself (it needs tomllib, 3.11+); the
    scripts still run on sys.executable."""
    if sys.version_info >= (3, 11):
        return sys.executable
    for name in ("python3.13", "python3.12", "python3.11", "python3"):
        exe = shutil.which(name)
        if exe is None:
            continue
        try:
            ok = subprocess.run(
                [exe, "-c", "import tomllib"], capture_output=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if ok.returncode == 0:
            return exe
    return None


CHECKER = _checker_python()

pytestmark = [
    pytest.mark.skipif(
        not os.path.isdir(EXAMPLES),
        reason="no lecture examples at %s" % EXAMPLES,
    ),
    pytest.mark.skipif(
        CHECKER is None,
        reason="check.py needs a Python 3.11+ (tomllib) and none was found",
    ),
]


def _fastmp_has(name):
    # fastmp's own module, not one that hands out the stdlib's.
    from fastmp import _alias

    return _alias._fastmp_has(name)


def no_fallback_for(stem):
    needs = NO_FALLBACK.get(stem)
    return needs is not None and all(_fastmp_has(n) for n in needs)


def _run(expected):
    stem = os.path.basename(expected)[: -len(".expected")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [FASTMP_PATH] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.pop("FASTMP_NO_FALLBACK", None)
    if no_fallback_for(stem):
        env["FASTMP_NO_FALLBACK"] = "1"
    cmd = [
        CHECKER,
        CHECK,
        "--cmd",
        "%s -m fastmp" % shlex.quote(sys.executable),
        expected,
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=EXAMPLES, timeout=600
    )
    return stem, r


@pytest.fixture(scope="module")
def results():
    # The scripts mostly sleep: run them a few at a time to keep the
    # whole file around a minute.
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        return dict(ex.map(_run, EXPECTED))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("expected", EXPECTED, ids=IDS)
def test_lecture_script(results, expected):
    stem = os.path.basename(expected)[: -len(".expected")]
    if sys.version_info < NEEDS_PYTHON.get(stem, (0,)):
        pytest.skip(
            "its .expected checks the SyntaxError wording of "
            "Python %d.%d+" % NEEDS_PYTHON[stem]
        )
    r = results[stem]
    out = r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if (
        r.returncode == 0
        and last.startswith("0 passed, 0 failed, ")
        and "skipped" in last
    ):
        pytest.skip(out.strip().splitlines()[0])
    assert r.returncode == 0, out
    assert " 0 failed" in last, out


def test_no_fallback_list_is_known():
    assert set(NO_FALLBACK) <= set(IDS)
    assert set(NEEDS_PYTHON) <= set(IDS)
