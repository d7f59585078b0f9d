/*
 * semlock_with.c -- __enter__ / __exit__ descriptors of the SemLock types
 * and the free list of their bound objects.
 */
#include "semlock_internal.h"

/* ---- `with lock:` without two new method objects per statement ------
 *
 * Up to 3.13 the `with` statement looks __enter__ and __exit__ up on the
 * type and binds each to the lock: for C methods that is two new
 * bound-method objects per statement, allocated, tracked by the GC and
 * freed again, which costs more than the locking itself.  So the types'
 * __enter__ and __exit__ are descriptors of our own (SpecialDescr).
 * Looked up on the class they behave like method descriptors (callable
 * with the lock as first argument); bound to a lock they give a
 * BoundSpecial that holds the lock (a strong reference, as a bound
 * method does), comes from a small free list and calls fastmp_sem_acquire /
 * fastmp_sem_release directly. */

#define BOUND_FREE_MAX 8

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *lock;
    int is_exit;
} BoundSpecial;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *owner; /* the type whose dict holds it */
    int is_exit;
} SpecialDescr;

static PyTypeObject *bound_type; /* set once by fastmp_sem_with_init */
static BoundSpecial *bound_free[BOUND_FREE_MAX];
static int bound_nfree;

static const char *
special_name(int is_exit)
{
    return is_exit ? "__exit__" : "__enter__";
}

/* Inlined into both callers: `with lock:` pays no call on the way to
 * fastmp_sem_acquire / fastmp_sem_release. */
static inline __attribute__((always_inline)) PyObject *
special_call(PyObject *lock, int is_exit, PyObject *const *args,
             Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments",
                     special_name(is_exit));
        return NULL;
    }
    if (is_exit) {
        return fastmp_sem_py_exit((SemLockObject *)lock, args, nargs);
    }
    if (nargs != 0) {
        PyErr_Format(PyExc_TypeError,
                     "__enter__() takes no arguments (%zd given)", nargs);
        return NULL;
    }
    return fastmp_sem_py_enter((SemLockObject *)lock, NULL);
}

static PyObject *
bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    BoundSpecial *b = (BoundSpecial *)callable;
    if (b->lock == NULL) {
        /* Only after the GC broke a cycle through this object. */
        PyErr_SetString(PyExc_ReferenceError, "the lock is gone");
        return NULL;
    }
    return special_call(b->lock, b->is_exit, args, PyVectorcall_NARGS(nargsf),
                        kwnames);
}

static int
bound_traverse(BoundSpecial *b, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(b));
    Py_VISIT(b->lock);
    return 0;
}

static int
bound_clear(BoundSpecial *b)
{
    Py_CLEAR(b->lock);
    return 0;
}

static void
bound_dealloc(BoundSpecial *b)
{
    PyTypeObject *tp = Py_TYPE(b);
    PyObject_GC_UnTrack(b);
    Py_CLEAR(b->lock);
    if (bound_nfree < BOUND_FREE_MAX) {
        bound_free[bound_nfree++] = b;
    }
    else {
        PyObject_GC_Del(b);
    }
    Py_DECREF(tp);
}

static PyObject *
bound_new(PyObject *lock, int is_exit)
{
    BoundSpecial *b;
    if (bound_nfree > 0) {
        b = bound_free[--bound_nfree];
        (void)PyObject_Init((PyObject *)b, bound_type);
    }
    else {
        b = PyObject_GC_New(BoundSpecial, bound_type);
        if (b == NULL) {
            return NULL;
        }
    }
    b->vectorcall = bound_vectorcall;
    b->lock = Py_NewRef(lock);
    b->is_exit = is_exit;
    PyObject_GC_Track(b);
    return (PyObject *)b;
}

static PyObject *
bound_repr(BoundSpecial *b)
{
    return PyUnicode_FromFormat("<built-in method %s of %s object at %p>",
                                special_name(b->is_exit),
                                Py_TYPE(b->lock)->tp_name, b->lock);
}

