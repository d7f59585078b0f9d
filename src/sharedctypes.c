/*
 * sharedctypes.c -- the synchronized Value/Array wrappers: element
 * conversion, SynchronizedBase, Synchronized (values) and the area's
 * module glue.  Shared storage blocks (Block) are sharedctypes_block.c,
 * SynchronizedArray and SynchronizedString sharedctypes_array.c, the
 * lock-free atomics on integer Values atomics.c.
 *
 * SynchronizedBase and its subclasses: C wrappers holding (ctypes object,
 * lock).  Every `.value`, item and slice access takes the lock once, here,
 * and converts the simple element types itself; structures and unusual
 * element types go through the ctypes object (still under one lock round
 * trip).
 *
 * Shared data layout: the user's bytes only (exactly the ctypes layout).
 * Who writes: any process holding the wrapper's lock (plain stores), or
 * any process at all through the atomics (__atomic builtins, sequentially
 * consistent), which the lock does not exclude (`with v.get_lock():
 * v.value = v.value + 1` can overwrite a concurrent add), or anyone with
 * raw access (RawValue, RawArray, get_obj(), memoryviews), unprotected.
 * Reads under a free fastmp mutex take no lock: they are validated with
 * the mutex's `gen` and `word` (fastmp_sync_gather).  A process that dies
 * mid-write leaves old and new bytes mixed within the range it was
 * writing (one memcpy for a contiguous slice, else one per element), and
 * the lock naming it: the next blocking acquirer takes it over with
 * AbandonedLockWarning.  An atomic operation is all or nothing.  The
 * arena frees the block when the last process holding it lets go.
 */
#include "sharedctypes_internal.h"

#include <string.h>

/* ---- element conversion ----------------------------------------------- */

static int
code_is_signed(int code)
{
    return code == 'b' || code == 'h' || code == 'i' || code == 'l'
           || code == 'q';
}

PyObject *
fastmp_int_from_bits(int code, uint64_t bits)
{
    switch (code) {
    case 'b':
        return PyLong_FromLong((int8_t)bits);
    case 'B':
        return PyLong_FromUnsignedLong((uint8_t)bits);
    case 'h':
        return PyLong_FromLong((short)(uint16_t)bits);
    case 'H':
        return PyLong_FromUnsignedLong((uint16_t)bits);
    default:
        break;
    }
    Py_ssize_t size = code_size(code);
    if (code_is_signed(code)) {
        if (size == 4) {
            return PyLong_FromLong((int32_t)(uint32_t)bits);
        }
        return PyLong_FromLongLong((long long)bits);
    }
    if (size == 4) {
        return PyLong_FromUnsignedLong((uint32_t)bits);
    }
    return PyLong_FromUnsignedLongLong(bits);
}

/* Convert the element at p (a private copy) to a Python object. */
PyObject *
fastmp_elem_unpack(int code, const char *p)
{
    switch (code) {
    case '?': {
        _Bool v;
        memcpy(&v, p, sizeof(v));
        return PyBool_FromLong(v);
    }
    case 'c':
        return PyBytes_FromStringAndSize(p, 1);
    case 'f': {
        float v;
        memcpy(&v, p, sizeof(v));
        return PyFloat_FromDouble(v);
    }
    case 'd': {
        double v;
        memcpy(&v, p, sizeof(v));
        return PyFloat_FromDouble(v);
    }
    default:
        return fastmp_int_from_bits(code, int_bits_load(p, code_size(code)));
    }
}

/* Convert v into the element bytes at out, as ctypes would store it.
 * Returns 0 done, 1 "not a simple case: let the ctypes object do it",
 * -1 with an exception set.  Runs before the lock is taken. */
