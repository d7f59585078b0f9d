/*
 * sharedctypes_array.c -- SynchronizedArray and SynchronizedString, the
 * synchronized wrappers of shared ctypes arrays (SynchronizedBase, the
 * element conversion and the lock round trip are sharedctypes.c).  Items
 * and slices of the simple element types are converted here and copied
 * with one lock round trip (or none: see fastmp_sync_gather); other
 * element types go through the ctypes object under the lock.  The types
 * are created by fastmp_sharedctypes_exec.
 */
#include "sharedctypes_internal.h"

#include <string.h>

/* ---- SynchronizedArray -------------------------------------------- */

static Py_ssize_t
array_len(SyncObject *self)
{
    if (self->st == NULL) {
        (void)sync_hold(self); /* raises */
        return -1;
    }
    return self->st->length;
}

/* What `del arr[...]` raises, as with the stdlib's wrapper (a class
 * without __delitem__). */
static int
array_no_delete(SyncObject *self)
{
    PyErr_Format(PyExc_AttributeError,
                 "'%.200s' object has no attribute '__delitem__'",
                 Py_TYPE(self)->tp_name);
    return -1;
}

/* Item i (0 <= i < length checked here) of st's array. */
static PyObject *
array_item_st(sync_state *st, Py_ssize_t i)
{
    if (i < 0 || i >= st->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return NULL;
    }
    if (st->code == 0) {
        int held = sync_lock(st);
        if (held < 0) {
            return NULL;
        }
        PyObject *r = PySequence_GetItem(st->obj, i);
        if (sync_unlock(st, held) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        return r;
    }
    char tmp[16];
    if (fastmp_sync_gather(st, tmp, i * st->itemsize, 1, st->itemsize,
                           st->itemsize)
        < 0) {
        return NULL;
    }
    return fastmp_elem_unpack(st->code, tmp);
}

/* Store v at item i of st's array: v is converted before the lock is
 * taken and the address looked up. */
static int
array_ass_item_st(sync_state *st, Py_ssize_t i, PyObject *v)
{
    if (i < 0 || i >= st->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return -1;
    }
    char tmp[16];
    int r = st->code ? fastmp_elem_pack(st->code, v, tmp) : 1;
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        return fastmp_sync_scatter(st, i * st->itemsize, st->itemsize, tmp, 1,
                                   st->itemsize);
    }
    int held = sync_lock(st);
    if (held < 0) {
        return -1;
    }
    r = PySequence_SetItem(st->obj, i, v);
    if (sync_unlock(st, held) < 0) {
        return -1;
    }
    return r;
}

static PyObject *
array_item(SyncObject *self, Py_ssize_t i)
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = array_item_st(st, i);
    fastmp_sync_drop(st);
    return r;
}

static int
array_ass_item(SyncObject *self, Py_ssize_t i, PyObject *v)
{
    if (v == NULL) {
        return array_no_delete(self);
    }
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return -1;
    }
    int r = array_ass_item_st(st, i, v);
    fastmp_sync_drop(st);
    return r;
}

/* Fill `list` (n fresh slots) from n packed elements: one tight loop per
 * element kind, since this is the hot part of `arr[:]`; always inlined,
 * so the compiler specialises each for the constant size it is called
 * with.  Integers in the interpreter's small-int range come from the
 * table in the module state (the very objects PyLong_FromLong would
 * return). */
static inline __attribute__((always_inline)) int
unpack_ints(const char *buf, Py_ssize_t n, PyObject *list,
            PyObject *const *small, Py_ssize_t size, int is_signed)
{
    int shift = 64 - 8 * (int)size;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t bits = int_bits_load(buf + k * size, size);
        PyObject *o;
        if (is_signed) {
            int64_t v = (int64_t)(bits << shift) >> shift;
            o = (v >= FASTMP_SMALL_INT_MIN && v <= FASTMP_SMALL_INT_MAX)
                    ? Py_NewRef(small[v - FASTMP_SMALL_INT_MIN])
                    : PyLong_FromLongLong((long long)v);
        }
        else {
            o = bits <= (uint64_t)FASTMP_SMALL_INT_MAX
                    ? Py_NewRef(small[(int64_t)bits - FASTMP_SMALL_INT_MIN])
                    : PyLong_FromUnsignedLongLong(bits);
        }
        if (o == NULL) {
            return -1;
        }
        PyList_SET_ITEM(list, k, o);
    }
    return 0;
}

