/*
 * semlock_types.c -- the Python side of SemLock: the SemLock type, its
 * methods and the stdlib-named subtypes Lock, RLock, Semaphore and
 * BoundedSemaphore (C subtypes).  The shared_sem core is semlock.c; the
 * `with` descriptors semlock_with.c; Event event.c.
 */
#include "semlock_internal.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

/* ---- the Python type --------------------------------------------- */

static SemLockObject *
semlock_alloc(PyTypeObject *type, int kind, int maxvalue, PyObject *name)
{
    SemLockObject *self = (SemLockObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->kind = kind;
    self->maxvalue = maxvalue;
    self->mutex = (kind == SEMLOCK_RECURSIVE_MUTEX || maxvalue == 1);
    self->name = Py_NewRef(name);
    self->slot_idx = -1;
    fastmp_spin_init(&self->spin);
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    /* 3.11 specializes `lock.acquire()` on an object with an instance
     * dict only once that dict exists (3.12 copes with a missing one);
     * without it every call pays a full method lookup. */
    self->dict = PyDict_New();
    if (self->dict == NULL) {
        Py_DECREF(self);
        return NULL;
    }
#endif
    return self;
}

static PyObject *
semlock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "value",  "maxvalue",
                             "name", "unlink", NULL};
    int kind, value, maxvalue, unlink;
    PyObject *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiOp:SemLock", kwlist,
                                     &kind, &value, &maxvalue, &name,
                                     &unlink)) {
        return NULL;
    }
    if (kind != SEMLOCK_RECURSIVE_MUTEX && kind != SEMLOCK_SEMAPHORE) {
        PyErr_SetString(PyExc_ValueError, "unrecognized kind");
        return NULL;
    }
    return fastmp_sem_create(type, kind, value, maxvalue, name);
}

/* A new SemLock of `type` with a fresh shared block. */
PyObject *
fastmp_sem_create(PyTypeObject *type, int kind, int value, int maxvalue,
                  PyObject *name)
{
    if (value < 0 || maxvalue < 0 || value > maxvalue) {
        errno = EINVAL;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (name != Py_None && !PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "name must be a str or None");
        return NULL;
    }
    SemLockObject *self = semlock_alloc(type, kind, maxvalue, name);
    if (self == NULL) {
        return NULL;
    }
    if (fastmp_block_alloc(sizeof(shared_sem), &self->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    shared_sem *s = self->sem = (shared_sem *)self->blk.ptr;
    s->kind = (uint32_t)kind;
    s->maxvalue = (uint32_t)maxvalue;
    s->init = (uint32_t)value;
    if (self->mutex) {
        s->word = value > 0 ? 0 : FASTMP_SEM_NOBODY;
    }
    else {
        s->word = (uint32_t)value;
    }
    return (PyObject *)self;
}

PyObject *
fastmp_sem_rebuild(PyObject *cls, PyObject *args)
{
    PyObject *seg, *name;
    unsigned long long offset;
    int kind, maxvalue;
    if (!PyArg_ParseTuple(args, "OKiiO:_rebuild", &seg, &offset, &kind,
                          &maxvalue, &name)) {
        return NULL;
    }
    if ((kind != SEMLOCK_RECURSIVE_MUTEX && kind != SEMLOCK_SEMAPHORE)
        || maxvalue < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid SemLock state");
        return NULL;
    }
    SemLockObject *self =
        semlock_alloc((PyTypeObject *)cls, kind, maxvalue, name);
    if (self == NULL) {
        return NULL;
    }
    if (fastmp_block_attach(seg, offset, sizeof(shared_sem), &self->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->sem = (shared_sem *)self->blk.ptr;
    if (self->sem->kind != (uint32_t)kind
        || self->sem->maxvalue != (uint32_t)maxvalue) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "invalid SemLock state");
        return NULL;
    }
    return (PyObject *)self;
}

void
fastmp_sem_dealloc(SemLockObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->in_held) {
        if (self->sem != NULL && self->blk.seg != NULL) {
            fastmp_sem_forget_slot(self);
        }
        fastmp_sem_held_remove(self);
    }
    self->sem = NULL;
    fastmp_block_release(&self->blk);
    Py_CLEAR(self->name);
    Py_CLEAR(self->dict);
    tp->tp_free(self);
    Py_DECREF(tp);
}

int
fastmp_sem_traverse(SemLockObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->name);
    Py_VISIT(self->dict);
    return 0;
}

int
fastmp_sem_tp_clear(SemLockObject *self)
{
    Py_CLEAR(self->dict);
    return 0;
}