int
fastmp_elem_pack(int code, PyObject *v, char *out)
{
    if (fastmp_code_is_int(code)) {
        if (!PyLong_Check(v)) {
            return 1;
        }
        unsigned long long x = PyLong_AsUnsignedLongLongMask(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
        fastmp_int_store(out, code_size(code), x);
        return 0;
    }
    switch (code) {
    case '?': {
        int t = PyObject_IsTrue(v);
        if (t < 0) {
            return -1;
        }
        _Bool b = (_Bool)t;
        memcpy(out, &b, sizeof(b));
        return 0;
    }
    case 'c':
        if (PyBytes_CheckExact(v) && PyBytes_GET_SIZE(v) == 1) {
            out[0] = PyBytes_AS_STRING(v)[0];
            return 0;
        }
        return 1;
    case 'f':
    case 'd': {
        if (!PyFloat_Check(v) && !PyLong_Check(v)) {
            return 1;
        }
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        if (code == 'f') {
            float f = (float)d;
            memcpy(out, &f, sizeof(f));
        }
        else {
            memcpy(out, &d, sizeof(d));
        }
        return 0;
    }
    default:
        return 1;
    }
}

/* ---- SynchronizedBase ------------------------------------------------- */

/* The last reference on st is gone (fastmp_sync_drop): free it. */
void
fastmp_sync_free(sync_state *st)
{
    Py_XDECREF(st->obj);
    Py_XDECREF(st->block);
    Py_XDECREF(st->lock);
    Py_XDECREF(st->acquire_m);
    Py_XDECREF(st->release_m);
    Py_XDECREF(st->semlock);
    PyMem_Free(st);
}

/* The address of st's data, valid until fastmp_sync_mem_done(view) and only
 * while no Python code runs: call it after every conversion and after
 * taking the lock.  Arena memory is st->ptr; any other object is asked
 * for its buffer again, which *view holds.  NULL with an exception set.
 * (fastmp_sync_mem in sharedctypes_internal.h handles arena memory inline.) */
char *
fastmp_sync_mem_slow(sync_state *st, Py_buffer *view)
{
    if (PyObject_GetBuffer(st->obj, view, PyBUF_SIMPLE | PyBUF_WRITABLE) < 0) {
        view->obj = NULL;
        return NULL;
    }
    if (view->len < st->nbytes) {
        PyBuffer_Release(view);
        view->obj = NULL;
        PyErr_SetString(PyExc_BufferError,
                        "the shared object's memory shrank");
        return NULL;
    }
    return view->buf;
}

/* Copy n elements of sz bytes from src, `sstride` bytes apart, to dst,
 * `dstride` bytes apart. */
static void
copy_strided(char *dst, Py_ssize_t dstride, const char *src,
             Py_ssize_t sstride, Py_ssize_t n, Py_ssize_t sz)
{
    if (dstride == sz && sstride == sz) {
        memcpy(dst, src, n * sz);
        return;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        memcpy(dst + k * dstride, src + k * sstride, sz);
    }
}

/* Copy n elements of sz bytes, `stride` bytes apart from byte `off` of the
 * shared data, into packed dst as one consistent snapshot.  While the lock
 * is a free fastmp mutex and the data is arena memory this takes no lock
 * at all (see fastmp_semlock_seq): a writer that interferes makes the copy
 * start again, and after a few tries, or with any other lock, the copy is
 * made under the lock.  Returns 0, or -1 with an exception set. */
int
fastmp_sync_gather(sync_state *s, char *dst, Py_ssize_t off, Py_ssize_t n,
                   Py_ssize_t sz, Py_ssize_t stride)
{
    if (s->seq_word != NULL && s->ptr != NULL) {
        const char *src = s->ptr + off;
        for (int tries = 0; tries < 4; tries++) {
            uint32_t gen = __atomic_load_n(s->seq_gen, __ATOMIC_ACQUIRE);
            if (__atomic_load_n(s->seq_word, __ATOMIC_ACQUIRE) != 0) {
                break;
            }
            copy_strided(dst, sz, src, stride, n, sz);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(s->seq_word, __ATOMIC_RELAXED) == 0
                && __atomic_load_n(s->seq_gen, __ATOMIC_RELAXED) == gen) {
                return 0;
            }
        }
    }
    int held = sync_lock(s);
    if (held < 0) {
        return -1;
    }
    Py_buffer view;
    char *base = fastmp_sync_mem(s, &view);
    if (base != NULL) {
        copy_strided(dst, sz, base + off, stride, n, sz);
        fastmp_sync_mem_done(&view);
    }
    return sync_unlock(s, held);
}

/* Under the lock, copy n packed elements of sz bytes from src into the
 * shared data from byte `off` on, `stride` bytes apart.  The values are
 * converted before: no Python code runs between finding the address and
 * the copy.  Returns 0, or -1 with an exception set. */
