/*
 * shm.c -- the C core of fastmp.shared_memory.
 *
 * _ShmMapping: an open named POSIX segment (its fd) and, once a buffer is
 *     first asked for, one MAP_SHARED mapping of all of it (mapping lazily
 *     keeps create+close+unlink free of mmap/munmap).  It exports the
 *     buffer protocol; every memoryview (and every numpy array built on
 *     one) holds a reference to it, so the pages stay mapped until the
 *     last view is gone, whatever SharedMemory.close() did.  munmap
 *     happens only in dealloc, which cannot run while a view exists.
 *
 * _ShareableListCore: item get/set of a ShareableList in the stdlib's
 *     binary layout, plus a trailer that makes writes atomic for readers
 *     (see "trailer" below).
 *
 * Functions: _shm_open(name, create, size, mode) -> _ShmMapping,
 *            _shm_unlink(name).
 */
#include "fastmp.h" /* Python.h: _GNU_SOURCE already defined */

#include <errno.h>
#include <string.h>

/* ---- _ShmMapping --------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd;     /* -1 after close() */
    char *addr; /* NULL until first mapped */
    Py_ssize_t size;
    int closed; /* SharedMemory.close() was called: refuse new
                 * exports and ShareableList access */
} MappingObject;

/* Map the segment if not yet done.  0, or -1 with an exception set
 * (BufferError when closed, OSError from mmap). */
