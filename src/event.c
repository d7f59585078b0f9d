/*
 * event.c -- Event: a flag and a generation count on futex words.
 *
 * The same shared block as a SemLock (so pickling is shared), created as
 * a counting semaphore with maxvalue 0.  `gen` is the one word of its
 * state, changed by single atomic operations only: bit 0 is the flag,
 * the bits above count the set() calls that raised it (set: CAS from an
 * unset value v to (v + 2) | 1; clear: atomic and of ~1).  Waiters sleep
 * on it; `nwaiters` counts them so that set() only wakes when someone
 * sleeps.  A waiter returns True once the count moved past what it read
 * on entry, even if clear() followed at once, as threading.Event's
 * waiters do: it was waiting when the flag was set.  Flag and count
 * change together, so a waiter can never see one without the other.
 * Nobody holds anything, so a process dying inside any method leaves
 * nothing to recover.
 */
#include "semlock_internal.h"

static PyObject *
event_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:Event", kwlist, &ctx)) {
        return NULL;
    }
    return fastmp_sem_create(type, SEMLOCK_SEMAPHORE, 0, 0, Py_None);
}

static PyObject *
event_is_set(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(__atomic_load_n(&self->sem->gen, __ATOMIC_ACQUIRE)
                           & 1);
}

static PyObject *
event_set(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    shared_sem *s = self->sem;
    uint32_t v = __atomic_load_n(&s->gen, __ATOMIC_SEQ_CST);
    do {
        if (v & 1) {
            Py_RETURN_NONE; /* already set: nobody is waiting for it */
        }
    } while (!__atomic_compare_exchange_n(&s->gen, &v, (v + 2) | 1, 1,
                                          __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    if (__atomic_load_n(&s->nwaiters, __ATOMIC_SEQ_CST) != 0) {
        if (fastmp_platform_futex_wake(&s->gen, INT32_MAX) < 0) {
            return fastmp_oserror_syscall("futex");
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
event_clear(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)__atomic_fetch_and(&self->sem->gen, ~UINT32_C(1), __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
event_wait(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames)
{
    shared_sem *s = self->sem;
    static const fastmp_argspec spec = {
        "Event.wait", FASTMP_ARGS_PY, 1, 0, {"timeout"}};
    PyObject *timeout;
    if (fastmp_parse_args(&spec, args, nargs, kwnames, &timeout) < 0) {
        return NULL;
    }
    fastmp_deadline d;
    if (fastmp_deadline_from_object(timeout, &d) < 0) {
        return NULL;
    }
    /* Flag and count in one read: a set() after it moves the count,
     * whether or not the flag is still set when we look again. */
    uint32_t g = __atomic_load_n(&s->gen, __ATOMIC_SEQ_CST);
    if (g & 1) {
        Py_RETURN_TRUE;
    }
    __atomic_add_fetch(&s->nwaiters, 1, __ATOMIC_SEQ_CST);
    int r = 0;
    while (__atomic_load_n(&s->gen, __ATOMIC_SEQ_CST) == g) {
        r = fastmp_wait_futex_spin(&s->gen, g, &d, &self->spin);
        if (r != 0) {
            break;
        }
    }
    __atomic_sub_fetch(&s->nwaiters, 1, __ATOMIC_SEQ_CST);
    if (r < 0) {
        return NULL;
    }
    uint32_t now = __atomic_load_n(&s->gen, __ATOMIC_SEQ_CST);
    if ((now >> 1) != (g >> 1)) {
        Py_RETURN_TRUE;
    }
    /* Timed out: the flag as it is now. */
    return PyBool_FromLong(now & 1);
}

static PyMethodDef event_methods[] = {
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS,
     "is_set($self, /)\n--\n\nReturn True if the flag is set."},
    {"set", (PyCFunction)event_set, METH_NOARGS,
     "set($self, /)\n--\n\nSet the flag and wake every waiter."},
    {"clear", (PyCFunction)event_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nReset the flag."},
    {"wait", (PyCFunction)(void (*)(void))event_wait,
     METH_FASTCALL | METH_KEYWORDS,
     "wait($self, /, timeout=None)\n--\n\nBlock until the flag is set "
     "or the timeout passes; return the flag."},
    {"_state", (PyCFunction)fastmp_sem_state, METH_NOARGS,
     "_state($self, /)\n--\n\nWhat _rebuild takes."},
    {"_rebuild", (PyCFunction)fastmp_sem_rebuild, METH_VARARGS | METH_CLASS,
     "_rebuild(segment, offset, kind, maxvalue, name, /)\n--\n\n"
     "Attach to an existing Event (in a child process)."},
    {"__reduce__", (PyCFunction)fastmp_sem_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickle (only while spawning a child)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot event_slots[] = {
    {Py_tp_new, event_new},
    {Py_tp_dealloc, fastmp_sem_dealloc},
    {Py_tp_traverse, fastmp_sem_traverse},
    {Py_tp_clear, fastmp_sem_tp_clear},
    {Py_tp_repr, fastmp_sem_repr},
    {Py_tp_methods, event_methods},
    {Py_tp_members, fastmp_sem_sub_members},
    {Py_tp_doc, "Event(*, ctx=None)\n--\n\nAn event shared by processes."},
    {0, NULL},
};

static PyType_Spec event_spec = {
    "fastmp.synchronize.Event", sizeof(SemLockObject), 0,
    FASTMP_SEM_SUB_FLAGS,       event_slots,
};

int
fastmp_event_exec(PyObject *m)
{
    PyObject *ev = PyType_FromModuleAndSpec(m, &event_spec, NULL);
    if (ev == NULL) {
        return -1;
    }
    if (PyModule_AddObject(m, "Event", ev) < 0) {
        Py_DECREF(ev);
        return -1;
    }
    return 0;
}