int
fastmp_sync_scatter(sync_state *s, Py_ssize_t off, Py_ssize_t stride,
                    const char *src, Py_ssize_t n, Py_ssize_t sz)
{
    int held = sync_lock(s);
    if (held < 0) {
        return -1;
    }
    Py_buffer view;
    char *base = fastmp_sync_mem(s, &view);
    if (base != NULL) {
        copy_strided(base + off, stride, src, sz, n, sz);
        fastmp_sync_mem_done(&view);
    }
    return sync_unlock(s, held);
}

static int
sync_init(SyncObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj, *lock;
    int code = 0;
    static char *kwlist[] = {"obj", "lock", "code", NULL};
    const char *codestr = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|z:SynchronizedBase",
                                     kwlist, &obj, &lock, &codestr)) {
        return -1;
    }
    if (codestr != NULL && codestr[0] != '\0' && codestr[1] == '\0'
        && code_size(codestr[0]) > 0) {
        code = codestr[0];
    }
    sync_state *st = PyMem_Calloc(1, sizeof(*st));
    if (st == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->refs = 1;
    st->obj = Py_NewRef(obj);
    st->lock = Py_NewRef(lock);
    st->acquire_m = PyObject_GetAttrString(lock, "acquire");
    if (st->acquire_m == NULL) {
        goto error;
    }
    st->release_m = PyObject_GetAttrString(lock, "release");
    if (st->release_m == NULL) {
        goto error;
    }
    /* The Block a fastmp RawValue/RawArray keeps in `_wrapper`: data in
     * it is arena memory, which never moves while the Block lives. */
    PyObject *w = PyObject_GetAttrString(obj, "_wrapper");
    if (w == NULL) {
        PyErr_Clear();
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE | PyBUF_WRITABLE) < 0) {
        Py_XDECREF(w);
        goto error;
    }
    st->nbytes = view.len;
    if (fastmp_block_holds(w, view.buf, view.len)) {
        st->block = w;
        st->ptr = view.buf;
        w = NULL;
    }
    Py_XDECREF(w);
    PyBuffer_Release(&view);

    st->semlock = fastmp_semlock_unwrap(lock);
    if (st->semlock != NULL) {
        /* Leaves both NULL for a counting semaphore. */
        (void)fastmp_semlock_seq(st->semlock, &st->seq_word, &st->seq_gen);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    st->code = code;
    st->itemsize = code ? code_size(code) : 0;
    if (PySequence_Check(obj) && !PyLong_Check(obj)) {
        Py_ssize_t n = PyObject_Length(obj);
        if (n < 0) {
            PyErr_Clear();
            n = 1;
        }
        st->length = n;
    }
    else {
        st->length = 1;
    }
    if (st->itemsize && st->itemsize * st->length > st->nbytes) {
        /* Layout not what we expect: never touch memory directly. */
        st->code = 0;
        st->itemsize = 0;
    }
    if (st->itemsize) {
        st->nbytes = st->itemsize * st->length;
    }
    sync_state *old = self->st;
    self->st = st;
    if (old != NULL) {
        fastmp_sync_drop(old);
    }
    return 0;
error:
    fastmp_sync_drop(st);
    return -1;
}

int
fastmp_sync_traverse(SyncObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    sync_state *st = self->st;
    if (st != NULL) {
        Py_VISIT(st->obj);
        Py_VISIT(st->block);
        Py_VISIT(st->lock);
        Py_VISIT(st->acquire_m);
        Py_VISIT(st->release_m);
        Py_VISIT(st->semlock);
    }
    return 0;
}

int
fastmp_sync_clear(SyncObject *self)
{
    sync_state *st = self->st;
    self->st = NULL;
    if (st != NULL) {
        fastmp_sync_drop(st);
    }
    return 0;
}

void
fastmp_sync_dealloc(SyncObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    fastmp_sync_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
sync_repr(SyncObject *self)
{
    if (self->st == NULL) {
        return PyUnicode_FromFormat("<%s wrapper>", Py_TYPE(self)->tp_name);
    }
    sync_state *st = sync_hold(self);
    PyObject *r = PyUnicode_FromFormat("<%s wrapper for %S>",
                                       Py_TYPE(self)->tp_name, st->obj);
    fastmp_sync_drop(st);
    return r;
}

static PyObject *
sync_get_obj(SyncObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->st == NULL) {
        (void)sync_hold(self); /* raises */
        return NULL;
    }
    return Py_NewRef(self->st->obj);
}