static inline __attribute__((always_inline)) int
unpack_floats(const char *buf, Py_ssize_t n, PyObject *list, int is_double)
{
    for (Py_ssize_t k = 0; k < n; k++) {
        double x;
        if (is_double) {
            memcpy(&x, buf + k * (Py_ssize_t)sizeof(double), sizeof(x));
        }
        else {
            float f;
            memcpy(&f, buf + k * (Py_ssize_t)sizeof(float), sizeof(f));
            x = f;
        }
        PyObject *o = PyFloat_FromDouble(x);
        if (o == NULL) {
            return -1;
        }
        PyList_SET_ITEM(list, k, o);
    }
    return 0;
}

static int
unpack_list(int code, const char *buf, Py_ssize_t n, PyObject *list)
{
    fastmp_state *st = fastmp_get_state();
    if (st == NULL) {
        return -1;
    }
    PyObject *const *small = st->sharedctypes.small_ints;
    switch (code) {
    case 'b':
        return unpack_ints(buf, n, list, small, 1, 1);
    case 'B':
        return unpack_ints(buf, n, list, small, 1, 0);
    case 'h':
        return unpack_ints(buf, n, list, small, sizeof(short), 1);
    case 'H':
        return unpack_ints(buf, n, list, small, sizeof(short), 0);
    case 'i':
        return unpack_ints(buf, n, list, small, sizeof(int), 1);
    case 'I':
        return unpack_ints(buf, n, list, small, sizeof(int), 0);
    case 'l':
        return unpack_ints(buf, n, list, small, sizeof(long), 1);
    case 'L':
        return unpack_ints(buf, n, list, small, sizeof(long), 0);
    case 'q':
        return unpack_ints(buf, n, list, small, sizeof(long long), 1);
    case 'Q':
        return unpack_ints(buf, n, list, small, sizeof(long long), 0);
    case 'f':
        return unpack_floats(buf, n, list, 0);
    case 'd':
        return unpack_floats(buf, n, list, 1);
    case '?':
        for (Py_ssize_t k = 0; k < n; k++) {
            _Bool b;
            memcpy(&b, buf + k * (Py_ssize_t)sizeof(_Bool), sizeof(b));
            PyList_SET_ITEM(list, k, PyBool_FromLong(b));
        }
        return 0;
    default:
        break;
    }
    Py_ssize_t sz = code_size(code);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *o = fastmp_elem_unpack(code, buf + k * sz);
        if (o == NULL) {
            return -1;
        }
        PyList_SET_ITEM(list, k, o);
    }
    return 0;
}

/* The index `key` names in st's array (negative counts from the end), or
 * -1 with an exception set; `msg` is the stdlib's TypeError text. */
static Py_ssize_t
array_index(sync_state *st, PyObject *key, const char *msg)
{
    if (!PyIndex_Check(key)) {
        PyErr_SetString(PyExc_TypeError, msg);
        return -1;
    }
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (i < 0) {
        i += st->length;
    }
    if (i < 0 || i >= st->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return -1;
    }
    return i;
}

static PyObject *
array_subscript_st(sync_state *st, PyObject *key)
{
    if (!PySlice_Check(key)) {
        Py_ssize_t i = array_index(st, key, "indices must be integers");
        if (i < 0) {
            return NULL;
        }
        return array_item_st(st, i);
    }
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
        return NULL;
    }
    Py_ssize_t n = PySlice_AdjustIndices(st->length, &start, &stop, step);
    if (st->code == 0 || st->code == 'c') {
        int held = sync_lock(st);
        if (held < 0) {
            return NULL;
        }
        PyObject *r = PyObject_GetItem(st->obj, key);
        if (sync_unlock(st, held) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        return r;
    }
    Py_ssize_t sz = st->itemsize;
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
    if (fastmp_sync_gather(st, buf, start * sz, n, sz, step * sz) < 0) {
        goto error;
    }
    if (unpack_list(st->code, buf, n, list) < 0) {
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

static PyObject *
array_subscript(SyncObject *self, PyObject *key)
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = array_subscript_st(st, key);
    fastmp_sync_drop(st);
    return r;
}

/* Convert the n items of the list or tuple v into packed elements in buf.
 * Returns 0, 1 when an item needs ctypes (a value of another type), -1
 * with an exception set.  A list may shrink while its items convert (their
 * __float__ or __bool__ is Python code): as ctypes, which reads each item
 * with PySequence_GetItem, that raises IndexError. */
static int
pack_items(int code, PyObject *v, Py_ssize_t n, char *buf, Py_ssize_t sz)
{
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item;
        if (PyList_CheckExact(v)) {
            if (k >= PyList_GET_SIZE(v)) {
                PyErr_SetString(PyExc_IndexError, "list index out of range");
                return -1;
            }
            item = Py_NewRef(PyList_GET_ITEM(v, k));
        }
        else {
            item = Py_NewRef(PyTuple_GET_ITEM(v, k));
        }
        int r = fastmp_elem_pack(code, item, buf + k * sz);
        Py_DECREF(item);
        if (r != 0) {
            return r;
        }
    }
    return 0;
}