/* acquire()'s `block`, read as the running Python's stdlib reads it: by
 * its truth value from 3.12 on (an Argument Clinic `bool`), as a C int
 * before (`bool(accept={int})`: a list or a float is a TypeError there).
 * Returns 0 with *out set, or -1 with an exception set. */
static int
parse_block(PyObject *block, int *out)
{
#if PY_VERSION_HEX >= 0x030C0000
    int b = PyObject_IsTrue(block);
    if (b < 0) {
        return -1;
    }
    *out = b;
    return 0;
#else
#if PY_VERSION_HEX < 0x030A0000
    /* 3.9's PyLong_AsLong would still take a float's __int__. */
    if (PyFloat_Check(block)) {
        PyErr_SetString(PyExc_TypeError,
                        "integer argument expected, got float");
        return -1;
    }
#endif
    long v = PyLong_AsLong(block);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v > INT_MAX || v < INT_MIN) {
        PyErr_SetString(PyExc_OverflowError,
                        "Python int too large to convert to C int");
        return -1;
    }
    *out = v != 0;
    return 0;
#endif
}

static PyObject *
semlock_acquire(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    static const fastmp_argspec spec = {
        "acquire", FASTMP_ARGS_C, 2, 0, {"block", "timeout"}};
    PyObject *a[2];
    if (fastmp_parse_args(&spec, args, nargs, kwnames, a) < 0) {
        return NULL;
    }
    PyObject *block = a[0], *timeout = a[1];
    int blocking = 1;
    if (block != NULL && parse_block(block, &blocking) < 0) {
        return NULL;
    }
    if (timeout != NULL && timeout != Py_None && !blocking) {
        /* Validate the type like the stdlib does, then ignore it. */
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
    }
    int r = fastmp_sem_acquire(self, blocking, timeout);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
semlock_release(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (fastmp_sem_release(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
semlock_count(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    fastmp_sem_fork_check(self);
    return PyLong_FromLong((long)self->count);
}

static PyObject *
semlock_is_mine(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(fastmp_sem_is_mine(self));
}

static long
get_value(SemLockObject *self)
{
    uint32_t v = __atomic_load_n(&self->sem->word, __ATOMIC_ACQUIRE);
    if (self->mutex) {
        return v == 0 ? 1 : 0;
    }
    return (long)v;
}

static PyObject *
semlock_get_value(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(get_value(self));
}

static PyObject *
semlock_is_zero(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(get_value(self) == 0);
}

static PyObject *
semlock_after_fork(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    self->count = 0;
    self->slot_pid = 0;
    Py_RETURN_NONE;
}

PyObject *
fastmp_sem_state(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *seg = fastmp_block_segment(&self->blk);
    if (seg == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NKiiO)", seg, (unsigned long long)self->blk.offset,
                         self->kind, self->maxvalue, self->name);
}

static PyObject *
semlock_get_kind(SemLockObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->kind);
}

static PyObject *
semlock_get_maxvalue(SemLockObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->maxvalue);
}

static PyObject *
semlock_get_handle(SemLockObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong((unsigned long long)self->blk.offset);
}

static PyObject *
semlock_get_self(SemLockObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef((PyObject *)self);
}

static PyObject *
semlock_get_name(SemLockObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->name);
}

static int
semlock_getbuffer(SemLockObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->sem->user,
                             (Py_ssize_t)sizeof(self->sem->user), 0, flags);
}

static void
semlock_releasebuffer(SemLockObject *self, Py_buffer *view)
{
    FASTMP_UNUSED(self);
    FASTMP_UNUSED(view);
}

