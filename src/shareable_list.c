/*
 * shareable_list.c -- _ShareableListCore: item get/set of a ShareableList
 * in the stdlib's binary layout, plus a trailer that makes writes atomic
 * for readers (the layout and the trailer's protocol are described below).
 * The segment itself is a _ShmMapping (shm.c); the type is created by
 * fastmp_shm_exec.
 */
#include "shm_internal.h"

#include <errno.h>
#include <string.h>

/*
 * The stdlib's layout (all integers native, 8-byte aligned):
 *
 *   [0, 8)                 n, the number of items
 *   [8, 8 + 8(n+1))        offsets[0..n] of each item's slot from `data`
 *   data = 8(n+2)          the slots; slot i is offsets[i+1]-offsets[i]
 *   fmts = data+offsets[n] n struct formats, 8 bytes each, NUL padded
 *   codes = fmts + 8n      n back-transform codes, one signed byte each
 *
 * n and offsets are written by the creator before _bind() and read-only
 * afterwards (each process copies and checks them at _bind()).  Item i's
 * format, code and slot are written under the trailer's seqlock below on
 * lists fastmp made; stdlib-made lists, and stdlib processes writing a
 * fastmp-made list, have no protection.
 *
 * fastmp adds a trailer at T = align8(codes + n), inside the segment only
 * when fastmp created it (it asks for T + 32 bytes); the stdlib never
 * looks past codes + n, so it reads and writes such lists unchanged.
 * The mapping starts on a page boundary, so every trailer field is
 * naturally aligned.
 *
 *   magic (8)   written once by the creator before the name is handed out
 *               (SL_MAGIC names this layout; a list with another value
 *               gets no seqlock).
 *   seq (4)     the seqlock: odd while a writer is inside.  Changed only by
 *               the holder of `owner`, with release ordering.
 *   spare (4)
 *   owner (8)   the writer lock: the project's owner lock (owner.c), 0
 *               when free, else the holder's pid and start token, set by
 *               the one CAS that takes it.
 *   spare (8)
 *
 * Writers take `owner`, bump seq to odd, write the format, code and slot,
 * bump seq to even and free `owner`.  Readers copy format, code and slot
 * and retry until seq was even and unchanged around the copy: a reader
 * never builds a value from a torn write.  A reader that finds seq odd
 * waits for the writer by taking `owner` itself (the owner lock's wait:
 * GIL released, signals checked, a dead holder taken over), and frees it
 * at once.  Whoever holds `owner` and finds seq odd makes it even: under
 * the lock no writer is inside, so an odd seq there was left by a writer
 * that died (taken over) or by corruption.  A writer killed inside leaves
 * `owner` naming it and seq odd; the item it was writing may then hold a
 * mix of old and new bytes (never out of its slot).  Item writes never
 * release the GIL, so a process that finds itself named as the holder
 * knows the word is stale (FASTMP_OWNER_SELF_IS_STALE).  Lists without the
 * trailer (made by the stdlib) get the stdlib's non-atomic behaviour.
 * A corrupt trailer never hangs: an odd seq with `owner` free is made even
 * by the next reader or writer, and an `owner` naming a dead pid, a live
 * pid with another start token, or the caller's own process is taken
 * over; one naming a live process with token 0 or 1 ("unknown") is a
 * live holder, waited for interruptibly.
 *
 * Strings and bytes ending in NUL bytes (gh-96779): the stdlib stores a
 * str/bytes item with format "<slot>s" and strips trailing NULs on read.
 * fastmp keeps that format for values without a trailing NUL; for a value
 * that ends in NUL it writes "<len>s<slot-len>x", which the stdlib's
 * reader unpacks to exactly the value's bytes (and whose last char is not
 * "s", so a stdlib writer goes back to "<slot>s").  When that format does
 * not fit in 8 characters the write raises ValueError.
 */

/* "fmpslst2" (the first layout, "fmpslist", had a 32-bit pid lock). */
#define SL_MAGIC UINT64_C(0x666d70736c737432)
#define SL_TRAILER_BYTES 32

typedef struct {
    uint64_t magic;
    uint32_t seq;
    uint32_t spare0;
    uint64_t owner;
    uint64_t spare1;
} sl_trailer;

