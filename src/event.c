/*
 * event.c -- Event: a flag and a generation count on futex words.
 *
 * The same shared block as a SemLock (so pickling is shared), created as
 * a counting semaphore with maxvalue 0: `word` is the flag (0 unset,
 * 1 set; plain atomic stores), `gen` counts set() calls (atomic add, after
 * the flag is stored) and is the word waiters sleep on, `nwaiters` counts
 * sleepers so that set() only wakes when someone sleeps.  A waiter returns
 * True once `gen` moved past what it read on entry, even if clear()
 * followed at once, as threading.Event's waiters do: it was waiting when
 * the flag was set.  Nobody holds anything, so a process dying inside any
 * method leaves nothing to recover.
 */
#include "fastmp.h"

static PyObject *
event_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:Event", kwlist,
                                     &ctx)) {
        return NULL;
    }
    return fastmp_sem_create(type, SEMLOCK_SEMAPHORE, 0, 0, Py_None);
}

static PyObject *
event_is_set(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(
        __atomic_load_n(&self->sem->word, __ATOMIC_ACQUIRE) != 0);
}

static PyObject *
event_set(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    shared_sem *s = self->sem;
    __atomic_store_n(&s->word, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&s->gen, 1, __ATOMIC_SEQ_CST);
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
    __atomic_store_n(&self->sem->word, 0, __ATOMIC_SEQ_CST);
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
    /* The generation first: a set() after this read moves it, whether or
     * not the flag is still set when we look. */
    uint32_t g = __atomic_load_n(&s->gen, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->word, __ATOMIC_SEQ_CST) != 0) {
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
    if (__atomic_load_n(&s->gen, __ATOMIC_SEQ_CST) != g) {
        Py_RETURN_TRUE;
    }
    /* Timed out: the flag as it is now. */
    return PyBool_FromLong(__atomic_load_n(&s->word, __ATOMIC_ACQUIRE) != 0);
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
    "fastmp.synchronize.Event", sizeof(SemLockObject), 0, FASTMP_SEM_SUB_FLAGS,
    event_slots,
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