static PyObject *
sync_get_lock(SyncObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->st == NULL) {
        (void)sync_hold(self); /* raises */
        return NULL;
    }
    return Py_NewRef(self->st->lock);
}

static PyObject *
sync_obj_attr(SyncObject *self, void *Py_UNUSED(c))
{
    if (self->st == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(self->st->obj);
}

static PyObject *
sync_lock_attr(SyncObject *self, void *Py_UNUSED(c))
{
    if (self->st == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(self->st->lock);
}

static PyObject *
sync_acquire(SyncObject *self, PyObject *args, PyObject *kwds)
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r;
    if (st->semlock != NULL && PyTuple_GET_SIZE(args) == 0
        && (kwds == NULL || PyDict_GET_SIZE(kwds) == 0)) {
        r = fastmp_semlock_enter(st->semlock) < 0 ? NULL : Py_NewRef(Py_True);
    }
    else {
        r = PyObject_Call(st->acquire_m, args, kwds);
    }
    fastmp_sync_drop(st);
    return r;
}

static PyObject *
sync_release(SyncObject *self, PyObject *args, PyObject *kwds)
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_Call(st->release_m, args, kwds);
    fastmp_sync_drop(st);
    return r;
}

static PyObject *
sync_enter(SyncObject *self, PyObject *Py_UNUSED(ignored))
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r;
    if (st->semlock != NULL) {
        r = fastmp_semlock_enter(st->semlock) < 0 ? NULL : Py_NewRef(Py_True);
    }
    else {
        r = PyObject_CallMethod(st->lock, "__enter__", NULL);
    }
    fastmp_sync_drop(st);
    return r;
}

static PyObject *
sync_exit(SyncObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = NULL;
    if (st->semlock != NULL) {
        if (fastmp_semlock_exit(st->semlock) == 0) {
            r = Py_NewRef(Py_None);
        }
    }
    else {
        PyObject *meth = PyObject_GetAttrString(st->lock, "__exit__");
        if (meth != NULL) {
            r = PyObject_Vectorcall(meth, args, nargs, NULL);
            Py_DECREF(meth);
        }
    }
    fastmp_sync_drop(st);
    return r;
}

/* Getattr / setattr on the ctypes object under the lock (slow path for
 * odd element types, structures' fields, char arrays' value/raw). */
PyObject *
fastmp_sync_locked_getattr(sync_state *st, const char *name)
{
    int held = sync_lock(st);
    if (held < 0) {
        return NULL;
    }
    PyObject *r = PyObject_GetAttrString(st->obj, name);
    if (sync_unlock(st, held) < 0) {
        Py_XDECREF(r);
        return NULL;
    }
    return r;
}

int
fastmp_sync_locked_setattr(sync_state *st, const char *name, PyObject *v)
{
    int held = sync_lock(st);
    if (held < 0) {
        return -1;
    }
    int r = PyObject_SetAttrString(st->obj, name, v);
    if (sync_unlock(st, held) < 0) {
        return -1;
    }
    return r;
}

static PyObject *
sync_getfield(SyncObject *self, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "field name must be a str");
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8(name);
    if (s == NULL) {
        return NULL;
    }
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = fastmp_sync_locked_getattr(st, s);
    fastmp_sync_drop(st);
    return r;
}

static PyObject *
sync_setfield(SyncObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "_setfield(name, value) takes a str and a value");
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8(args[0]);
    if (s == NULL) {
        return NULL;
    }
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    int r = fastmp_sync_locked_setattr(st, s, args[1]);
    fastmp_sync_drop(st);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
sync_getbuffer_attr(SyncObject *self, void *Py_UNUSED(c))
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    Py_buffer view;
    PyObject *r = NULL;
    char *p = fastmp_sync_mem(st, &view);
    if (p != NULL) {
        r = PyLong_FromVoidPtr(p);
        fastmp_sync_mem_done(&view);
    }
    fastmp_sync_drop(st);
    return r;
}