_Static_assert(sizeof(sl_trailer) == SL_TRAILER_BYTES, "trailer size");
_Static_assert(offsetof(sl_trailer, owner) % 8 == 0, "owner alignment");

typedef struct {
    PyObject_HEAD
    MappingObject *mapping; /* NULL until _bind() */
    Py_ssize_t n;
    int64_t *offsets; /* n + 1, copied and validated at _bind */
    Py_ssize_t data;  /* byte offsets in the mapping */
    Py_ssize_t fmts;
    Py_ssize_t codes;
    sl_trailer *trailer; /* NULL: no seqlock (stdlib-made list) */
} ListCoreObject;

static int
core_traverse(PyObject *op, visitproc visit, void *arg)
{
    ListCoreObject *self = (ListCoreObject *)op;
    Py_VISIT(self->mapping);
#if PY_VERSION_HEX >= 0x03090000
    Py_VISIT(Py_TYPE(op));
#endif
    return 0;
}

static int
core_clear(PyObject *op)
{
    ListCoreObject *self = (ListCoreObject *)op;
    Py_CLEAR(self->mapping);
    self->trailer = NULL;
    return 0;
}

static void
core_dealloc(PyObject *op)
{
    ListCoreObject *self = (ListCoreObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)core_clear(op);
    PyMem_Free(self->offsets);
    self->offsets = NULL;
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* The mapping base, or NULL with TypeError when unbound or closed (the
 * stdlib fails with TypeError there too: its buf is None). */
static char *
core_base(ListCoreObject *self)
{
    if (self->mapping == NULL || self->mapping->closed) {
        PyErr_SetString(PyExc_TypeError,
                        "the ShareableList's shared memory is closed");
        return NULL;
    }
    return self->mapping->addr;
}

/* _bind(mapping, init): read and validate the layout in `mapping`.
 * init true: this process created the list and sized the segment for the
 * trailer; write its magic. */
static PyObject *
core_bind(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    ListCoreObject *self = (ListCoreObject *)op;
    fastmp_state *st = fastmp_get_state();
    MappingObject *m;
    int init;
    int64_t n, i, *offs;
    Py_ssize_t size, end, t;
    char *base;

    if (nargs != 2 || !PyObject_TypeCheck(args[0], st->shm.MappingType)) {
        PyErr_SetString(PyExc_TypeError, "_bind(mapping, init)");
        return NULL;
    }
    m = (MappingObject *)args[0];
    init = PyObject_IsTrue(args[1]);
    if (init < 0) {
        return NULL;
    }
    if (fastmp_shm_mapping_ensure(m) < 0) {
        return NULL;
    }
    base = m->addr;
    size = m->size;
    if (size < 8) {
        goto corrupt;
    }
    memcpy(&n, base, 8);
    if (n < 0 || n > (size / 8) - 2) {
        goto corrupt;
    }
    offs = PyMem_New(int64_t, (size_t)n + 1);
    if (offs == NULL) {
        return PyErr_NoMemory();
    }
    memcpy(offs, base + 8, (size_t)(n + 1) * 8);
    for (i = 0; i <= n; i++) {
        if (offs[i] < 0 || offs[i] > size
            || (i > 0 && offs[i] < offs[i - 1])) {
            PyMem_Free(offs);
            goto corrupt;
        }
    }
    end = (Py_ssize_t)(8 * (n + 2));
    if (offs[n] > size - end || 9 * n > size - end - offs[n]) {
        PyMem_Free(offs);
        goto corrupt;
    }
    PyMem_Free(self->offsets);
    self->offsets = offs;
    self->n = (Py_ssize_t)n;
    self->data = end;
    self->fmts = end + (Py_ssize_t)offs[n];
    self->codes = self->fmts + 8 * (Py_ssize_t)n;
    t = (self->codes + (Py_ssize_t)n + 7) & ~(Py_ssize_t)7;
    self->trailer = NULL;
    if (t + SL_TRAILER_BYTES <= size) {
        sl_trailer *tr = (sl_trailer *)(base + t);
        if (init) {
            __atomic_store_n(&tr->magic, SL_MAGIC, __ATOMIC_RELEASE);
        }
        if (__atomic_load_n(&tr->magic, __ATOMIC_ACQUIRE) == SL_MAGIC) {
            self->trailer = tr;
        }
    }
    Py_INCREF(m);
    Py_XSETREF(self->mapping, m);
    Py_RETURN_NONE;

corrupt:
    PyErr_SetString(PyExc_ValueError,
                    "shared memory does not hold a valid ShareableList");
    return NULL;
}

static PyObject *
core_unbind(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ListCoreObject *self = (ListCoreObject *)op;
    Py_CLEAR(self->mapping);
    self->trailer = NULL;
    Py_RETURN_NONE;
}

static PyObject *
core_get_atomic(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((ListCoreObject *)op)->trailer != NULL);
}

