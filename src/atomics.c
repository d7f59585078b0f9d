/*
 * atomics.c -- lock-free atomics on integer Values: add, fetch_add,
 * exchange, compare_exchange, load and store, the methods of
 * Synchronized (sharedctypes.c).  Sequentially consistent __atomic
 * builtins on the shared bytes, through the fastmp_int_* helpers
 * (sharedctypes_internal.h), so a process dying mid-operation leaves the
 * value whole.
 */
#include "sharedctypes_internal.h"

static int
atomic_ready(sync_state *st)
{
    if (!fastmp_code_is_int(st->code)) {
        PyErr_SetString(PyExc_TypeError,
                        "atomic operations need an integer Value");
        return -1;
    }
    return 0;
}

/* The wrapper's state for an atomic operation, or NULL with TypeError set
 * when it wraps no integer value. */
static sync_state *
atomic_hold(SyncObject *self)
{
    sync_state *st = self->st;
    if (st == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "atomic operations need an integer Value");
        return NULL;
    }
    if (atomic_ready(st) < 0) {
        return NULL;
    }
    st->refs++;
    return st;
}

/* The bits of a Python integer truncated to the Value's width (wraps as
 * the C type does). */
static int
atomic_arg(PyObject *v, uint64_t *out)
{
    PyObject *idx = PyNumber_Index(v);
    if (idx == NULL) {
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLongMask(idx);
    Py_DECREF(idx);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = x;
    return 0;
}

/* The read-modify-write operations: add() returns the new value,
 * fetch_add() and exchange() the old one. */
enum { AT_ADD, AT_FETCH_ADD, AT_XCHG };

static PyObject *
atomic_op(SyncObject *self, PyObject *arg, int op)
{
    uint64_t n;
    sync_state *st = atomic_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = NULL;
    Py_buffer view;
    char *p;
    /* The argument first: its __index__ may run any code. */
    if (atomic_arg(arg, &n) == 0 && (p = fastmp_sync_mem(st, &view)) != NULL) {
        uint64_t old =
            fastmp_int_swap_or_add(p, st->itemsize, op != AT_XCHG, n);
        fastmp_sync_mem_done(&view);
        r = fastmp_int_from_bits(st->code, op == AT_ADD ? old + n : old);
    }
    fastmp_sync_drop(st);
    return r;
}

static PyObject *
value_add(SyncObject *self, PyObject *arg)
{
    return atomic_op(self, arg, AT_ADD);
}

static PyObject *
value_fetch_add(SyncObject *self, PyObject *arg)
{
    return atomic_op(self, arg, AT_FETCH_ADD);
}

static PyObject *
value_exchange(SyncObject *self, PyObject *arg)
{
    return atomic_op(self, arg, AT_XCHG);
}

static PyObject *
value_load(SyncObject *self, PyObject *Py_UNUSED(ignored))
{
    sync_state *st = atomic_hold(self);
    if (st == NULL) {
        return NULL;
    }
    Py_buffer view;
    char *p = fastmp_sync_mem(st, &view);
    PyObject *r = NULL;
    if (p != NULL) {
        uint64_t v = fastmp_int_atomic_load(p, st->itemsize);
        fastmp_sync_mem_done(&view);
        r = fastmp_int_from_bits(st->code, v);
    }
    fastmp_sync_drop(st);
    return r;
}

static PyObject *
value_store(SyncObject *self, PyObject *arg)
{
    uint64_t n;
    sync_state *st = atomic_hold(self);
    if (st == NULL) {
        return NULL;
    }
    Py_buffer view;
    char *p;
    if (atomic_arg(arg, &n) < 0 || (p = fastmp_sync_mem(st, &view)) == NULL) {
        fastmp_sync_drop(st);
        return NULL;
    }
    fastmp_int_atomic_store(p, st->itemsize, n);
    fastmp_sync_mem_done(&view);
    fastmp_sync_drop(st);
    Py_RETURN_NONE;
}

static PyObject *
value_compare_exchange(SyncObject *self, PyObject *const *args,
                       Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "compare_exchange expected 2 arguments, got %zd", nargs);
        return NULL;
    }
    uint64_t e, n;
    sync_state *st = atomic_hold(self);
    if (st == NULL) {
        return NULL;
    }
    Py_buffer view;
    char *p;
    if (atomic_arg(args[0], &e) < 0 || atomic_arg(args[1], &n) < 0
        || (p = fastmp_sync_mem(st, &view)) == NULL) {
        fastmp_sync_drop(st);
        return NULL;
    }
    int ok = fastmp_int_cas(p, st->itemsize, e, n);
    fastmp_sync_mem_done(&view);
    fastmp_sync_drop(st);
    return PyBool_FromLong(ok);
}
PyMethodDef fastmp_atomic_methods[] = {
    {"add", (PyCFunction)value_add, METH_O,
     PyDoc_STR("add($self, n, /)\n--\n\n"
               "Atomically add n (wrapping as the C type does); return "
               "the new value.")},
    {"fetch_add", (PyCFunction)value_fetch_add, METH_O,
     PyDoc_STR("fetch_add($self, n, /)\n--\n\n"
               "Atomically add n; return the value before the addition.")},
    {"exchange", (PyCFunction)value_exchange, METH_O,
     PyDoc_STR("exchange($self, v, /)\n--\n\n"
               "Atomically store v; return the previous value.")},
    {"compare_exchange", (PyCFunction)(void (*)(void))value_compare_exchange,
     METH_FASTCALL,
     PyDoc_STR("compare_exchange($self, expected, new, /)\n--\n\n"
               "Atomically store new if the value equals expected (both "
               "taken modulo the type's width); return True if stored.")},
    {"load", (PyCFunction)value_load, METH_NOARGS,
     PyDoc_STR("load($self, /)\n--\n\nAtomically read the value.")},
    {"store", (PyCFunction)value_store, METH_O,
     PyDoc_STR("store($self, v, /)\n--\n\n"
               "Atomically write v (wrapped to the type's width).")},
    {NULL, NULL, 0, NULL},
};
