/*
 * sharedctypes_block.c -- Block: a Python object owning one arena block
 * (fastmp_block) and exporting it as a writable buffer.  RawValue and
 * RawArray are ctypes objects made with `ctype.from_buffer(block)`, so the
 * ctypes object keeps the block alive and user ctypes code sees ordinary
 * ctypes objects.  The type is created by fastmp_sharedctypes_exec.
 */
#include "sharedctypes_internal.h"

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

PyType_Spec fastmp_block_spec = {
    .name = "fastmp._fastmp.Block",
    .basicsize = sizeof(BlockObject),
    .flags = Py_TPFLAGS_DEFAULT | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = block_slots,
};

static PyObject *
sct_block_alloc(PyObject *Py_UNUSED(module), PyObject *arg)
{
    fastmp_state *st = fastmp_get_state();
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return NULL;
    }
    BlockObject *self = PyObject_New(BlockObject, st->sharedctypes.BlockType);
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
sct_block_attach(PyObject *Py_UNUSED(module), PyObject *args)
{
    fastmp_state *st = fastmp_get_state();
    PyObject *seg;
    unsigned long long offset, size;
    if (!PyArg_ParseTuple(args, "OKK:_block_attach", &seg, &offset, &size)) {
        return NULL;
    }
    if (!fastmp_segment_check(seg)) {
        PyErr_SetString(PyExc_TypeError, "a Segment is required");
        return NULL;
    }
    BlockObject *self = PyObject_New(BlockObject, st->sharedctypes.BlockType);
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

/* 1 when `w` is a live fastmp Block whose memory holds [p, p + len), else
 * 0.  Never fails. */
int
fastmp_block_holds(PyObject *w, const char *p, Py_ssize_t len)
{
    fastmp_state *fs = fastmp_get_state();
    if (fs == NULL || w == NULL
        || !Py_IS_TYPE(w, fs->sharedctypes.BlockType)) {
        return 0;
    }
    BlockObject *b = (BlockObject *)w;
    const char *lo = (const char *)b->blk.ptr;
    return b->have_blk && !b->blk.released && p >= lo && len >= 0
           && (size_t)(p - lo) + (size_t)len <= b->blk.size;
}

/* The module functions that make Blocks (sharedctypes.c adds them). */
PyMethodDef fastmp_block_functions[] = {
    {"_block_alloc", sct_block_alloc, METH_O,
     PyDoc_STR("_block_alloc(size, /)\n--\n\n"
               "A new zeroed Block of shared memory.")},
    {"_block_attach", sct_block_attach, METH_VARARGS,
     PyDoc_STR("_block_attach(segment, offset, size, /)\n--\n\n"
               "Rebuild a Block from its segment (in a spawned child).")},
    {NULL, NULL, 0, NULL},
};