/* ---- the seqlock ---- */

/* Item writes and the repair below never release the GIL: finding this
 * process named as the holder means the word is stale. */
#define SL_OWNER_FLAGS                                                        \
    (FASTMP_OWNER_INTERRUPTIBLE | FASTMP_OWNER_SELF_IS_STALE)

/* Take the writer lock of tr, blocking (GIL released, Ctrl-C checked; a
 * dead or stale holder is taken over), and make seq odd.  An odd seq
 * found under the lock is left by a writer that died inside (or is
 * corrupt) and is made even first.  0, or -1 with an exception set (a
 * signal handler raised). */
static int
sl_write_begin(sl_trailer *tr)
{
    uint32_t s;
    if (!fastmp_owner_try(&tr->owner)
        && fastmp_owner_lock(&tr->owner, NULL, SL_OWNER_FLAGS) < 0) {
        return -1;
    }
    s = __atomic_load_n(&tr->seq, __ATOMIC_RELAXED);
    s += (s & 1);
    __atomic_store_n(&tr->seq, s + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return 0;
}

static void
sl_write_end(sl_trailer *tr)
{
    uint32_t s = __atomic_load_n(&tr->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&tr->seq, s + 1, __ATOMIC_RELEASE);
    fastmp_owner_unlock(&tr->owner);
}

/* Reader side, slow path: seq was odd.  Wait for the writer by taking the
 * writer lock (the owner lock's blocking wait), repair an odd seq left
 * under it, free it, and look again.  0 with an even seq in *out, or -1
 * with an exception set (a signal handler raised). */
static int
sl_read_wait(sl_trailer *tr, uint32_t *out)
{
    for (;;) {
        uint32_t s;
        if (fastmp_owner_lock(&tr->owner, NULL, SL_OWNER_FLAGS) < 0) {
            return -1;
        }
        s = __atomic_load_n(&tr->seq, __ATOMIC_RELAXED);
        if (s & 1) {
            __atomic_store_n(&tr->seq, s + 1, __ATOMIC_RELEASE);
        }
        fastmp_owner_unlock(&tr->owner);
        s = __atomic_load_n(&tr->seq, __ATOMIC_ACQUIRE);
        if (!(s & 1)) {
            *out = s;
            return 0;
        }
    }
}

/* Reader side: wait for an even seq and store it in *out.  0, or -1 with
 * an exception set. */
static inline int
sl_read_begin(sl_trailer *tr, uint32_t *out)
{
    uint32_t s = __atomic_load_n(&tr->seq, __ATOMIC_ACQUIRE);
    if (!(s & 1)) {
        *out = s;
        return 0;
    }
    return sl_read_wait(tr, out);
}

static int
sl_read_retry(sl_trailer *tr, uint32_t s)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(&tr->seq, __ATOMIC_RELAXED) != s;
}

/* ---- formats ---- */

enum { F_Q, F_D, F_BOOL, F_NONE, F_S, F_BAD };

/* Parse an 8-byte format field.  For "Ns" / "NsMx" set *len = N and
 * *exact (1 when the "Mx" tail marks an exact length). */