static PyMemberDef sync_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SyncObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef sync_getset[] = {
    {"_obj", (getter)sync_obj_attr, NULL,
     "The ctypes object (None before __init__).", NULL},
    {"_lock", (getter)sync_lock_attr, NULL, "The lock (None before __init__).",
     NULL},
    {"_address", (getter)sync_getbuffer_attr, NULL,
     "Address of the shared data in this process.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef sync_methods[] = {
    {"get_obj", (PyCFunction)sync_get_obj, METH_NOARGS,
     PyDoc_STR("get_obj($self, /)\n--\n\n"
               "The ctypes object over the shared memory.")},
    {"get_lock", (PyCFunction)sync_get_lock, METH_NOARGS,
     PyDoc_STR("get_lock($self, /)\n--\n\nThe lock guarding the object.")},
    {"acquire", (PyCFunction)(void (*)(void))sync_acquire,
     METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("acquire($self, /, *args, **kwargs)\n--\n\n"
               "Acquire the lock (same arguments as the lock's).")},
    {"release", (PyCFunction)(void (*)(void))sync_release,
     METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("release($self, /, *args, **kwargs)\n--\n\n"
               "Release the lock.")},
    {"__enter__", (PyCFunction)sync_enter, METH_NOARGS,
     PyDoc_STR("__enter__($self, /)\n--\n\nAcquire the lock.")},
    {"__exit__", (PyCFunction)(void (*)(void))sync_exit, METH_FASTCALL,
     PyDoc_STR("__exit__($self, /, *args)\n--\n\nRelease the lock.")},
    {"_getfield", (PyCFunction)sync_getfield, METH_O,
     PyDoc_STR("_getfield($self, name, /)\n--\n\n"
               "getattr(obj, name) under the lock.")},
    {"_setfield", (PyCFunction)(void (*)(void))sync_setfield, METH_FASTCALL,
     PyDoc_STR("_setfield($self, name, value, /)\n--\n\n"
               "setattr(obj, name, value) under the lock.")},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot syncbase_slots[] = {
    {Py_tp_init, sync_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, fastmp_sync_dealloc},
    {Py_tp_traverse, fastmp_sync_traverse},
    {Py_tp_clear, fastmp_sync_clear},
    {Py_tp_repr, sync_repr},
    {Py_tp_methods, sync_methods},
    {Py_tp_members, sync_members},
    {Py_tp_getset, sync_getset},
    {Py_tp_doc, "SynchronizedBase(obj, lock, code=None)\n--\n\n"
                "A ctypes object in shared memory with a lock."},
    {0, NULL},
};

static PyType_Spec syncbase_spec = {
    .name = "fastmp._fastmp.SynchronizedBase",
    .basicsize = sizeof(SyncObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = syncbase_slots,
};

/* ---- Synchronized (single value) -------------------------------------- */
/* ---- Synchronized (single value) -------------------------------------- */

static PyObject *
value_get(SyncObject *self, void *Py_UNUSED(closure))
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = NULL;
    if (st->code == 0) {
        r = fastmp_sync_locked_getattr(st, "value");
    }
    else {
        char tmp[16];
        if (fastmp_sync_gather(st, tmp, 0, 1, st->itemsize, st->itemsize)
            == 0) {
            r = fastmp_elem_unpack(st->code, tmp);
        }
    }
    fastmp_sync_drop(st);
    return r;
}

static int
value_set(SyncObject *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "can't delete attribute");
        return -1;
    }
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return -1;
    }
    char tmp[16];
    int r = st->code ? fastmp_elem_pack(st->code, v, tmp) : 1;
    if (r > 0) {
        r = fastmp_sync_locked_setattr(st, "value", v);
    }
    else if (r == 0 && st->ptr != NULL) {
        /* Arena memory (it never moves): one store under the lock. */
        int held = sync_lock(st);
        if (held < 0) {
            r = -1;
        }
        else {
            memcpy(st->ptr, tmp, (size_t)st->itemsize);
            r = sync_unlock(st, held);
        }
    }
    else if (r == 0) {
        r = fastmp_sync_scatter(st, 0, st->itemsize, tmp, 1, st->itemsize);
    }
    fastmp_sync_drop(st);
    return r < 0 ? -1 : 0;
}

