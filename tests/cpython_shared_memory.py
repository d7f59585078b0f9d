"""Run CPython's own _TestSharedMemory with fastmp.shared_memory in place
of multiprocessing.shared_memory (also inside the stdlib's
SharedMemoryManager).

    python tests/cpython_shared_memory.py fork|spawn|forkserver

Exit status 0 when every test passes (the stdlib's skips stay skips).
Tests that check stdlib internals fastmp deliberately does not share are
listed in docs/shared_memory.md; none needs to be excluded here: the ones
about the resource tracker run their child code against the stdlib.
"""

import multiprocessing
import sys
import unittest

import fastmp.shared_memory as fsm


def main(method):
    sys.modules["multiprocessing.shared_memory"] = fsm
    multiprocessing.shared_memory = fsm
    import test._test_multiprocessing as cpython_tests

    if cpython_tests.shared_memory is not fsm:
        raise SystemExit("substitution failed")
    ns = {"__name__": "cpython_shared_memory_" + method}
    cpython_tests.install_tests_in_module_dict(ns, method)
    suite = unittest.TestLoader().loadTestsFromTestCase(
        ns["WithProcessesTestSharedMemory"]
    )
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() and result.testsRun else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