#define SEMLOCK_METHODS                                                       \
    {"acquire", (PyCFunction)(void (*)(void))semlock_acquire,                 \
     METH_FASTCALL | METH_KEYWORDS,                                           \
     "acquire($self, /, block=True, timeout=None)\n--\n\n"                    \
     "Acquire the semaphore/lock."},                                          \
        {"release", (PyCFunction)semlock_release, METH_NOARGS,                \
         "release($self, /)\n--\n\nRelease the semaphore/lock."},             \
        {"__enter__", (PyCFunction)fastmp_sem_py_enter, METH_NOARGS,          \
         "__enter__($self, /)\n--\n\nEnter the semaphore/lock."},             \
        {"__exit__", (PyCFunction)(void (*)(void))fastmp_sem_py_exit,         \
         METH_FASTCALL,                                                       \
         "__exit__($self, *args, /)\n--\n\nExit the semaphore/lock."},        \
        {"_count", (PyCFunction)semlock_count, METH_NOARGS,                   \
         "_count($self, /)\n--\n\nNum of `acquire()`s minus num of "          \
         "`release()`s for this process."},                                   \
        {"_is_mine", (PyCFunction)semlock_is_mine, METH_NOARGS,               \
         "_is_mine($self, /)\n--\n\nWhether the lock is owned by this "       \
         "thread."},                                                          \
        {"_get_value", (PyCFunction)semlock_get_value, METH_NOARGS,           \
         "_get_value($self, /)\n--\n\nGet the value of the semaphore."},      \
        {"_is_zero", (PyCFunction)semlock_is_zero, METH_NOARGS,               \
         "_is_zero($self, /)\n--\n\nReturn whether semaphore has value "      \
         "zero."},                                                            \
        {"_after_fork", (PyCFunction)semlock_after_fork, METH_NOARGS,         \
         "_after_fork($self, /)\n--\n\nRezero the net acquisition count "     \
         "after "                                                             \
         "fork()."},                                                          \
        {"_state", (PyCFunction)fastmp_sem_state, METH_NOARGS,                \
         "_state($self, /)\n--\n\n(segment, offset, kind, maxvalue, name): "  \
         "what _rebuild takes; pickle only while spawning a child."},         \
        {"_rebuild", (PyCFunction)fastmp_sem_rebuild,                         \
         METH_VARARGS | METH_CLASS,                                           \
         "_rebuild(segment, offset, kind, maxvalue, name, /)\n--\n\n"         \
         "Attach to an existing SemLock (in a child process)."},

/* For the stdlib-named subtypes: helpers kept in fastmp/synchronize.py
 * (cold paths: repr and pickling).  Calls fastmp.synchronize.<name>(self),
 * the function looked up once and kept in *slot (module state).  Returns
 * the result, or NULL with an exception set. */
static PyObject *
call_sync_helper(PyObject **slot, const char *name, PyObject *self)
{
    PyObject *helper, *r;

    if (*slot == NULL) {
        PyObject *mod = PyImport_ImportModule("fastmp.synchronize");
        if (mod == NULL) {
            return NULL;
        }
        helper = PyObject_GetAttrString(mod, name);
        Py_DECREF(mod);
        if (helper == NULL) {
            return NULL;
        }
        Py_XSETREF(*slot, helper);
    }
    /* Own reference: the call may clear the module state. */
    helper = Py_NewRef(*slot);
    r = PyObject_CallOneArg(helper, self);
    Py_DECREF(helper);
    return r;
}

PyObject *
fastmp_sem_repr(PyObject *self)
{
    return call_sync_helper(&fastmp_get_state()->semlock.sync_repr, "_repr",
                            self);
}

PyObject *
fastmp_sem_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return call_sync_helper(&fastmp_get_state()->semlock.sync_reduce,
                            "_reduce", self);
}

#define SEMLOCK_SUB_METHODS                                                   \
    {"locked", (PyCFunction)semlock_is_zero, METH_NOARGS,                     \
     "locked($self, /)\n--\n\nReturn True if it cannot be acquired now."},    \
        {"__reduce__", (PyCFunction)fastmp_sem_reduce, METH_NOARGS,           \
         "__reduce__($self, /)\n--\n\nPickle (only while spawning a "         \
         "child)."},

static PyMethodDef semlock_methods[] = {
    SEMLOCK_METHODS{NULL, NULL, 0, NULL},
};

static PyMethodDef lock_methods[] = {
    SEMLOCK_METHODS SEMLOCK_SUB_METHODS{NULL, NULL, 0, NULL},
};