static int
array_ass_subscript_st(sync_state *st, PyObject *key, PyObject *v)
{
    if (!PySlice_Check(key)) {
        Py_ssize_t i = array_index(st, key, "indices must be integer");
        if (i < 0) {
            return -1;
        }
        return array_ass_item_st(st, i, v);
    }
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
        return -1;
    }
    Py_ssize_t n = PySlice_AdjustIndices(st->length, &start, &stop, step);
    Py_ssize_t sz = st->itemsize;
    /* Lists and tuples of plain values: convert everything, then copy in
     * one go under the lock.  Anything else is ctypes' to take (it wants a
     * sequence of the right length: an iterator is refused, as with the
     * stdlib). */
    if (st->code != 0 && st->code != 'c'
        && (PyList_CheckExact(v) || PyTuple_CheckExact(v))) {
        if (Py_SIZE(v) != n) {
            PyErr_SetString(PyExc_ValueError,
                            "Can only assign sequence of same size");
            return -1;
        }
        char *buf = PyMem_Malloc(n * sz + 1);
        if (buf == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        int r = pack_items(st->code, v, n, buf, sz);
        if (r == 0) {
            r = fastmp_sync_scatter(st, start * sz, step * sz, buf, n, sz);
        }
        PyMem_Free(buf);
        if (r <= 0) {
            return r;
        }
    }
    int held = sync_lock(st);
    if (held < 0) {
        return -1;
    }
    int r = PyObject_SetItem(st->obj, key, v);
    if (sync_unlock(st, held) < 0) {
        return -1;
    }
    return r;
}

static int
array_ass_subscript(SyncObject *self, PyObject *key, PyObject *v)
{
    if (v == NULL) {
        return array_no_delete(self);
    }
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return -1;
    }
    int r = array_ass_subscript_st(st, key, v);
    fastmp_sync_drop(st);
    return r;
}

static PyType_Slot array_slots[] = {
    {Py_tp_traverse, fastmp_sync_traverse},
    {Py_tp_clear, fastmp_sync_clear},
    {Py_tp_dealloc, fastmp_sync_dealloc},
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

PyType_Spec fastmp_array_spec = {
    .name = "fastmp._fastmp.SynchronizedArray",
    .basicsize = sizeof(SyncObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = array_slots,
};

/* ---- SynchronizedString (char arrays) ------------------------------- */

static PyObject *
string_get(SyncObject *self, void *closure)
{
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return NULL;
    }
    PyObject *r = fastmp_sync_locked_getattr(st, (const char *)closure);
    fastmp_sync_drop(st);
    return r;
}

static int
string_set(SyncObject *self, PyObject *v, void *closure)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "can't delete attribute");
        return -1;
    }
    sync_state *st = sync_hold(self);
    if (st == NULL) {
        return -1;
    }
    int r = fastmp_sync_locked_setattr(st, (const char *)closure, v);
    fastmp_sync_drop(st);
    return r;
}
static PyGetSetDef string_getset[] = {
    {"value", (getter)string_get, (setter)string_set,
     "The string up to the first NUL, under the lock.", "value"},
    {"raw", (getter)string_get, (setter)string_set,
     "All the bytes, under the lock.", "raw"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot string_slots[] = {
    {Py_tp_traverse, fastmp_sync_traverse},
    {Py_tp_clear, fastmp_sync_clear},
    {Py_tp_dealloc, fastmp_sync_dealloc},
    {Py_tp_getset, string_getset},
    {Py_tp_doc, "SynchronizedString(obj, lock, code=None)\n--\n\n"
                "A synchronized shared ctypes char array."},
    {0, NULL},
};

PyType_Spec fastmp_string_spec = {
    .name = "fastmp._fastmp.SynchronizedString",
    .basicsize = sizeof(SyncObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = string_slots,
};
