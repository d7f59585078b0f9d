/*
 * oplog_cells.c -- the cells of a manager directory segment (oplog.c):
 * the 64-bit words that follow the directory's header, for the manager
 * Barrier and Condition (fastmp/_manager_sync.py), which keep their state
 * there and change it under the directory's owner lock (or, for a
 * Condition's waiter slots, with one CAS each).
 *
 * What lives in which cell, who writes it and what a process dying in
 * the middle leaves is described by each user (_manager_sync.py).  Here:
 * loads are acquire, stores release, read-modify-writes sequentially
 * consistent; a cell's low 32 bits (its first four bytes on a
 * little-endian machine) are a futex word that cell_wait sleeps on and
 * cell_wake wakes.  An index outside the segment raises IndexError.
 */
#include "shm_internal.h"

#include <limits.h>

/* Cell i of op's directory, or NULL with IndexError / TypeError set. */
static uint64_t *
cell_at(PyObject *op, PyObject *index)
{
    Py_ssize_t n;
    uint64_t *cells = fastmp_oplog_cells(op, &n);
    Py_ssize_t i = PyLong_AsSsize_t(index);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (i < 0 || i >= n) {
        PyErr_SetString(PyExc_IndexError, "manager cell out of range");
        return NULL;
    }
    return cells + i;
}

/* The futex half of a cell (see fastmp_owner_futex). */
static uint32_t *
cell_futex(uint64_t *c)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (uint32_t *)c;
#else
    return (uint32_t *)c + 1;
#endif
}

static int
u64_arg(PyObject *o, uint64_t *v)
{
    unsigned long long x = PyLong_AsUnsignedLongLong(o);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *v = (uint64_t)x;
    return 0;
}

/* cell(i): the value of cell i (an acquire load). */
PyObject *
fastmp_oplog_cell(PyObject *op, PyObject *index)
{
    uint64_t *c = cell_at(op, index);
    if (c == NULL) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(__atomic_load_n(c, __ATOMIC_ACQUIRE));
}

/* cell_set(i, v): store v (a release store). */
PyObject *
fastmp_oplog_cell_set(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "cell_set(i, value)");
        return NULL;
    }
    uint64_t *c = cell_at(op, args[0]);
    if (c == NULL || u64_arg(args[1], &v) < 0) {
        return NULL;
    }
    __atomic_store_n(c, v, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* cell_cas(i, expected, new): True when cell i held expected and now
 * holds new. */
PyObject *
fastmp_oplog_cell_cas(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t expected, v;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "cell_cas(i, expected, new)");
        return NULL;
    }
    uint64_t *c = cell_at(op, args[0]);
    if (c == NULL || u64_arg(args[1], &expected) < 0
        || u64_arg(args[2], &v) < 0) {
        return NULL;
    }
    return PyBool_FromLong(__atomic_compare_exchange_n(
        c, &expected, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
}

/* cell_add(i, n): add n (modulo 2**64) to cell i; the new value. */
PyObject *
fastmp_oplog_cell_add(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "cell_add(i, n)");
        return NULL;
    }
    uint64_t *c = cell_at(op, args[0]);
    if (c == NULL) {
        return NULL;
    }
    long long n = PyLong_AsLongLong(args[1]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(
        __atomic_add_fetch(c, (uint64_t)n, __ATOMIC_SEQ_CST));
}

/* cell_wait(i, expected, timeout): sleep while the futex half of cell i
 * equals expected (a u32), for at most one slice and never past timeout
 * seconds (None: no deadline), GIL released, signals checked.  False when
 * the timeout has passed, else True: the caller looks again (woken, the
 * word changed, or the slice ended). */
PyObject *
fastmp_oplog_cell_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t expected;
    fastmp_deadline d;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "cell_wait(i, expected, timeout)");
        return NULL;
    }
    uint64_t *c = cell_at(op, args[0]);
    if (c == NULL || u64_arg(args[1], &expected) < 0
        || fastmp_deadline_from_object(args[2], &d) < 0) {
        return NULL;
    }
    int r = fastmp_wait_futex(cell_futex(c), (uint32_t)expected, &d);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r == 0);
}

/* cell_wake(i, n): wake at most n sleepers of cell i (n < 0: all). */
PyObject *
fastmp_oplog_cell_wake(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "cell_wake(i, n)");
        return NULL;
    }
    uint64_t *c = cell_at(op, args[0]);
    if (c == NULL) {
        return NULL;
    }
    long n = PyLong_AsLong(args[1]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    (void)fastmp_platform_futex_wake(cell_futex(c),
                                     n < 0 || n > INT_MAX ? INT_MAX : (int)n);
    Py_RETURN_NONE;
}

/* owner_self(): this process's owner value (pid and start token), as the
 * owner lock writes it; a cell holding it names this process. */
PyObject *
fastmp_oplog_owner_self(PyObject *Py_UNUSED(op), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(fastmp_owner_self());
}

/* owner_dead(v): is the process named by owner value v dead (0 names
 * nobody: dead)?  A process that is only slow is never dead. */
PyObject *
fastmp_oplog_owner_dead(PyObject *Py_UNUSED(op), PyObject *arg)
{
    uint64_t v;
    if (u64_arg(arg, &v) < 0) {
        return NULL;
    }
    return PyBool_FromLong(fastmp_owner_dead(v));
}