static int
mapping_ensure(MappingObject *self)
{
    void *addr;
    if (self->addr != NULL) {
        return 0;
    }
    if (self->closed || self->fd < 0) {
        PyErr_SetString(PyExc_BufferError, "shared memory is closed");
        return -1;
    }
    addr = fastmp_platform_shm_map(self->fd, 0, (uint64_t)self->size);
    if (addr == NULL) {
        /* As the stdlib's mmap.mmap raises it. */
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->addr = addr;
    return 0;
}

static int
mapping_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    MappingObject *self = (MappingObject *)op;
    if (self->closed) {
        PyErr_SetString(PyExc_BufferError, "shared memory is closed");
        view->obj = NULL;
        return -1;
    }
    if (mapping_ensure(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    return PyBuffer_FillInfo(view, op, self->addr, self->size, 0, flags);
}

static void
mapping_dealloc(PyObject *op)
{
    MappingObject *self = (MappingObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->addr != NULL) {
        /* No view can exist here: each one holds a reference to us. */
        fastmp_platform_shm_unmap(self->addr, (uint64_t)self->size);
        self->addr = NULL;
    }
    if (self->fd >= 0) {
        (void)fastmp_platform_close(self->fd);
        self->fd = -1;
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
mapping_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    MappingObject *self = (MappingObject *)op;
    self->closed = 1;
    if (self->fd >= 0) {
        int fd = self->fd;
        self->fd = -1;
        if (fastmp_platform_close(fd) < 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
mapping_get_size(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(((MappingObject *)op)->size);
}

static PyObject *
mapping_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((MappingObject *)op)->closed);
}

static PyMethodDef mapping_methods[] = {
    {"close", mapping_close, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "Close the fd and refuse new buffer exports.  The pages stay mapped "
     "until the last existing view is released."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mapping_getset[] = {
    {"size", mapping_get_size, NULL, "Mapped size in bytes.", NULL},
    {"closed", mapping_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot mapping_slots[] = {
    {Py_tp_dealloc, mapping_dealloc},
    {Py_tp_methods, mapping_methods},
    {Py_tp_getset, mapping_getset},
    {Py_bf_getbuffer, mapping_getbuffer},
    {Py_tp_doc, "A shared mapping of a named segment (internal)."},
    {0, NULL},
};

static PyType_Spec mapping_spec = {
    .name = "fastmp._fastmp._ShmMapping",
    .basicsize = sizeof(MappingObject),
    .flags = Py_TPFLAGS_DEFAULT | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = mapping_slots,
};

/* Raise OSError from errno with `name` as the filename. */
static PyObject *
shm_oserror(int err, PyObject *name)
{
    errno = err;
    return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
}

/* Encode a segment name; ValueError for an embedded NUL. */
static const char *
shm_name_cstr(PyObject *name)
{
    Py_ssize_t len;
    const char *s;
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "name must be str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    s = PyUnicode_AsUTF8AndSize(name, &len);
    if (s == NULL) {
        return NULL;
    }
    if ((size_t)len != strlen(s)) {
        PyErr_SetString(PyExc_ValueError, "embedded null character");
        return NULL;
    }
    return s;
}

/* _shm_open(name, create, size, mode): open (create: O_CREAT|O_EXCL and
 * ftruncate to size) the named segment.  Returns a new, not yet mapped
 * _ShmMapping owning the fd, or NULL with OSError (errno, name) /
 * ValueError (empty segment) set.  A segment this call created is
 * unlinked again when a later step fails. */
static PyObject *
shm_open_func(PyObject *Py_UNUSED(module), PyObject *const *args,
              Py_ssize_t nargs)
{
    fastmp_state *st = fastmp_get_state();
    const char *cname;
    int create, fd = -1, err;
    long mode;
    Py_ssize_t size;
    uint64_t dev, ino, fsize;
    MappingObject *m;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_shm_open takes 4 arguments");
        return NULL;
    }
    cname = shm_name_cstr(args[0]);
    if (cname == NULL) {
        return NULL;
    }
    create = PyObject_IsTrue(args[1]);
    if (create < 0) {
        return NULL;
    }
    size = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    mode = PyLong_AsLong(args[3]);
    if (mode == -1 && PyErr_Occurred()) {
        return NULL;
    }
    fd = fastmp_platform_shm_open_named(cname, create, (int)mode);
    if (fd < 0) {
        return shm_oserror(errno, args[0]);
    }
    if (create) {
        if (size < 0) {
            err = EINVAL; /* what ftruncate says */
            goto os_error_errno;
        }
        if (fastmp_platform_shm_resize(fd, (uint64_t)size) < 0) {
            goto os_error;
        }
        fsize = (uint64_t)size;
    }
    else if (fastmp_platform_file_id(fd, &dev, &ino, &fsize) < 0) {
        goto os_error;
    }
    if (fsize == 0) {
        (void)fastmp_platform_close(fd);
        if (create) {
            (void)fastmp_platform_shm_unlink_named(cname);
        }
        PyErr_SetString(PyExc_ValueError, "cannot mmap an empty file");
        return NULL;
    }
    if (fsize > (uint64_t)PY_SSIZE_T_MAX) {
        err = EFBIG;
        goto os_error_errno;
    }
    m = PyObject_New(MappingObject, st->shm.MappingType);
    if (m == NULL) {
        (void)fastmp_platform_close(fd);
        if (create) {
            (void)fastmp_platform_shm_unlink_named(cname);
        }
        return NULL;
    }
    m->fd = fd;
    m->addr = NULL;
    m->size = (Py_ssize_t)fsize;
    m->closed = 0;
    return (PyObject *)m;

os_error:
    err = errno;
os_error_errno:
    (void)fastmp_platform_close(fd);
    if (create) {
        (void)fastmp_platform_shm_unlink_named(cname);
    }
    return shm_oserror(err, args[0]);
}

static PyObject *
shm_unlink_func(PyObject *Py_UNUSED(module), PyObject *name)
{
    const char *cname = shm_name_cstr(name);
    if (cname == NULL) {
        return NULL;
    }
    if (fastmp_platform_shm_unlink_named(cname) < 0) {
        return shm_oserror(errno, name);
    }
    Py_RETURN_NONE;
}

/* ---- the creator's tracking table --------------------------------- */

/*
 * A table of the segment names this process (and its fork children)
 * created with track=True, in a memfd shared with the tracker process
 * (fastmp/shared_memory.py starts it and hands the fd to
 * _shm_track_init).  Registering is a CAS and a memcpy: no syscall, no
 * wakeup of the tracker, which only scans the table once every holder of
 * its pipe has exited.
 *
 * Slot layout (TRACK_SLOT bytes): uint32 state (0 free, 1 taken), then
 * the NUL-terminated name.  state is claimed by CAS by the registering
 * process, which then writes the name; it is freed (name zeroed first)
 * by whichever process unlinks the name.  A process that dies between
 * the CAS and the name leaves a taken slot with an empty or partial name:
 * the tracker ignores empty names, and a partial one names no segment.
 */

#define TRACK_SLOT 512

static char *track_table = NULL; /* inherited by fork children */
static Py_ssize_t track_nslots = 0;
static Py_ssize_t track_hint = 0;

static PyObject *
shm_track_init(PyObject *Py_UNUSED(module), PyObject *const *args,
               Py_ssize_t nargs)
{
    int fd;
    Py_ssize_t nslots;
    void *addr;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_shm_track_init(fd, nslots)");
        return NULL;
    }
    fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    nslots = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (nslots == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (nslots <= 0 || nslots > PY_SSIZE_T_MAX / TRACK_SLOT) {
        PyErr_SetString(PyExc_ValueError, "bad slot count");
        return NULL;
    }
    addr = fastmp_platform_shm_map(fd, 0, (uint64_t)nslots * TRACK_SLOT);
    if (addr == NULL) {
        return fastmp_oserror_syscall("mmap");
    }
    fastmp_platform_shm_unmap(track_table,
                              (uint64_t)track_nslots * TRACK_SLOT);
    track_table = addr;
    track_nslots = nslots;
    track_hint = 0;
    Py_RETURN_NONE;
}

/* _shm_track_add(name) -> slot index, or -1 when there is no table, the
 * table is full or the name does not fit (the caller falls back). */
static PyObject *
shm_track_add(PyObject *Py_UNUSED(module), PyObject *name)
{
    Py_ssize_t len, i, k;
    const char *cname = shm_name_cstr(name);
    if (cname == NULL) {
        return NULL;
    }
    len = (Py_ssize_t)strlen(cname);
    if (track_table == NULL || len == 0 || len >= TRACK_SLOT - 4) {
        return PyLong_FromLong(-1);
    }
    for (k = 0; k < track_nslots; k++) {
        uint32_t expected = 0;
        char *slot;
        i = (track_hint + k) % track_nslots;
        slot = track_table + i * TRACK_SLOT;
        if (__atomic_load_n((uint32_t *)slot, __ATOMIC_RELAXED) != 0) {
            continue;
        }
        if (__atomic_compare_exchange_n((uint32_t *)slot, &expected, 1, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            memcpy(slot + 4, cname, (size_t)len + 1);
            track_hint = i + 1;
            return PyLong_FromSsize_t(i);
        }
    }
    return PyLong_FromLong(-1);
}

/* _shm_track_remove(slot, name): free the slot if it still holds name. */
static PyObject *
shm_track_remove(PyObject *Py_UNUSED(module), PyObject *const *args,
                 Py_ssize_t nargs)
{
    Py_ssize_t i;
    const char *cname;
    char *slot;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_shm_track_remove(slot, name)");
        return NULL;
    }
    i = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    cname = shm_name_cstr(args[1]);
    if (cname == NULL) {
        return NULL;
    }
    if (track_table == NULL || i < 0 || i >= track_nslots) {
        Py_RETURN_NONE;
    }
    slot = track_table + i * TRACK_SLOT;
    if (__atomic_load_n((uint32_t *)slot, __ATOMIC_ACQUIRE) == 1
        && strncmp(slot + 4, cname, TRACK_SLOT - 4) == 0) {
        memset(slot + 4, 0, TRACK_SLOT - 4);
        __atomic_store_n((uint32_t *)slot, 0, __ATOMIC_RELEASE);
        if (i < track_hint) {
            track_hint = i;
        }
    }
    Py_RETURN_NONE;
}

/* ---- _ShareableListCore --------------------------------------------- */

/*
 * The stdlib's layout (all integers native, 8-byte aligned):
 *
 *   [0, 8)                 n, the number of items
 *   [8, 8 + 8(n+1))        offsets[0..n] of each item's slot from `data`
 *   data = 8(n+2)          the slots; slot i is offsets[i+1]-offsets[i]
 *   fmts = data+offsets[n] n struct formats, 8 bytes each, NUL padded
 *   codes = fmts + 8n      n back-transform codes, one signed byte each
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
    if (mapping_ensure(m) < 0) {
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

static PyType_Spec core_spec = {
    .name = "fastmp._fastmp._ShareableListCore",
    .basicsize = sizeof(ListCoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = core_slots,
};

static PyMethodDef shm_functions[] = {
    {"_shm_open", (PyCFunction)(void (*)(void))shm_open_func, METH_FASTCALL,
     "_shm_open($module, name, create, size, mode, /)\n--\n\n"
     "Open (or create, sized) the named segment and map it whole."},
    {"_shm_unlink", shm_unlink_func, METH_O,
     "_shm_unlink($module, name, /)\n--\n\nshm_unlink the named segment."},
    {"_shm_track_init", (PyCFunction)(void (*)(void))shm_track_init,
     METH_FASTCALL,
     "_shm_track_init($module, fd, nslots, /)\n--\n\n"
     "Map the tracking table shared with the tracker process."},
    {"_shm_track_add", shm_track_add, METH_O,
     "_shm_track_add($module, name, /)\n--\n\n"
     "Register a created segment; returns its slot or -1."},
    {"_shm_track_remove", (PyCFunction)(void (*)(void))shm_track_remove,
     METH_FASTCALL,
     "_shm_track_remove($module, slot, name, /)\n--\n\n"
     "Free a slot if it still holds name."},
    {NULL, NULL, 0, NULL},
};

int
fastmp_shm_exec(PyObject *m, fastmp_state *st)
{
    if (PyModule_AddFunctions(m, shm_functions) < 0) {
        return -1;
    }
    PyObject *structmod;

    st->shm.MappingType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &mapping_spec, NULL);
    if (st->shm.MappingType == NULL) {
        return -1;
    }
    st->shm.ListCoreType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &core_spec, NULL);
    if (st->shm.ListCoreType == NULL) {
        return -1;
    }
    structmod = PyImport_ImportModule("struct");
    if (structmod == NULL) {
        return -1;
    }
    st->shm.struct_error = PyObject_GetAttrString(structmod, "error");
    Py_DECREF(structmod);
    if (st->shm.struct_error == NULL) {
        return -1;
    }
    if (PyModule_AddObject(m, "_ShmMapping", Py_NewRef(st->shm.MappingType))
        < 0) {
        Py_DECREF(st->shm.MappingType);
        return -1;
    }
    if (PyModule_AddObject(m, "_ShareableListCore",
                           Py_NewRef(st->shm.ListCoreType))
        < 0) {
        Py_DECREF(st->shm.ListCoreType);
        return -1;
    }
    return 0;
}

int
fastmp_shm_traverse(fastmp_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->shm.MappingType);
    Py_VISIT(st->shm.ListCoreType);
    Py_VISIT(st->shm.struct_error);
    return 0;
}

void
fastmp_shm_clear(fastmp_state *st)
{
    Py_CLEAR(st->shm.MappingType);
    Py_CLEAR(st->shm.ListCoreType);
    Py_CLEAR(st->shm.struct_error);
}