static int
parse_format(const char f[8], Py_ssize_t *len, int *exact)
{
    char buf[9];
    size_t l;
    const char *p;
    Py_ssize_t v = 0;

    memcpy(buf, f, 8);
    buf[8] = '\0';
    l = strlen(buf);
    if (l == 1 && buf[0] == 'q') {
        return F_Q;
    }
    if (l == 1 && buf[0] == 'd') {
        return F_D;
    }
    if (l == 8 && memcmp(buf, "xxxxxxx?", 8) == 0) {
        return F_BOOL;
    }
    if (l == 8 && memcmp(buf, "xxxxxx?x", 8) == 0) {
        return F_NONE;
    }
    p = buf;
    if (*p < '0' || *p > '9') {
        return F_BAD;
    }
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p++ - '0');
    }
    if (*p++ != 's') {
        return F_BAD;
    }
    *len = v;
    *exact = 0;
    if (*p == '\0') {
        return F_S;
    }
    if (*p < '0' || *p > '9') {
        return F_BAD;
    }
    while (*p >= '0' && *p <= '9') {
        p++;
    }
    if (p[0] != 'x' || p[1] != '\0') {
        return F_BAD;
    }
    *exact = 1;
    return F_S;
}

#define SL_STACK_BYTES 256

static PyObject *
core_item(PyObject *op, Py_ssize_t i)
{
    ListCoreObject *self = (ListCoreObject *)op;
    char *base = core_base(self);
    char fmt[8], stackbuf[SL_STACK_BYTES], *tmp = stackbuf;
    Py_ssize_t slot, len = 0, off;
    signed char code;
    int kind, exact = 0;
    uint32_t s = 0;
    PyObject *res = NULL;

    if (base == NULL) {
        return NULL;
    }
    if (i < 0 || i >= self->n) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return NULL;
    }
    off = self->data + (Py_ssize_t)self->offsets[i];
    slot = (Py_ssize_t)(self->offsets[i + 1] - self->offsets[i]);
    if (slot > SL_STACK_BYTES) {
        tmp = PyMem_Malloc((size_t)slot);
        if (tmp == NULL) {
            return PyErr_NoMemory();
        }
    }
    for (;;) {
        if (self->trailer != NULL && sl_read_begin(self->trailer, &s) < 0) {
            goto done;
        }
        memcpy(fmt, base + self->fmts + 8 * i, 8);
        code = (signed char)base[self->codes + i];
        memcpy(tmp, base + off, (size_t)slot);
        if (self->trailer == NULL || !sl_read_retry(self->trailer, s)) {
            break;
        }
    }
    kind = parse_format(fmt, &len, &exact);
    res = NULL;
    if (code == 3) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    if (code < 0 || code > 3) {
        PyErr_Format(PyExc_KeyError, "%d", (int)code);
        goto done;
    }
    switch (kind) {
    case F_Q:
    case F_D:
    case F_BOOL:
        if (slot < 8 || code != 0) {
            goto bad;
        }
        if (kind == F_Q) {
            int64_t v;
            memcpy(&v, tmp, 8);
            res = PyLong_FromLongLong((long long)v);
        }
        else if (kind == F_D) {
            double d;
            memcpy(&d, tmp, 8);
            res = PyFloat_FromDouble(d);
        }
        else {
            res = PyBool_FromLong(tmp[7] != 0);
        }
        break;
    case F_S:
        if (len > slot) {
            goto bad;
        }
        if (!exact && code != 0) {
            while (len > 0 && tmp[len - 1] == '\0') {
                len--;
            }
        }
        if (code == 1) {
            res = PyUnicode_DecodeUTF8(tmp, len, NULL);
        }
        else {
            res = PyBytes_FromStringAndSize(tmp, len);
        }
        break;
    default:
        goto bad;
    }
    goto done;
bad:
    PyErr_Format(PyExc_ValueError,
                 "unsupported ShareableList item format %.8s", fmt);
done:
    if (tmp != stackbuf) {
        PyMem_Free(tmp);
    }
    return res;
}