static PyObject *
bound_richcompare(PyObject *a, PyObject *o, int op)
{
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(o) != Py_TYPE(a)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    BoundSpecial *x = (BoundSpecial *)a, *y = (BoundSpecial *)o;
    int eq = x->lock == y->lock && x->is_exit == y->is_exit;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static Py_hash_t
bound_hash(BoundSpecial *b)
{
    Py_hash_t h = PyObject_Hash(b->lock);
    if (h == -1) {
        return -1;
    }
    h ^= b->is_exit ? 0x5bd1e995 : 0x27d4eb2d;
    return h == -1 ? -2 : h;
}

static PyObject *
bound_get_name(BoundSpecial *b, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(special_name(b->is_exit));
}

static PyObject *
bound_get_self(BoundSpecial *b, void *Py_UNUSED(c))
{
    return Py_NewRef(b->lock);
}

static PyGetSetDef bound_getset[] = {
    {"__name__", (getter)bound_get_name, NULL, NULL, NULL},
    {"__self__", (getter)bound_get_self, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef special_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(BoundSpecial, vectorcall),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot bound_slots[] = {
    {Py_tp_dealloc, bound_dealloc},   {Py_tp_traverse, bound_traverse},
    {Py_tp_clear, bound_clear},       {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, bound_repr},         {Py_tp_richcompare, bound_richcompare},
    {Py_tp_hash, bound_hash},         {Py_tp_getset, bound_getset},
    {Py_tp_members, special_members}, {0, NULL},
};

static PyType_Spec bound_spec = {
    .name = "fastmp._fastmp.lock_method",
    .basicsize = sizeof(BoundSpecial),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_HAVE_VECTORCALL | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = bound_slots,
};

static int
descr_check(SpecialDescr *d, PyObject *obj)
{
    if (PyObject_TypeCheck(obj, d->owner)) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError,
                 "descriptor '%s' for '%s' objects doesn't apply to a "
                 "'%s' object",
                 special_name(d->is_exit), d->owner->tp_name,
                 Py_TYPE(obj)->tp_name);
    return -1;
}

static PyObject *
descr_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    SpecialDescr *d = (SpecialDescr *)callable;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 1) {
        PyErr_Format(PyExc_TypeError, "unbound method %s() needs an argument",
                     special_name(d->is_exit));
        return NULL;
    }
    if (descr_check(d, args[0]) < 0) {
        return NULL;
    }
    return special_call(args[0], d->is_exit, args + 1, n - 1, kwnames);
}

static PyObject *
descr_get(SpecialDescr *d, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL) {
        return Py_NewRef(d);
    }
    if (descr_check(d, obj) < 0) {
        return NULL;
    }
    return bound_new(obj, d->is_exit);
}

static int
descr_traverse(SpecialDescr *d, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(d));
    return 0;
}

static void
descr_dealloc(SpecialDescr *d)
{
    PyTypeObject *tp = Py_TYPE(d);
    PyObject_GC_UnTrack(d);
    PyObject_GC_Del(d);
    Py_DECREF(tp);
}

static PyObject *
descr_repr(SpecialDescr *d)
{
    return PyUnicode_FromFormat("<method '%s' of '%s' objects>",
                                special_name(d->is_exit), d->owner->tp_name);
}

static PyObject *
descr_get_name(SpecialDescr *d, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(special_name(d->is_exit));
}

static PyObject *
descr_get_qualname(SpecialDescr *d, void *Py_UNUSED(c))
{
    return PyUnicode_FromFormat("%s.%s", d->owner->tp_name,
                                special_name(d->is_exit));
}

static PyObject *
descr_get_objclass(SpecialDescr *d, void *Py_UNUSED(c))
{
    return Py_NewRef(d->owner);
}

static PyGetSetDef descr_getset[] = {
    {"__name__", (getter)descr_get_name, NULL, NULL, NULL},
    {"__qualname__", (getter)descr_get_qualname, NULL, NULL, NULL},
    {"__objclass__", (getter)descr_get_objclass, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef descr_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(SpecialDescr, vectorcall),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot descr_slots[] = {
    {Py_tp_dealloc, descr_dealloc},  {Py_tp_traverse, descr_traverse},
    {Py_tp_call, PyVectorcall_Call}, {Py_tp_descr_get, descr_get},
    {Py_tp_repr, descr_repr},        {Py_tp_getset, descr_getset},
    {Py_tp_members, descr_members},  {0, NULL},
};

static PyType_Spec descr_spec = {
    .name = "fastmp._fastmp.lock_method_descriptor",
    .basicsize = sizeof(SpecialDescr),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_HAVE_VECTORCALL | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = descr_slots,
};

/* Put fresh __enter__/__exit__ descriptors into type t's dict. */
int
fastmp_sem_install_specials(PyTypeObject *descr_type, PyTypeObject *t)
{
    for (int is_exit = 0; is_exit < 2; is_exit++) {
        SpecialDescr *d = PyObject_GC_New(SpecialDescr, descr_type);
        if (d == NULL) {
            return -1;
        }
        d->vectorcall = descr_vectorcall;
        d->owner = t; /* borrowed: t's dict holds d */
        d->is_exit = is_exit;
        PyObject_GC_Track(d);
        int r = PyDict_SetItemString(t->tp_dict, special_name(is_exit),
                                     (PyObject *)d);
        Py_DECREF(d);
        if (r < 0) {
            return -1;
        }
    }
    PyType_Modified(t);
    return 0;
}

PyTypeObject *
fastmp_sem_with_init(PyObject *m)
{
    if (bound_type == NULL) {
        /* Kept for the life of the process, like its free list. */
        bound_type =
            (PyTypeObject *)PyType_FromModuleAndSpec(m, &bound_spec, NULL);
        if (bound_type == NULL) {
            return NULL;
        }
    }
    return (PyTypeObject *)PyType_FromModuleAndSpec(m, &descr_spec, NULL);
}