static PyGetSetDef value_getset[] = {
    {"value", (getter)value_get, (setter)value_set,
     "The value, read or written under the lock.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot value_slots[] = {
    {Py_tp_traverse, fastmp_sync_traverse},
    {Py_tp_clear, fastmp_sync_clear},
    {Py_tp_dealloc, fastmp_sync_dealloc},
    {Py_tp_getset, value_getset},
    {Py_tp_methods, fastmp_atomic_methods},
    {Py_tp_doc, "Synchronized(obj, lock, code=None)\n--\n\n"
                "A synchronized shared ctypes value."},
    {0, NULL},
};

static PyType_Spec value_spec = {
    .name = "fastmp._fastmp.Synchronized",
    .basicsize = sizeof(SyncObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = value_slots,
};

/* ---- module glue ---------------------------------------------------- */

static PyTypeObject *
add_type(PyObject *m, PyType_Spec *spec, PyObject *base, const char *name)
{
    /* 3.9 wants the bases as a tuple. */
    PyObject *bases = NULL;
    if (base != NULL) {
        bases = PyTuple_Pack(1, base);
        if (bases == NULL) {
            return NULL;
        }
    }
    PyObject *t = PyType_FromModuleAndSpec(m, spec, bases);
    Py_XDECREF(bases);
    if (t == NULL) {
        return NULL;
    }
    if (PyModule_AddObject(m, name, Py_NewRef(t)) < 0) {
        Py_DECREF(t);
        Py_DECREF(t);
        return NULL;
    }
    return (PyTypeObject *)t;
}

int
fastmp_sharedctypes_exec(PyObject *m, fastmp_state *st)
{
    if (PyModule_AddFunctions(m, fastmp_block_functions) < 0) {
        return -1;
    }
    fastmp_sharedctypes_state *s = &st->sharedctypes;
    s->BlockType = add_type(m, &fastmp_block_spec, NULL, "Block");
    if (s->BlockType == NULL) {
        return -1;
    }
    s->SyncBaseType = add_type(m, &syncbase_spec, NULL, "SynchronizedBase");
    if (s->SyncBaseType == NULL) {
        return -1;
    }
    s->SyncType =
        add_type(m, &value_spec, (PyObject *)s->SyncBaseType, "Synchronized");
    if (s->SyncType == NULL) {
        return -1;
    }
    s->SyncArrayType =
        add_type(m, &fastmp_array_spec, (PyObject *)s->SyncBaseType,
                 "SynchronizedArray");
    if (s->SyncArrayType == NULL) {
        return -1;
    }
    s->SyncStringType =
        add_type(m, &fastmp_string_spec, (PyObject *)s->SyncArrayType,
                 "SynchronizedString");
    if (s->SyncStringType == NULL) {
        return -1;
    }
    for (long v = FASTMP_SMALL_INT_MIN; v <= FASTMP_SMALL_INT_MAX; v++) {
        s->small_ints[v - FASTMP_SMALL_INT_MIN] = PyLong_FromLong(v);
        if (s->small_ints[v - FASTMP_SMALL_INT_MIN] == NULL) {
            return -1;
        }
    }
    return 0;
}

int
fastmp_sharedctypes_traverse(fastmp_state *st, visitproc visit, void *arg)
{
    fastmp_sharedctypes_state *s = &st->sharedctypes;
    Py_VISIT(s->BlockType);
    Py_VISIT(s->SyncBaseType);
    Py_VISIT(s->SyncType);
    Py_VISIT(s->SyncArrayType);
    Py_VISIT(s->SyncStringType);
    for (int i = 0; i <= FASTMP_SMALL_INT_MAX - FASTMP_SMALL_INT_MIN; i++) {
        Py_VISIT(s->small_ints[i]);
    }
    return 0;
}

void
fastmp_sharedctypes_clear(fastmp_state *st)
{
    fastmp_sharedctypes_state *s = &st->sharedctypes;
    Py_CLEAR(s->BlockType);
    Py_CLEAR(s->SyncBaseType);
    Py_CLEAR(s->SyncType);
    Py_CLEAR(s->SyncArrayType);
    Py_CLEAR(s->SyncStringType);
    for (int i = 0; i <= FASTMP_SMALL_INT_MAX - FASTMP_SMALL_INT_MIN; i++) {
        Py_CLEAR(s->small_ints[i]);
    }
}