static int
core_ass_item(PyObject *op, Py_ssize_t i, PyObject *value)
{
    ListCoreObject *self = (ListCoreObject *)op;
    char *base = core_base(self);
    char fmt[9], raw[8];
    const char *src = raw;
    Py_ssize_t slot, off, len = 8;
    signed char code = 0;
    PyObject *encoded = NULL;

    if (base == NULL) {
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "'ShareableList' object doesn't support item "
                        "deletion");
        return -1;
    }
    if (i < 0 || i >= self->n) {
        PyErr_SetString(PyExc_IndexError, "assignment index out of range");
        return -1;
    }
    off = self->data + (Py_ssize_t)self->offsets[i];
    slot = (Py_ssize_t)(self->offsets[i + 1] - self->offsets[i]);
    memset(fmt, 0, sizeof(fmt));
    memset(raw, 0, sizeof(raw));
    if (PyUnicode_Check(value) || PyBytes_Check(value)) {
        char *p;
        if (PyUnicode_Check(value)) {
            encoded = PyUnicode_AsUTF8String(value);
            if (encoded == NULL) {
                return -1;
            }
            code = 1;
        }
        else {
            encoded = Py_NewRef(value);
            code = 2;
        }
        p = PyBytes_AS_STRING(encoded);
        len = PyBytes_GET_SIZE(encoded);
        if (len > slot) {
            PyErr_SetString(PyExc_ValueError,
                            "bytes/str item exceeds available storage");
            goto error;
        }
        if (len > 0 && p[len - 1] == '\0') {
            int w = snprintf(fmt, sizeof(fmt), "%zds%zdx", len, slot - len);
            if (w < 0 || w > 8) {
                PyErr_SetString(PyExc_ValueError,
                                "bytes/str item ending in NUL bytes is "
                                "too long for its slot's format");
                goto error;
            }
        }
        else {
            (void)snprintf(fmt, sizeof(fmt), "%zds", slot);
        }
        src = p;
    }
    else if (PyBool_Check(value)) {
        memcpy(fmt, "xxxxxxx?", 8);
        raw[7] = (value == Py_True);
    }
    else if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        int64_t v64;
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow) {
            fastmp_state *st = fastmp_get_state();
            PyErr_SetString(st->shm.struct_error,
                            "'q' format requires -9223372036854775808 <= "
                            "number <= 9223372036854775807");
            return -1;
        }
        v64 = (int64_t)v;
        fmt[0] = 'q';
        memcpy(raw, &v64, 8);
    }
    else if (PyFloat_CheckExact(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        fmt[0] = 'd';
        memcpy(raw, &d, 8);
    }
    else if (value == Py_None) {
        memcpy(fmt, "xxxxxx?x", 8);
        code = 3;
    }
    else {
        PyErr_SetObject(PyExc_KeyError, (PyObject *)Py_TYPE(value));
        return -1;
    }
    if (len > slot) {
        /* A numeric item needs 8 bytes; every slot has at least 8. */
        PyErr_SetString(PyExc_ValueError,
                        "shared memory does not hold a valid ShareableList");
        goto error;
    }
    if (self->trailer != NULL && sl_write_begin(self->trailer) < 0) {
        goto error;
    }
    memcpy(base + self->fmts + 8 * i, fmt, 8);
    base[self->codes + i] = (char)code;
    memcpy(base + off, src, (size_t)len);
    if (encoded != NULL && len < slot) {
        memset(base + off + len, 0, (size_t)(slot - len));
    }
    if (self->trailer != NULL) {
        sl_write_end(self->trailer);
    }
    Py_XDECREF(encoded);
    return 0;

error:
    Py_XDECREF(encoded);
    return -1;
}

static Py_ssize_t
core_length(PyObject *op)
{
    return ((ListCoreObject *)op)->n;
}

static PyMethodDef core_methods[] = {
    {"_bind", (PyCFunction)(void (*)(void))core_bind, METH_FASTCALL,
     "_bind($self, mapping, init, /)\n--\n\n"
     "Attach to the list layout in mapping (internal)."},
    {"_unbind", core_unbind, METH_NOARGS,
     "_unbind($self, /)\n--\n\nDrop the mapping (internal)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef core_getset[] = {
    {"_atomic", core_get_atomic, NULL,
     "True when item writes are atomic for readers (fastmp-made list).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot core_slots[] = {
    {Py_tp_dealloc, core_dealloc},
    {Py_tp_traverse, core_traverse},
    {Py_tp_clear, core_clear},
    {Py_tp_methods, core_methods},
    {Py_tp_getset, core_getset},
    {Py_sq_item, core_item},
    {Py_sq_ass_item, core_ass_item},
    {Py_sq_length, core_length},
    {Py_tp_doc, "Item access of a ShareableList (internal base)."},
    {0, NULL},
};

PyType_Spec fastmp_listcore_spec = {
    .name = "fastmp._fastmp._ShareableListCore",
    .basicsize = sizeof(ListCoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = core_slots,
};