static PyMethodDef sem_methods[] = {
    SEMLOCK_METHODS SEMLOCK_SUB_METHODS{
        "get_value", (PyCFunction)semlock_get_value, METH_NOARGS,
        "get_value($self, /)\n--\n\nThe semaphore's current value."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef semlock_getset[] = {
    {"kind", (getter)semlock_get_kind, NULL, "the kind", NULL},
    {"maxvalue", (getter)semlock_get_maxvalue, NULL, "the maximum value",
     NULL},
    {"handle", (getter)semlock_get_handle, NULL,
     "an integer naming the lock (its arena offset)", NULL},
    {"name", (getter)semlock_get_name, NULL, "the name (or None)", NULL},
    {"_semlock", (getter)semlock_get_self, NULL,
     "the object itself (the stdlib wraps a separate SemLock)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef semlock_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SemLockObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyMemberDef fastmp_sem_sub_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SemLockObject, weakreflist),
     READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(SemLockObject, dict), READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot semlock_slots[] = {
    {Py_tp_new, semlock_new},
    {Py_tp_dealloc, fastmp_sem_dealloc},
    {Py_tp_traverse, fastmp_sem_traverse},
    {Py_tp_clear, fastmp_sem_tp_clear},
    {Py_tp_methods, semlock_methods},
    {Py_tp_getset, semlock_getset},
    {Py_tp_members, semlock_members},
    {Py_bf_getbuffer, semlock_getbuffer},
    {Py_bf_releasebuffer, semlock_releasebuffer},
    {Py_tp_doc, "SemLock(kind, value, maxvalue, name, unlink)\n--\n\n"
                "Semaphore/Mutex type on a futex word in shared memory."},
    {0, NULL},
};

static PyType_Spec semlock_spec = {
    .name = "fastmp._fastmp.SemLock",
    .basicsize = sizeof(SemLockObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
             | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = semlock_slots,
};

/* ---- the stdlib-named types: Lock, RLock, Semaphore, BoundedSemaphore.
 * C subtypes (not Python subclasses) so that method calls on them get the
 * interpreter's fast paths for C methods; `ctx` is accepted and unused. */

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:Lock", kwlist, &ctx)) {
        return NULL;
    }
    return fastmp_sem_create(type, SEMLOCK_SEMAPHORE, 1, 1, Py_None);
}

static PyObject *
rlock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:RLock", kwlist, &ctx)) {
        return NULL;
    }
    return fastmp_sem_create(type, SEMLOCK_RECURSIVE_MUTEX, 1, 1, Py_None);
}

static PyObject *
semaphore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "ctx", NULL};
    PyObject *ctx = NULL;
    int value = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i$O:Semaphore", kwlist,
                                     &value, &ctx)) {
        return NULL;
    }
    return fastmp_sem_create(type, SEMLOCK_SEMAPHORE, value,
                             FASTMP_SEM_VALUE_MAX, Py_None);
}

static PyObject *
bounded_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "ctx", NULL};
    PyObject *ctx = NULL;
    int value = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i$O:BoundedSemaphore",
                                     kwlist, &value, &ctx)) {
        return NULL;
    }
    return fastmp_sem_create(type, SEMLOCK_SEMAPHORE, value, value, Py_None);
}

#define SUB_SLOTS(newfunc, methods, doc)                                      \
    {Py_tp_new, newfunc}, {Py_tp_traverse, fastmp_sem_traverse},              \
        {Py_tp_clear, fastmp_sem_tp_clear}, {Py_tp_repr, fastmp_sem_repr},    \
        {Py_tp_methods, methods}, {Py_tp_members, fastmp_sem_sub_members},    \
        {Py_tp_doc, doc}, {0, NULL},

static PyType_Slot lock_slots[] = {
    SUB_SLOTS(lock_new, lock_methods,
              "Lock(*, ctx=None)\n--\n\nA non-recursive lock shared by "
              "processes.")};
static PyType_Slot rlock_slots[] = {
    SUB_SLOTS(rlock_new, lock_methods,
              "RLock(*, ctx=None)\n--\n\nA recursive lock shared by "
              "processes.")};
static PyType_Slot semaphore_slots[] = {
    SUB_SLOTS(semaphore_new, sem_methods,
              "Semaphore(value=1, *, ctx=None)\n--\n\nA semaphore shared "
              "by processes.")};
static PyType_Slot bounded_slots[] = {
    SUB_SLOTS(bounded_new, sem_methods,
              "BoundedSemaphore(value=1, *, ctx=None)\n--\n\nA bounded "
              "semaphore shared by processes.")};

static PyType_Spec sub_specs[] = {
    {"fastmp.synchronize.Lock", sizeof(SemLockObject), 0, FASTMP_SEM_SUB_FLAGS,
     lock_slots},
    {"fastmp.synchronize.RLock", sizeof(SemLockObject), 0,
     FASTMP_SEM_SUB_FLAGS, rlock_slots},
    {"fastmp.synchronize.Semaphore", sizeof(SemLockObject), 0,
     FASTMP_SEM_SUB_FLAGS, semaphore_slots},
    {"fastmp.synchronize.BoundedSemaphore", sizeof(SemLockObject), 0,
     FASTMP_SEM_SUB_FLAGS, bounded_slots},
};

/* Clear this process's holder slots in every counting semaphore it used:
 * run when a process ends normally, so its units are not recovered as
 * phantom units after it is gone. */
