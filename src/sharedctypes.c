/*
 * sharedctypes.c -- shared storage blocks, the synchronized Value/Array
 * wrappers, and lock-free atomics on integer Values.
 *
 * Block: a Python object owning one arena block (fastmp_block) and
 * exporting it as a writable buffer.  RawValue/RawArray are ctypes objects
 * made with `ctype.from_buffer(block)`, so the ctypes object keeps the
 * block alive and user ctypes code sees ordinary ctypes objects.
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
 * consistent).  A process that dies mid-write leaves at most one element
 * torn for a locked multi-byte write of a non-atomic type; an atomic
 * operation is all or nothing.  The arena's process-shared refcount frees
 * the block when the last process drops it.
 */
#include "fastmp.h"

#include <structmember.h>
#include <string.h>

/* ---- Block ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    fastmp_block blk;
    int have_blk;
} BlockObject;

static void
block_dealloc(BlockObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->have_blk) {
        fastmp_block_release(&self->blk);
        self->have_blk = 0;
    }
    PyObject_Free(self);
    Py_DECREF(tp);
}

static int
block_getbuffer(BlockObject *self, Py_buffer *view, int flags)
{
    if (!self->have_blk || self->blk.released) {
        PyErr_SetString(PyExc_ValueError, "shared block already released");
        view->obj = NULL;
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, self->blk.ptr,
                             (Py_ssize_t)self->blk.size, 0, flags);
}

static PyObject *
block_get_segment(BlockObject *self, void *Py_UNUSED(closure))
{
    return fastmp_block_segment(&self->blk);
}

static PyObject *
block_get_offset(BlockObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->blk.offset);
}

static PyObject *
block_get_size(BlockObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->blk.size);
}

static PyObject *
block_get_address(BlockObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromVoidPtr(self->blk.ptr);
}

static PyObject *
block_create_memoryview(BlockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyMethodDef block_methods[] = {
    {"create_memoryview", (PyCFunction)block_create_memoryview, METH_NOARGS,
     PyDoc_STR("create_memoryview($self, /)\n--\n\n"
               "A writable memoryview over the block.")},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef block_getset[] = {
    {"segment", (getter)block_get_segment, NULL,
     "The Segment holding the block.", NULL},
    {"offset", (getter)block_get_offset, NULL,
     "Offset of the data in the segment.", NULL},
    {"size", (getter)block_get_size, NULL, "Usable bytes.", NULL},
    {"address", (getter)block_get_address, NULL,
     "Address of the data in this process.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot block_slots[] = {
    {Py_tp_dealloc, block_dealloc},
    {Py_tp_methods, block_methods},
    {Py_tp_getset, block_getset},
    {Py_bf_getbuffer, block_getbuffer},
    {Py_tp_doc, "A block of process-shared memory from the arena."},
    {0, NULL},
};

static PyType_Spec block_spec = {
    .name = "fastmp._fastmp.Block",
    .basicsize = sizeof(BlockObject),
    .flags = Py_TPFLAGS_DEFAULT | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = block_slots,
};

static PyObject *
sct_block_alloc(PyObject *module, PyObject *arg)
{
    fastmp_state *st = PyModule_GetState(module);
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return NULL;
    }
    BlockObject *self = PyObject_New(BlockObject,
                                     st->sharedctypes.BlockType);
    if (self == NULL) {
        return NULL;
    }
    self->have_blk = 0;
    /* A zero-size object still needs a distinct address.  The block is
     * filled in place: the arena's tracking list links its address. */
    if (fastmp_block_alloc(size ? (size_t)size : 1, &self->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->have_blk = 1;
    return (PyObject *)self;
}

static PyObject *
sct_block_attach(PyObject *module, PyObject *args)
{
    fastmp_state *st = PyModule_GetState(module);
    PyObject *seg;
    unsigned long long offset, size;
    if (!PyArg_ParseTuple(args, "OKK:_block_attach", &seg, &offset, &size)) {
        return NULL;
    }
    if (!fastmp_segment_check(seg)) {
        PyErr_SetString(PyExc_TypeError, "a Segment is required");
        return NULL;
    }
    BlockObject *self = PyObject_New(BlockObject,
                                     st->sharedctypes.BlockType);
    if (self == NULL) {
        return NULL;
    }
    self->have_blk = 0;
    if (fastmp_block_attach(seg, offset, (size_t)size, &self->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->have_blk = 1;
    return (PyObject *)self;
}

/* ---- element conversion ----------------------------------------------- */

/* Size of a fast element code, 0 for a code without a fast path. */
static Py_ssize_t
code_size(int code)
{
    switch (code) {
    case '?': return sizeof(_Bool);
    case 'c': case 'b': case 'B': return 1;
    case 'h': case 'H': return sizeof(short);
    case 'i': case 'I': return sizeof(int);
    case 'l': case 'L': return sizeof(long);
    case 'q': case 'Q': return sizeof(long long);
    case 'f': return sizeof(float);
    case 'd': return sizeof(double);
    default: return 0;
    }
}

static int
code_is_int(int code)
{
    switch (code) {
    case 'b': case 'B': case 'h': case 'H': case 'i': case 'I':
    case 'l': case 'L': case 'q': case 'Q':
        return 1;
    default:
        return 0;
    }
}

static int
code_is_signed(int code)
{
    return code == 'b' || code == 'h' || code == 'i' || code == 'l' ||
           code == 'q';
}

/* Bits of an integer element, zero-extended. */
static uint64_t
int_bits_load(const char *p, Py_ssize_t size)
{
    switch (size) {
    case 1: { uint8_t v; memcpy(&v, p, 1); return v; }
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

static PyObject *
int_from_bits(int code, uint64_t bits)
{
    switch (code) {
    case 'b': return PyLong_FromLong((int8_t)bits);
    case 'B': return PyLong_FromUnsignedLong((uint8_t)bits);
    case 'h': return PyLong_FromLong((short)(uint16_t)bits);
    case 'H': return PyLong_FromUnsignedLong((uint16_t)bits);
    default: break;
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
static PyObject *
elem_unpack(int code, const char *p)
{
    switch (code) {
    case '?': { _Bool v; memcpy(&v, p, sizeof(v)); return PyBool_FromLong(v); }
    case 'c': return PyBytes_FromStringAndSize(p, 1);
    case 'f': { float v; memcpy(&v, p, sizeof(v));
                return PyFloat_FromDouble(v); }
    case 'd': { double v; memcpy(&v, p, sizeof(v));
                return PyFloat_FromDouble(v); }
    default:
        return int_from_bits(code, int_bits_load(p, code_size(code)));
    }
}

/* Convert v into the element bytes at out, as ctypes would store it.
 * Returns 0 done, 1 "not a simple case: let the ctypes object do it",
 * -1 with an exception set.  Runs before the lock is taken. */
static int
elem_pack(int code, PyObject *v, char *out)
{
    if (code_is_int(code)) {
        if (!PyLong_Check(v)) {
            return 1;
        }
        unsigned long long x = PyLong_AsUnsignedLongLongMask(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
        switch (code_size(code)) {
        case 1: { uint8_t y = (uint8_t)x; memcpy(out, &y, 1); break; }
        case 2: { uint16_t y = (uint16_t)x; memcpy(out, &y, 2); break; }
        case 4: { uint32_t y = (uint32_t)x; memcpy(out, &y, 4); break; }
        default: { uint64_t y = x; memcpy(out, &y, 8); break; }
        }
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
    case 'f': case 'd': {
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

typedef struct {
    PyObject_HEAD
    PyObject *obj;          /* the ctypes object over shared memory */
    PyObject *lock;         /* any object with acquire/release */
    PyObject *acquire_m;    /* lock.acquire (slow path) */
    PyObject *release_m;    /* lock.release (slow path) */
    PyObject *semlock;      /* fastmp SemLock inside `lock`, or NULL */
    const uint32_t *seq_word;   /* its words for lock-free reads, or NULL */
    const uint32_t *seq_gen;
    char *ptr;              /* data address in this process */
    Py_ssize_t nbytes;
    Py_ssize_t length;      /* elements (arrays), 1 for values */
    Py_ssize_t itemsize;    /* fast element size, 0 when no fast path */
    int code;               /* fast element code ('i', 'd', ...) or 0 */
    PyObject *weakreflist;
} SyncObject;

/* Take the lock.  Returns 0 when taken, 1 when this thread already held
 * it (a fastmp RLock: nothing to take or give back), -1 with an exception
 * set.  Pass the result to sync_unlock. */
static inline int
sync_lock(SyncObject *s)
{
    if (s->semlock != NULL) {
        if (fastmp_semlock_held_by_me(s->semlock)) {
            return 1;
        }
        return fastmp_semlock_enter(s->semlock);
    }
    PyObject *r = PyObject_CallNoArgs(s->acquire_m);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Release the lock.  Keeps a pending exception (from the operation done
 * under the lock) in place; returns -1 if releasing failed or an exception
 * was already pending. */
static inline int
sync_unlock(SyncObject *s, int held)
{
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    int pending = PyErr_Occurred() != NULL;
    int r;
    if (held == 1) {
        return pending ? -1 : 0;
    }
    if (pending) {
        PyErr_Fetch(&et, &ev, &tb);
    }
    if (s->semlock != NULL) {
        r = fastmp_semlock_exit(s->semlock);
    }
    else {
        PyObject *res = PyObject_CallNoArgs(s->release_m);
        r = res == NULL ? -1 : 0;
        Py_XDECREF(res);
    }
    if (pending) {
        if (r < 0) {
            /* The release error is the one reported: the lock may still
             * be held, which matters more than the operation's error. */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        }
        else {
            PyErr_Restore(et, ev, tb);
        }
        return -1;
    }
    return r;
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

/* Copy n elements of sz bytes, `stride` bytes apart, out of shared memory
 * into packed dst as one consistent snapshot.  While the lock is a free
 * fastmp mutex this takes no lock at all (see fastmp_semlock_seq): a
 * writer that interferes makes the copy start again, and after a few
 * tries, or with any other lock, the copy is made under the lock. */
static int
sync_gather(SyncObject *s, char *dst, const char *src, Py_ssize_t n,
            Py_ssize_t sz, Py_ssize_t stride)
{
    if (s->seq_word != NULL) {
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
    copy_strided(dst, sz, src, stride, n, sz);
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
    if (codestr != NULL && codestr[0] != '\0' && codestr[1] == '\0' &&
        code_size(codestr[0]) > 0) {
        code = codestr[0];
    }
    PyObject *acq = PyObject_GetAttrString(lock, "acquire");
    if (acq == NULL) {
        return -1;
    }
    PyObject *rel = PyObject_GetAttrString(lock, "release");
    if (rel == NULL) {
        Py_DECREF(acq);
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE | PyBUF_WRITABLE) < 0) {
        Py_DECREF(acq);
        Py_DECREF(rel);
        return -1;
    }
    /* The ctypes object (kept below) owns the memory; the address stays
     * valid for as long as we hold it. */
    self->ptr = view.buf;
    self->nbytes = view.len;
    PyBuffer_Release(&view);

    Py_XSETREF(self->obj, Py_NewRef(obj));
    Py_XSETREF(self->lock, Py_NewRef(lock));
    Py_XSETREF(self->acquire_m, acq);
    Py_XSETREF(self->release_m, rel);
    PyObject *sl = fastmp_semlock_unwrap(lock);
    Py_XSETREF(self->semlock, sl == NULL ? NULL : Py_NewRef(sl));
    self->seq_word = self->seq_gen = NULL;
    if (sl != NULL) {
        /* Leaves both NULL for a counting semaphore. */
        (void)fastmp_semlock_seq(sl, &self->seq_word, &self->seq_gen);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    self->code = code;
    self->itemsize = code ? code_size(code) : 0;
    if (PySequence_Check(obj) && !PyLong_Check(obj)) {
        Py_ssize_t n = PyObject_Length(obj);
        if (n < 0) {
            PyErr_Clear();
            n = 1;
        }
        self->length = n;
    }
    else {
        self->length = 1;
    }
    if (self->itemsize &&
        self->itemsize * self->length > self->nbytes) {
        /* Layout not what we expect: never touch memory directly. */
        self->code = 0;
        self->itemsize = 0;
    }
    return 0;
}

static int
sync_traverse(SyncObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->obj);
    Py_VISIT(self->lock);
    Py_VISIT(self->acquire_m);
    Py_VISIT(self->release_m);
    Py_VISIT(self->semlock);
    return 0;
}

static int
sync_clear(SyncObject *self)
{
    Py_CLEAR(self->obj);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire_m);
    Py_CLEAR(self->release_m);
    Py_CLEAR(self->semlock);
    self->seq_word = self->seq_gen = NULL;
    self->ptr = NULL;
    self->code = 0;
    self->itemsize = 0;
    self->length = 0;
    return 0;
}

static void
sync_dealloc(SyncObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    sync_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
sync_ready(SyncObject *self)
{
    if (self->obj == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "synchronized wrapper not initialised");
        return -1;
    }
    return 0;
}

static PyObject *
sync_repr(SyncObject *self)
{
    if (self->obj == NULL) {
        return PyUnicode_FromFormat("<%s wrapper>", Py_TYPE(self)->tp_name);
    }
    return PyUnicode_FromFormat("<%s wrapper for %S>",
                                Py_TYPE(self)->tp_name, self->obj);
}

static PyObject *
sync_get_obj(SyncObject *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    return Py_NewRef(self->obj);
}

static PyObject *
sync_get_lock(SyncObject *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    return Py_NewRef(self->lock);
}

static PyObject *
sync_acquire(SyncObject *self, PyObject *args, PyObject *kwds)
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    if (self->semlock != NULL && PyTuple_GET_SIZE(args) == 0 &&
        (kwds == NULL || PyDict_GET_SIZE(kwds) == 0)) {
        if (fastmp_semlock_enter(self->semlock) < 0) {
            return NULL;
        }
        Py_RETURN_TRUE;
    }
    return PyObject_Call(self->acquire_m, args, kwds);
}

static PyObject *
sync_release(SyncObject *self, PyObject *args, PyObject *kwds)
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    return PyObject_Call(self->release_m, args, kwds);
}

static PyObject *
sync_enter(SyncObject *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    if (self->semlock != NULL) {
        if (fastmp_semlock_enter(self->semlock) < 0) {
            return NULL;
        }
        Py_RETURN_TRUE;
    }
    return PyObject_CallMethod(self->lock, "__enter__", NULL);
}

static PyObject *
sync_exit(SyncObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    if (self->semlock != NULL) {
        if (fastmp_semlock_exit(self->semlock) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *meth = PyObject_GetAttrString(self->lock, "__exit__");
    if (meth == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_Vectorcall(meth, args, nargs, NULL);
    Py_DECREF(meth);
    return r;
}

/* Getattr / setattr on the ctypes object under the lock (slow path for
 * odd element types, structures' fields, char arrays' value/raw). */
static PyObject *
sync_locked_getattr(SyncObject *self, const char *name)
{
    int held;
    if (sync_ready(self) < 0 || (held = sync_lock(self)) < 0) {
        return NULL;
    }
    PyObject *r = PyObject_GetAttrString(self->obj, name);
    if (sync_unlock(self, held) < 0) {
        Py_XDECREF(r);
        return NULL;
    }
    return r;
}

static int
sync_locked_setattr(SyncObject *self, const char *name, PyObject *v)
{
    int held;
    if (sync_ready(self) < 0 || (held = sync_lock(self)) < 0) {
        return -1;
    }
    int r = PyObject_SetAttrString(self->obj, name, v);
    if (sync_unlock(self, held) < 0) {
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
    return sync_locked_getattr(self, s);
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
    if (s == NULL || sync_locked_setattr(self, s, args[1]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
sync_getbuffer_attr(SyncObject *self, void *Py_UNUSED(c))
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromVoidPtr(self->ptr);
}

static int
sync_getbuffer(SyncObject *self, Py_buffer *view, int flags)
{
    if (self->obj == NULL) {
        PyErr_SetString(PyExc_BufferError,
                        "synchronized wrapper not initialised");
        view->obj = NULL;
        return -1;
    }
    /* The ctypes object is the real exporter (format, shape, lifetime). */
    return PyObject_GetBuffer(self->obj, view, flags);
}

static PyMemberDef sync_members[] = {
    {"_obj", T_OBJECT, offsetof(SyncObject, obj), READONLY, NULL},
    {"_lock", T_OBJECT, offsetof(SyncObject, lock), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SyncObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef sync_getset[] = {
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
    {Py_tp_dealloc, sync_dealloc},
    {Py_tp_traverse, sync_traverse},
    {Py_tp_clear, sync_clear},
    {Py_tp_repr, sync_repr},
    {Py_tp_methods, sync_methods},
    {Py_tp_members, sync_members},
    {Py_tp_getset, sync_getset},
    {Py_bf_getbuffer, sync_getbuffer},
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

static PyObject *
value_get(SyncObject *self, void *Py_UNUSED(closure))
{
    if (self->code == 0) {
        return sync_locked_getattr(self, "value");
    }
    char tmp[16];
    if (sync_gather(self, tmp, self->ptr, 1, self->itemsize,
                    self->itemsize) < 0) {
        return NULL;
    }
    return elem_unpack(self->code, tmp);
}

static int
value_set(SyncObject *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "can't delete attribute");
        return -1;
    }
    char tmp[16];
    int r = self->code ? elem_pack(self->code, v, tmp) : 1;
    if (r < 0) {
        return -1;
    }
    if (r > 0) {
        return sync_locked_setattr(self, "value", v);
    }
    int held = sync_lock(self);
    if (held < 0) {
        return -1;
    }
    memcpy(self->ptr, tmp, self->itemsize);
    return sync_unlock(self, held);
}

/* ---- atomics ------------------------------------------------------ */

static int
atomic_ready(SyncObject *self)
{
    if (self->obj == NULL || !code_is_int(self->code)) {
        PyErr_SetString(PyExc_TypeError,
                        "atomic operations need an integer Value");
        return -1;
    }
    return 0;
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

enum { AT_ADD, AT_FETCH_ADD, AT_XCHG };

static uint64_t
atomic_rmw(void *p, Py_ssize_t size, int op, uint64_t n)
{
    switch (size) {
    case 1:
        if (op == AT_XCHG) {
            return __atomic_exchange_n((uint8_t *)p, (uint8_t)n,
                                       __ATOMIC_SEQ_CST);
        }
        return __atomic_fetch_add((uint8_t *)p, (uint8_t)n,
                                  __ATOMIC_SEQ_CST);
    case 2:
        if (op == AT_XCHG) {
            return __atomic_exchange_n((uint16_t *)p, (uint16_t)n,
                                       __ATOMIC_SEQ_CST);
        }
        return __atomic_fetch_add((uint16_t *)p, (uint16_t)n,
                                  __ATOMIC_SEQ_CST);
    case 4:
        if (op == AT_XCHG) {
            return __atomic_exchange_n((uint32_t *)p, (uint32_t)n,
                                       __ATOMIC_SEQ_CST);
        }
        return __atomic_fetch_add((uint32_t *)p, (uint32_t)n,
                                  __ATOMIC_SEQ_CST);
    default:
        if (op == AT_XCHG) {
            return __atomic_exchange_n((uint64_t *)p, n, __ATOMIC_SEQ_CST);
        }
        return __atomic_fetch_add((uint64_t *)p, n, __ATOMIC_SEQ_CST);
    }
}

static PyObject *
atomic_op(SyncObject *self, PyObject *arg, int op)
{
    uint64_t n;
    if (atomic_ready(self) < 0 || atomic_arg(arg, &n) < 0) {
        return NULL;
    }
    uint64_t old = atomic_rmw(self->ptr, self->itemsize, op, n);
    return int_from_bits(self->code, op == AT_ADD ? old + n : old);
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
    if (atomic_ready(self) < 0) {
        return NULL;
    }
    uint64_t v;
    switch (self->itemsize) {
    case 1: v = __atomic_load_n((uint8_t *)self->ptr, __ATOMIC_SEQ_CST);
            break;
    case 2: v = __atomic_load_n((uint16_t *)self->ptr, __ATOMIC_SEQ_CST);
            break;
    case 4: v = __atomic_load_n((uint32_t *)self->ptr, __ATOMIC_SEQ_CST);
            break;
    default: v = __atomic_load_n((uint64_t *)self->ptr, __ATOMIC_SEQ_CST);
            break;
    }
    return int_from_bits(self->code, v);
}

static PyObject *
value_store(SyncObject *self, PyObject *arg)
{
    uint64_t n;
    if (atomic_ready(self) < 0 || atomic_arg(arg, &n) < 0) {
        return NULL;
    }
    switch (self->itemsize) {
    case 1: __atomic_store_n((uint8_t *)self->ptr, (uint8_t)n,
                             __ATOMIC_SEQ_CST);
            break;
    case 2: __atomic_store_n((uint16_t *)self->ptr, (uint16_t)n,
                             __ATOMIC_SEQ_CST);
            break;
    case 4: __atomic_store_n((uint32_t *)self->ptr, (uint32_t)n,
                             __ATOMIC_SEQ_CST);
            break;
    default: __atomic_store_n((uint64_t *)self->ptr, n, __ATOMIC_SEQ_CST);
            break;
    }
    Py_RETURN_NONE;
}

static PyObject *
value_compare_exchange(SyncObject *self, PyObject *const *args,
                       Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "compare_exchange expected 2 arguments, got %zd",
                     nargs);
        return NULL;
    }
    uint64_t e, n;
    if (atomic_ready(self) < 0 || atomic_arg(args[0], &e) < 0 ||
        atomic_arg(args[1], &n) < 0) {
        return NULL;
    }
    int ok;
    switch (self->itemsize) {
    case 1: {
        uint8_t x = (uint8_t)e;
        ok = __atomic_compare_exchange_n((uint8_t *)self->ptr, &x,
                                         (uint8_t)n, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)e;
        ok = __atomic_compare_exchange_n((uint16_t *)self->ptr, &x,
                                         (uint16_t)n, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)e;
        ok = __atomic_compare_exchange_n((uint32_t *)self->ptr, &x,
                                         (uint32_t)n, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST);
        break;
    }
    default: {
        uint64_t x = e;
        ok = __atomic_compare_exchange_n((uint64_t *)self->ptr, &x, n, 0,
                                         __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST);
        break;
    }
    }
    return PyBool_FromLong(ok);
}

static PyGetSetDef value_getset[] = {
    {"value", (getter)value_get, (setter)value_set,
     "The value, read or written under the lock.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef value_methods[] = {
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

static PyType_Slot value_slots[] = {
    {Py_tp_traverse, sync_traverse},
    {Py_tp_clear, sync_clear},
    {Py_tp_dealloc, sync_dealloc},
    {Py_tp_getset, value_getset},
    {Py_tp_methods, value_methods},
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

/* ---- SynchronizedArray -------------------------------------------- */

static Py_ssize_t
array_len(SyncObject *self)
{
    if (sync_ready(self) < 0) {
        return -1;
    }
    return self->length;
}

static PyObject *
array_item(SyncObject *self, Py_ssize_t i)
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    if (i < 0 || i >= self->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return NULL;
    }
    if (self->code == 0) {
        int held = sync_lock(self);
        if (held < 0) {
            return NULL;
        }
        PyObject *r = PySequence_GetItem(self->obj, i);
        if (sync_unlock(self, held) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        return r;
    }
    char tmp[16];
    if (sync_gather(self, tmp, self->ptr + i * self->itemsize, 1,
                    self->itemsize, self->itemsize) < 0) {
        return NULL;
    }
    return elem_unpack(self->code, tmp);
}

static int
array_ass_item(SyncObject *self, Py_ssize_t i, PyObject *v)
{
    if (sync_ready(self) < 0) {
        return -1;
    }
    if (v == NULL) {
        /* As the stdlib's wrapper: it has no __delitem__. */
        PyErr_SetString(PyExc_AttributeError, "__delitem__");
        return -1;
    }
    if (i < 0 || i >= self->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return -1;
    }
    char tmp[16];
    int r = (self->code && v != NULL) ? elem_pack(self->code, v, tmp) : 1;
    if (r < 0) {
        return -1;
    }
    int held = sync_lock(self);
    if (held < 0) {
        return -1;
    }
    if (r > 0) {
        r = v == NULL ? PySequence_DelItem(self->obj, i)
                      : PySequence_SetItem(self->obj, i, v);
        if (sync_unlock(self, held) < 0) {
            return -1;
        }
        return r;
    }
    memcpy(self->ptr + i * self->itemsize, tmp, self->itemsize);
    return sync_unlock(self, held);
}

/* Fill `list` (n fresh slots) from n packed elements: one tight loop per
 * element type, since this is the hot part of `arr[:]`.  Integers in the
 * interpreter's small-int range come from the table in the module state
 * (the very objects PyLong_FromLong would return). */
#define UNPACK_LOOP(ctype, make)                                        \
    do {                                                                \
        for (Py_ssize_t k = 0; k < n; k++) {                            \
            ctype x;                                                    \
            memcpy(&x, buf + k * (Py_ssize_t)sizeof(ctype),             \
                   sizeof(ctype));                                      \
            PyObject *o = make(x);                                      \
            if (o == NULL) {                                            \
                return -1;                                              \
            }                                                           \
            PyList_SET_ITEM(list, k, o);                                \
        }                                                               \
        return 0;                                                       \
    } while (0)

static inline PyObject *
int_from_long(PyObject *const *small, long v)
{
    if (v >= FASTMP_SMALL_INT_MIN && v <= FASTMP_SMALL_INT_MAX) {
        return Py_NewRef(small[v - FASTMP_SMALL_INT_MIN]);
    }
    return PyLong_FromLong(v);
}

static inline PyObject *
int_from_ulong(PyObject *const *small, unsigned long v)
{
    if (v <= (unsigned long)FASTMP_SMALL_INT_MAX) {
        return Py_NewRef(small[(long)v - FASTMP_SMALL_INT_MIN]);
    }
    return PyLong_FromUnsignedLong(v);
}

#define INT_S(x) int_from_long(small, (long)(x))
#define INT_U(x) int_from_ulong(small, (unsigned long)(x))

static int
unpack_list(int code, const char *buf, Py_ssize_t n, PyObject *list)
{
    fastmp_state *st = fastmp_get_state();
    if (st == NULL) {
        return -1;
    }
    PyObject *const *small = st->sharedctypes.small_ints;
    switch (code) {
    case 'b': UNPACK_LOOP(signed char, INT_S);
    case 'B': UNPACK_LOOP(unsigned char, INT_U);
    case 'h': UNPACK_LOOP(short, INT_S);
    case 'H': UNPACK_LOOP(unsigned short, INT_U);
    case 'i': UNPACK_LOOP(int, INT_S);
    case 'I': UNPACK_LOOP(unsigned int, INT_U);
    case 'l': UNPACK_LOOP(long, INT_S);
    case 'L': UNPACK_LOOP(unsigned long, INT_U);
    case 'q': UNPACK_LOOP(long long, PyLong_FromLongLong);
    case 'Q': UNPACK_LOOP(unsigned long long, PyLong_FromUnsignedLongLong);
    case 'f': UNPACK_LOOP(float, PyFloat_FromDouble);
    case 'd': UNPACK_LOOP(double, PyFloat_FromDouble);
    case '?': UNPACK_LOOP(_Bool, PyBool_FromLong);
    default:
        break;
    }
    Py_ssize_t sz = code_size(code);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *o = elem_unpack(code, buf + k * sz);
        if (o == NULL) {
            return -1;
        }
        PyList_SET_ITEM(list, k, o);
    }
    return 0;
}
#undef UNPACK_LOOP
#undef INT_S
#undef INT_U

static PyObject *
array_subscript(SyncObject *self, PyObject *key)
{
    if (sync_ready(self) < 0) {
        return NULL;
    }
    if (!PySlice_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (i < 0) {
            i += self->length;
        }
        return array_item(self, i);
    }
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
        return NULL;
    }
    Py_ssize_t n = PySlice_AdjustIndices(self->length, &start, &stop, step);
    if (self->code == 0 || self->code == 'c') {
        int held = sync_lock(self);
        if (held < 0) {
            return NULL;
        }
        PyObject *r = PyObject_GetItem(self->obj, key);
        if (sync_unlock(self, held) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        return r;
    }
    Py_ssize_t sz = self->itemsize;
    char stackbuf[256];
    char *buf = stackbuf;
    if (n * sz > (Py_ssize_t)sizeof(stackbuf)) {
        buf = PyMem_Malloc(n * sz);
        if (buf == NULL) {
            return PyErr_NoMemory();
        }
    }
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        goto error;
    }
    if (sync_gather(self, buf, self->ptr + start * sz, n, sz,
                    step * sz) < 0) {
        goto error;
    }
    if (unpack_list(self->code, buf, n, list) < 0) {
        goto error;
    }
    if (buf != stackbuf) {
        PyMem_Free(buf);
    }
    return list;
error:
    Py_XDECREF(list);
    if (buf != stackbuf) {
        PyMem_Free(buf);
    }
    return NULL;
}

static int
array_ass_subscript(SyncObject *self, PyObject *key, PyObject *v)
{
    if (sync_ready(self) < 0) {
        return -1;
    }
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "__delitem__");
        return -1;
    }
    if (!PySlice_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (i < 0) {
            i += self->length;
        }
        return array_ass_item(self, i, v);
    }
    PyObject *seq = NULL;
    char *buf = NULL;
    int r = 1;
    Py_ssize_t start, stop, step, n = 0;
    Py_ssize_t sz = self->itemsize;
    if (v != NULL && self->code != 0 && self->code != 'c') {
        if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
            return -1;
        }
        n = PySlice_AdjustIndices(self->length, &start, &stop, step);
        seq = PySequence_Fast(v, "can only assign an iterable");
        if (seq == NULL) {
            /* Let ctypes produce its own error for odd values. */
            PyErr_Clear();
        }
        else if (PySequence_Fast_GET_SIZE(seq) != n) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError,
                            "Can only assign sequence of same size");
            return -1;
        }
        else {
            buf = PyMem_Malloc(n * sz + 1);
            if (buf == NULL) {
                Py_DECREF(seq);
                PyErr_NoMemory();
                return -1;
            }
            PyObject **items = PySequence_Fast_ITEMS(seq);
            r = 0;
            for (Py_ssize_t k = 0; k < n && r == 0; k++) {
                r = elem_pack(self->code, items[k], buf + k * sz);
            }
            if (r < 0) {
                goto done;
            }
        }
    }
    int held = sync_lock(self);
    if (held < 0) {
        r = -1;
        goto done;
    }
    if (r == 0) {
        copy_strided(self->ptr + start * sz, step * sz, buf, sz, n, sz);
    }
    else if (v == NULL) {
        r = PyObject_DelItem(self->obj, key);
    }
    else {
        r = PyObject_SetItem(self->obj, key, seq != NULL ? seq : v);
    }
    if (sync_unlock(self, held) < 0) {
        r = -1;
    }
done:
    Py_XDECREF(seq);
    PyMem_Free(buf);
    return r < 0 ? -1 : 0;
}

static PyType_Slot array_slots[] = {
    {Py_tp_traverse, sync_traverse},
    {Py_tp_clear, sync_clear},
    {Py_tp_dealloc, sync_dealloc},
    {Py_sq_length, array_len},
    {Py_sq_item, array_item},
    {Py_sq_ass_item, array_ass_item},
    {Py_mp_length, array_len},
    {Py_mp_subscript, array_subscript},
    {Py_mp_ass_subscript, array_ass_subscript},
    {Py_tp_doc, "SynchronizedArray(obj, lock, code=None)\n--\n\n"
                "A synchronized shared ctypes array."},
    {0, NULL},
};

static PyType_Spec array_spec = {
    .name = "fastmp._fastmp.SynchronizedArray",
    .basicsize = sizeof(SyncObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = array_slots,
};

/* ---- SynchronizedString (char arrays) ------------------------------- */

static PyObject *
string_get(SyncObject *self, void *closure)
{
    return sync_locked_getattr(self, (const char *)closure);
}

static int
string_set(SyncObject *self, PyObject *v, void *closure)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "can't delete attribute");
        return -1;
    }
    return sync_locked_setattr(self, (const char *)closure, v);
}

static PyGetSetDef string_getset[] = {
    {"value", (getter)string_get, (setter)string_set,
     "The string up to the first NUL, under the lock.", "value"},
    {"raw", (getter)string_get, (setter)string_set,
     "All the bytes, under the lock.", "raw"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot string_slots[] = {
    {Py_tp_traverse, sync_traverse},
    {Py_tp_clear, sync_clear},
    {Py_tp_dealloc, sync_dealloc},
    {Py_tp_getset, string_getset},
    {Py_tp_doc, "SynchronizedString(obj, lock, code=None)\n--\n\n"
                "A synchronized shared ctypes char array."},
    {0, NULL},
};

static PyType_Spec string_spec = {
    .name = "fastmp._fastmp.SynchronizedString",
    .basicsize = sizeof(SyncObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = string_slots,
};

/* ---- module glue ---------------------------------------------------- */

PyMethodDef fastmp_sharedctypes_functions[] = {
    {"_block_alloc", sct_block_alloc, METH_O,
     PyDoc_STR("_block_alloc(size, /)\n--\n\n"
               "A new zeroed Block of shared memory.")},
    {"_block_attach", sct_block_attach, METH_VARARGS,
     PyDoc_STR("_block_attach(segment, offset, size, /)\n--\n\n"
               "Rebuild a Block from its segment (in a spawned child).")},
    {NULL, NULL, 0, NULL},
};

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
    fastmp_sharedctypes_state *s = &st->sharedctypes;
    s->BlockType = add_type(m, &block_spec, NULL, "Block");
    if (s->BlockType == NULL) {
        return -1;
    }
    s->SyncBaseType = add_type(m, &syncbase_spec, NULL, "SynchronizedBase");
    if (s->SyncBaseType == NULL) {
        return -1;
    }
    s->SyncType = add_type(m, &value_spec, (PyObject *)s->SyncBaseType,
                           "Synchronized");
    if (s->SyncType == NULL) {
        return -1;
    }
    s->SyncArrayType = add_type(m, &array_spec, (PyObject *)s->SyncBaseType,
                                "SynchronizedArray");
    if (s->SyncArrayType == NULL) {
        return -1;
    }
    s->SyncStringType = add_type(m, &string_spec,
                                 (PyObject *)s->SyncArrayType,
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
