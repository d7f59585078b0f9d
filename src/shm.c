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
 * _ShareableListCore (shareable_list.c): item get/set of a ShareableList
 *     in the stdlib's binary layout, plus a trailer that makes writes
 *     atomic for readers.
 *
 * Functions: _shm_open(name, create, size, mode) -> _ShmMapping,
 *            _shm_unlink(name).
 */
#include "shm_internal.h" /* Python.h: _GNU_SOURCE already defined */

#include <errno.h>
#include <string.h>

/* ---- _ShmMapping --------------------------------------------------- */

/* Map the segment if not yet done.  0, or -1 with an exception set
 * (BufferError when closed, OSError from mmap). */
int
fastmp_shm_mapping_ensure(MappingObject *self)
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
    if (fastmp_shm_mapping_ensure(self) < 0) {
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
    st->shm.ListCoreType = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &fastmp_listcore_spec, NULL);
    if (st->shm.ListCoreType == NULL) {
        return -1;
    }
    PyObject *oplog = PyType_FromModuleAndSpec(m, &fastmp_oplog_spec, NULL);
    if (oplog == NULL) {
        return -1;
    }
    if (PyModule_AddObject(m, "_OpLog", oplog) < 0) {
        Py_DECREF(oplog);
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