static PyObject *
semlock_forget_all(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    FASTMP_UNUSED(module);
    fastmp_sem_forget_all();
    Py_RETURN_NONE;
}

static PyMethodDef semlock_functions[] = {
    {"_semlock_forget_all", semlock_forget_all, METH_NOARGS,
     "_semlock_forget_all($module, /)\n--\n\n"
     "Forget the semaphore units this process holds (normal exit)."},
    {NULL, NULL, 0, NULL},
};

int
fastmp_semlock_exec(PyObject *m, fastmp_state *st)
{
    if (PyModule_AddFunctions(m, semlock_functions) < 0) {
        return -1;
    }
    PyObject *t = PyType_FromModuleAndSpec(m, &semlock_spec, NULL);
    if (t == NULL) {
        return -1;
    }
    st->semlock.SemLockType = (PyTypeObject *)t;
    PyTypeObject *descr_type = fastmp_sem_with_init(m);
    if (descr_type == NULL) {
        return -1;
    }
    if (fastmp_sem_install_specials(descr_type, (PyTypeObject *)t) < 0) {
        Py_DECREF(descr_type);
        return -1;
    }
    PyObject *d = ((PyTypeObject *)t)->tp_dict;
    PyObject *v = PyLong_FromLong(FASTMP_SEM_VALUE_MAX);
    if (v == NULL || PyDict_SetItemString(d, "SEM_VALUE_MAX", v) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    PyType_Modified((PyTypeObject *)t);
    if (PyModule_AddObject(m, "SemLock", Py_NewRef(t)) < 0) {
        Py_DECREF(t);
        return -1;
    }
    if (fastmp_event_exec(m) < 0) {
        return -1;
    }
    PyObject *sembase = NULL;
    for (size_t i = 0; i < sizeof(sub_specs) / sizeof(sub_specs[0]); i++) {
        /* BoundedSemaphore derives from Semaphore, as in the stdlib. */
        PyObject *base = (i == 3 && sembase != NULL) ? sembase : t;
        /* A tuple: 3.9 accepts no bare type here. */
        PyObject *bases = PyTuple_Pack(1, base);
        if (bases == NULL) {
            return -1;
        }
        PyObject *sub = PyType_FromModuleAndSpec(m, &sub_specs[i], bases);
        Py_DECREF(bases);
        if (sub == NULL
            || fastmp_sem_install_specials(descr_type, (PyTypeObject *)sub)
                   < 0) {
            Py_XDECREF(sub);
            Py_DECREF(descr_type);
            return -1;
        }
        const char *short_name = strrchr(sub_specs[i].name, '.') + 1;
        if (i == 2) {
            sembase = sub;
        }
        if (PyModule_AddObject(m, short_name, sub) < 0) {
            Py_DECREF(sub);
            Py_DECREF(descr_type);
            return -1;
        }
    }
    Py_DECREF(descr_type); /* its instances hold it */
    st->semlock.AbandonedLockWarning = PyErr_NewExceptionWithDoc(
        "fastmp.AbandonedLockWarning",
        "A lock or semaphore was taken over from a process that died while "
        "holding it; the state it protects may be inconsistent.",
        PyExc_RuntimeWarning, NULL);
    if (st->semlock.AbandonedLockWarning == NULL) {
        return -1;
    }
    if (PyModule_AddObject(m, "AbandonedLockWarning",
                           Py_NewRef(st->semlock.AbandonedLockWarning))
        < 0) {
        Py_DECREF(st->semlock.AbandonedLockWarning);
        return -1;
    }
    if (PyModule_AddIntConstant(m, "RECURSIVE_MUTEX", SEMLOCK_RECURSIVE_MUTEX)
            < 0
        || PyModule_AddIntConstant(m, "SEMAPHORE", SEMLOCK_SEMAPHORE) < 0
        || PyModule_AddIntConstant(m, "SEM_VALUE_MAX", FASTMP_SEM_VALUE_MAX)
               < 0) {
        return -1;
    }
    return 0;
}

int
fastmp_semlock_traverse(fastmp_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->semlock.SemLockType);
    Py_VISIT(st->semlock.AbandonedLockWarning);
    Py_VISIT(st->semlock.sync_reduce);
    Py_VISIT(st->semlock.sync_repr);
    return 0;
}

void
fastmp_semlock_clear(fastmp_state *st)
{
    Py_CLEAR(st->semlock.SemLockType);
    Py_CLEAR(st->semlock.AbandonedLockWarning);
    Py_CLEAR(st->semlock.sync_reduce);
    Py_CLEAR(st->semlock.sync_repr);
}
