/*
 * pickling.c -- the one way fastmp pickles: exactly
 * multiprocessing.reduction.ForkingPickler.dumps / .loads.
 *
 * ForkingPickler.dumps(obj) makes a pickle.Pickler writing into a new
 * BytesIO, gives it a dispatch table that is a copy of
 * copyreg.dispatch_table updated with ForkingPickler._extra_reducers,
 * dumps, and returns the buffer.  Copying both tables on every call costs
 * more than pickling a small object, so fastmp keeps one pickle.Pickler
 * and gives it a dispatch table that is a live view of the two: a lookup
 * reads ForkingPickler._extra_reducers, then copyreg.dispatch_table (the
 * dict objects ForkingPickler copies, taken once), as they are at that
 * moment.  ForkingPickler.register and copyreg.pickle change those dicts
 * in place, so a reducer registered later, or one replaced by another, is
 * used from the next lookup on: there is nothing to invalidate.  The
 * pickler's writes are appended to a list (the C pickler writes the whole
 * pickle at once unless it streams a large payload on its own), so a
 * pickle is the pickler's own bytes object, uncopied.
 *
 * The builtin types the C pickler handles itself (None, bool, int, float,
 * str, bytes, bytearray, tuple, list, dict, set, frozenset, type and
 * function) never reach the dispatch table, in ForkingPickler's pickler as
 * in this one.
 *
 * The one difference: ForkingPickler copies the tables when it starts,
 * this view reads them while it pickles, so a reducer that registers
 * another reducer affects the rest of the same pickle.
 *
 * The reusable pickler serves one dump at a time.  A dump that starts
 * while it is busy (a reducer that itself pickles or sends, or another
 * thread while a reducer's Python code runs) uses a fresh pickler.  (A
 * child forked while another thread was dumping inherits `busy` set and
 * uses fresh picklers from then on: slower, the same pickles.)
 */
#include "fastmp.h"

static inline fastmp_pickling_state *
pickling_state(void)
{
    return &fastmp_get_state()->pickling;
}

/* ---------------------------------------------------------------------
 * the dispatch table: a live view of ForkingPickler's two tables
 * ------------------------------------------------------------------- */

/* The value for `key` in mapping `d`: a new reference; NULL without an
 * exception when it has none; NULL with an exception on an error. */
static PyObject *
table_get(PyObject *d, PyObject *key)
{
    PyObject *v;

    if (PyDict_CheckExact(d)) {
        v = PyDict_GetItemWithError(d, key);
        Py_XINCREF(v);
        return v;
    }
    v = PyObject_GetItem(d, key);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
    }
    return v;
}

/* table[type]: _extra_reducers first (ForkingPickler's update() lets them
 * win), then copyreg's table; KeyError when neither has one. */
static PyObject *
table_subscript(PyObject *self, PyObject *key)
{
    fastmp_pickling_state *ps = pickling_state();
    PyObject *v;

    FASTMP_UNUSED(self);
    if (ps->extra_reducers == NULL) {
        /* The module state was cleared (interpreter shutdown). */
        PyErr_SetString(PyExc_RuntimeError, "fastmp._fastmp is finalized");
        return NULL;
    }
    v = table_get(ps->extra_reducers, key);
    if (v == NULL && !PyErr_Occurred()) {
        v = table_get(ps->copyreg_table, key);
        if (v == NULL && !PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, key);
        }
    }
    return v;
}

static PyType_Slot table_slots[] = {
    {Py_mp_subscript, table_subscript},
    {Py_tp_doc, "The dispatch table of fastmp's pickler: a live view of "
                "ForkingPickler._extra_reducers over copyreg's table."},
    {0, NULL},
};

/* No fields and no dealloc of its own: a heap type's default
 * (subtype_dealloc) frees the object and releases the type. */
static PyType_Spec table_spec = {
    .name = "fastmp._fastmp._ReducerTable",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = table_slots,
};

/* ---------------------------------------------------------------------
 * setup (on first use: importing multiprocessing.reduction at module
 * exec would slow down `import fastmp`)
 * ------------------------------------------------------------------- */

/* mod.name: a new reference, or NULL with an exception set. */
static PyObject *
import_attr(const char *mod, const char *name)
{
    PyObject *m, *v;

    m = PyImport_ImportModule(mod);
    if (m == NULL) {
        return NULL;
    }
    v = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return v;
}

/* 0, or -1 with an exception set. */
static int
pickling_load(fastmp_pickling_state *ps)
{
    PyObject *fp, *extra = NULL, *copyreg = NULL, *loads = NULL;

    if (ps->TableType == NULL) {
        /* The module state was cleared (interpreter shutdown). */
        PyErr_SetString(PyExc_RuntimeError, "fastmp._fastmp is finalized");
        return -1;
    }
    fp = import_attr("multiprocessing.reduction", "ForkingPickler");
    if (fp == NULL) {
        return -1;
    }
    extra = PyObject_GetAttrString(fp, "_extra_reducers");
    copyreg = extra == NULL
                  ? NULL
                  : PyObject_GetAttrString(fp, "_copyreg_dispatch_table");
    loads = copyreg == NULL ? NULL : PyObject_GetAttrString(fp, "loads");
    if (loads == NULL) {
        goto error;
    }
    if (ps->table == NULL) {
        ps->table = PyType_GenericNew(ps->TableType, NULL, NULL);
        if (ps->table == NULL) {
            goto error;
        }
    }
    Py_DECREF(fp);
    Py_XSETREF(ps->extra_reducers, extra);
    Py_XSETREF(ps->copyreg_table, copyreg);
    Py_XSETREF(ps->loads, loads);
    return 0;
error:
    Py_DECREF(fp);
    Py_XDECREF(extra);
    Py_XDECREF(copyreg);
    Py_XDECREF(loads);
    return -1;
}

static inline int
pickling_ready(fastmp_pickling_state *ps)
{
    return ps->loads != NULL ? 0 : pickling_load(ps);
}

/* A new pickle.Pickler (the default protocol, as ForkingPickler.dumps'
 * protocol=None) with the live dispatch table, whose writes are appended
 * to a new list.  0 and new references in *pickler and *out, or -1 with
 * an exception set. */
static int
pickler_new(fastmp_pickling_state *ps, PyObject **pickler, PyObject **out)
{
    PyObject *list, *nstype = NULL, *ns = NULL, *append = NULL;
    PyObject *cls = NULL, *p = NULL;
    int ret = -1;

    list = PyList_New(0);
    if (list == NULL) {
        return -1;
    }
    /* The pickler calls `file.write`: a namespace whose `write` is the
     * list's append. */
    nstype = import_attr("types", "SimpleNamespace");
    ns = nstype == NULL ? NULL : PyObject_CallNoArgs(nstype);
    append = ns == NULL ? NULL : PyObject_GetAttrString(list, "append");
    if (append == NULL || PyObject_SetAttrString(ns, "write", append) < 0) {
        goto done;
    }
    cls = import_attr("pickle", "Pickler");
    p = cls == NULL ? NULL : PyObject_CallOneArg(cls, ns);
    if (p == NULL
        || PyObject_SetAttrString(p, "dispatch_table", ps->table) < 0) {
        goto done;
    }
    *pickler = Py_NewRef(p);
    *out = Py_NewRef(list);
    ret = 0;
done:
    Py_DECREF(list);
    Py_XDECREF(nstype);
    Py_XDECREF(ns);
    Py_XDECREF(append);
    Py_XDECREF(cls);
    Py_XDECREF(p);
    return ret;
}

/* The chunks in `out` as one bytes object (the only chunk itself when
 * there is one).  A new reference, or NULL with an exception set. */
static PyObject *
pickled_join(PyObject *out)
{
    Py_ssize_t n = PyList_GET_SIZE(out), total = 0, i;
    PyObject *res;
    char *p;

    if (n == 1 && PyBytes_CheckExact(PyList_GET_ITEM(out, 0))) {
        return Py_NewRef(PyList_GET_ITEM(out, 0));
    }
    /* Several writes: the pickler streamed a large payload (bytes of
     * 64 KiB or more) past its buffer. */
    for (i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(out, i);
        if (!PyBytes_Check(c)) {
            PyErr_Format(PyExc_TypeError, "pickler wrote %.200s, not bytes",
                         Py_TYPE(c)->tp_name);
            return NULL;
        }
        if (PyBytes_GET_SIZE(c) > PY_SSIZE_T_MAX - total) {
            return PyErr_NoMemory();
        }
        total += PyBytes_GET_SIZE(c);
    }
    res = PyBytes_FromStringAndSize(NULL, total);
    if (res == NULL) {
        return NULL;
    }
    p = PyBytes_AS_STRING(res);
    for (i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(out, i);
        memcpy(p, PyBytes_AS_STRING(c), (size_t)PyBytes_GET_SIZE(c));
        p += PyBytes_GET_SIZE(c);
    }
    return res;
}

/* Dump obj with `pickler`, whose writes go to `out`.  Returns new bytes,
 * with the pickler's memo and `out` emptied for the next dump; or NULL
 * with an exception set, and then the pickler and `out` are not to be
 * used again. */
static PyObject *
pickler_dump(fastmp_pickling_state *ps, PyObject *pickler, PyObject *out,
             PyObject *obj)
{
    PyObject *args[2] = {pickler, obj};
    PyObject *r, *res;
    size_t nargs = 2 | PY_VECTORCALL_ARGUMENTS_OFFSET;

    r = PyObject_VectorcallMethod(ps->str_dump, args, nargs, NULL);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    res = pickled_join(out);
    if (res == NULL) {
        return NULL;
    }
    /* The memo holds references to what was pickled (and would make the
     * next dump refer back to it): clear it after every dump. */
    r = PyObject_VectorcallMethod(ps->str_clear_memo, args,
                                  1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL || PyList_SetSlice(out, 0, PyList_GET_SIZE(out), NULL) < 0) {
        Py_XDECREF(r);
        Py_DECREF(res);
        return NULL;
    }
    Py_DECREF(r);
    return res;
}

/* ---------------------------------------------------------------------
 * the interface (fastmp.h, "pickling")
 * ------------------------------------------------------------------- */

/* A dump larger than this retires the reusable pickler (its memo table
 * keeps the size the dump grew it to). */
#define PICKLER_RETIRE_BYTES 8192

PyObject *
fastmp_dumps(PyObject *obj)
{
    fastmp_pickling_state *ps = pickling_state();
    PyObject *pickler, *out, *res;

    /* The builtin types the C pickler handles itself, small: written
     * directly (pickling_small.c), the same bytes. */
    res = fastmp_small_dumps(obj);
    if (res != NULL || PyErr_Occurred()) {
        return res;
    }
    if (pickling_ready(ps) < 0) {
        return NULL;
    }
    if (ps->busy) {
        /* Nested (a reducer pickling) or another thread: a fresh one. */
        if (pickler_new(ps, &pickler, &out) < 0) {
            return NULL;
        }
        res = pickler_dump(ps, pickler, out, obj);
        Py_DECREF(pickler);
        Py_DECREF(out);
        return res;
    }
    if (ps->pickler == NULL && pickler_new(ps, &ps->pickler, &ps->out) < 0) {
        return NULL;
    }
    ps->busy = 1;
    /* Own references: a reducer may clear the module state. */
    pickler = Py_NewRef(ps->pickler);
    out = Py_NewRef(ps->out);
    res = pickler_dump(ps, pickler, out, obj);
    if (ps->pickler == pickler
        && (res == NULL
            || (PyBytes_Check(res)
                && PyBytes_GET_SIZE(res) > PICKLER_RETIRE_BYTES))) {
        /* A failed dump leaves its memo and partial output behind; a
         * large one leaves a memo table grown to its object count, which
         * clear_memo() then sweeps after every later dump (a 1-byte
         * pickle costing hundreds of microseconds after a 50,000-item
         * list).  Either way: start over with a fresh pickler next
         * time. */
        Py_CLEAR(ps->pickler);
        Py_CLEAR(ps->out);
    }
    Py_DECREF(pickler);
    Py_DECREF(out);
    ps->busy = 0;
    return res;
}

PyObject *
fastmp_loads(PyObject *data)
{
    fastmp_pickling_state *ps = pickling_state();

    if (PyBytes_CheckExact(data)) {
        PyObject *res = fastmp_small_loads(PyBytes_AS_STRING(data),
                                           PyBytes_GET_SIZE(data));
        if (res != NULL || PyErr_Occurred()) {
            return res;
        }
    }
    if (pickling_ready(ps) < 0) {
        return NULL;
    }
    return PyObject_CallOneArg(ps->loads, data);
}

/* ---------------------------------------------------------------------
 * lists of numbers: a compact form beside the pickle
 *
 * A Pool's map sends its input and its results as lists, very often of
 * ints or floats, where pickling and unpickling each number costs more
 * than a small task itself.  _dumps_list(obj) writes a list whose items
 * are all exact ints within int64, or all exact floats, as a tag and the
 * raw 8-byte values (native order: both ends are on this machine), and
 * anything else as _dumps(obj) does.  A pickle starts with the PROTO
 * opcode (0x80), never with the tag's 0x00, so _loads_list tells the two
 * apart.  Only exact types: a bool, an int subclass or a numpy scalar
 * keeps its type through the pickle.
 * ------------------------------------------------------------------- */

#define LIST_TAG 0x00
#define LIST_INTS 'i'
#define LIST_FLOATS 'f'
#define LIST_HEAD 2

/* The compact form of items [start, start + n) of list `obj` (the caller
 * checked the range), or NULL without an exception when they have none
 * (an item of another type, an int beyond int64). */
static PyObject *
list_compact(PyObject *obj, Py_ssize_t start, Py_ssize_t n)
{
    PyObject *first;
    char kind, *p;
    PyObject *out;

    if (n == 0 || n > (PY_SSIZE_T_MAX - LIST_HEAD) / 8) {
        return NULL;
    }
    first = PyList_GET_ITEM(obj, start);
    if (PyLong_CheckExact(first)) {
        kind = LIST_INTS;
    }
    else if (PyFloat_CheckExact(first)) {
        kind = LIST_FLOATS;
    }
    else {
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, LIST_HEAD + 8 * n);
    if (out == NULL) {
        PyErr_Clear(); /* the pickle will say it */
        return NULL;
    }
    p = PyBytes_AS_STRING(out);
    p[0] = LIST_TAG;
    p[1] = kind;
    p += LIST_HEAD;
    /* No Python code runs below (exact types only), so the list cannot
     * change under the loop. */
    for (Py_ssize_t i = start; i < start + n; i++, p += 8) {
        PyObject *item = PyList_GET_ITEM(obj, i);
        if (kind == LIST_INTS) {
            int overflow;
            long long v;
            if (!PyLong_CheckExact(item)) {
                goto none;
            }
            v = PyLong_AsLongLongAndOverflow(item, &overflow);
            if (overflow) {
                goto none;
            }
            memcpy(p, &v, 8);
        }
        else {
            double v;
            if (!PyFloat_CheckExact(item)) {
                goto none;
            }
            v = PyFloat_AS_DOUBLE(item);
            memcpy(p, &v, 8);
        }
    }
    return out;
none:
    Py_DECREF(out);
    return NULL;
}

/* The number of items of the compact form at p (size >= LIST_HEAD
 * bytes), or -1 with ValueError when it is not one. */
static Py_ssize_t
list_count(const char *p, Py_ssize_t size)
{
    if ((size - LIST_HEAD) % 8 != 0
        || (p[1] != LIST_INTS && p[1] != LIST_FLOATS)) {
        PyErr_SetString(PyExc_ValueError,
                        "corrupt compact list (bad kind or length)");
        return -1;
    }
    return (size - LIST_HEAD) / 8;
}

/* The object of the compact item at p: a new reference, or NULL. */
static PyObject *
list_item(char kind, const char *p)
{
    if (kind == LIST_INTS) {
        long long v;
        memcpy(&v, p, 8);
        return PyLong_FromLongLong(v);
    }
    double v;
    memcpy(&v, p, 8);
    return PyFloat_FromDouble(v);
}

static PyObject *
list_expand(const char *p, Py_ssize_t size)
{
    Py_ssize_t n = list_count(p, size);
    char kind = p[1];
    PyObject *list;

    if (n < 0) {
        return NULL;
    }
    list = PyList_New(n);
    if (list == NULL) {
        return NULL;
    }
    p += LIST_HEAD;
    for (Py_ssize_t i = 0; i < n; i++, p += 8) {
        PyObject *item = list_item(kind, p);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *
pickling_py_dumps_list(PyObject *module, PyObject *const *args,
                       Py_ssize_t nargs)
{
    PyObject *obj, *out;
    Py_ssize_t start = 0, stop;

    FASTMP_UNUSED(module);
    if (nargs != 1 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "_dumps_list(obj) or _dumps_list(list, start, stop)");
        return NULL;
    }
    obj = args[0];
    if (nargs == 1 || (args[1] == Py_None && args[2] == Py_None)) {
        if (PyList_CheckExact(obj)) {
            out = list_compact(obj, 0, PyList_GET_SIZE(obj));
            if (out != NULL) {
                return out;
            }
        }
        return fastmp_dumps(obj);
    }
    if (!PyList_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "_dumps_list: a list with a range");
        return NULL;
    }
    /* __index__ may run Python code: read the bounds first, then clamp
     * them to the list's size as it is now, as a slice does. */
    start = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    stop = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (stop == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || stop < start) {
        PyErr_SetString(PyExc_ValueError, "_dumps_list: bad range");
        return NULL;
    }
    if (stop > PyList_GET_SIZE(obj)) {
        stop = PyList_GET_SIZE(obj);
    }
    if (start > stop) {
        start = stop;
    }
    if (PyList_CheckExact(obj)) {
        out = list_compact(obj, start, stop - start);
        if (out != NULL) {
            return out;
        }
    }
    PyObject *chunk = PyList_GetSlice(obj, start, stop);
    if (chunk == NULL) {
        return NULL;
    }
    out = fastmp_dumps(chunk);
    Py_DECREF(chunk);
    return out;
}

/* _loads_list_into(data, target, start): when data is the compact form
 * and target an exact list with room for its items from `start` on, put
 * them there (target[start:start + n] = _loads_list(data), without the
 * list in between) and return True; else False, changing nothing (the
 * caller unpickles as usual).  A map's result chunk, into the result. */
static PyObject *
pickling_py_loads_list_into(PyObject *module, PyObject *const *args,
                            Py_ssize_t nargs)
{
    Py_buffer view;
    PyObject *target, *res = NULL;
    Py_ssize_t start, n;

    FASTMP_UNUSED(module);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "_loads_list_into(data, target, start)");
        return NULL;
    }
    target = args[1];
    start = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (!PyList_CheckExact(target) || start < 0 || view.len < LIST_HEAD
        || ((const char *)view.buf)[0] != LIST_TAG) {
        res = Py_NewRef(Py_False);
        goto done;
    }
    const char *p = view.buf;
    char kind = p[1];
    n = list_count(p, view.len);
    if (n < 0) {
        goto done;
    }
    if (n > PyList_GET_SIZE(target) - start) {
        res = Py_NewRef(Py_False);
        goto done;
    }
    p += LIST_HEAD;
    for (Py_ssize_t i = 0; i < n; i++, p += 8) {
        PyObject *item = list_item(kind, p), *old;
        if (item == NULL) {
            goto done;
        }
        /* The old item's release may run Python code (a __del__) that
         * changes the list: look at its size again each time. */
        if (start + i >= PyList_GET_SIZE(target)) {
            Py_DECREF(item);
            PyErr_SetString(PyExc_RuntimeError,
                            "the list changed size while being filled");
            goto done;
        }
        old = PyList_GET_ITEM(target, start + i);
        PyList_SET_ITEM(target, start + i, item);
        Py_XDECREF(old);
    }
    res = Py_NewRef(Py_True);
done:
    PyBuffer_Release(&view);
    return res;
}

/* _map_list(func, data) == list(map(func, _loads_list(data))), without
 * the list of arguments: each argument is made just before its call and
 * freed after it (a map's chunk, in a Pool's worker).  The first
 * exception stops the loop, as list(map(...)) does. */
static PyObject *
pickling_py_map_list(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *func, *seq = NULL, *res = NULL;
    Py_buffer view;
    Py_ssize_t n;

    FASTMP_UNUSED(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_map_list(func, data)");
        return NULL;
    }
    func = args[0];
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len >= LIST_HEAD && ((const char *)view.buf)[0] == LIST_TAG) {
        /* The compact form: the buffer's exporter (bytes, in a worker)
         * stays as it is while we hold the view, whatever func does. */
        const char *p = view.buf;
        char kind = p[1];
        n = list_count(p, view.len);
        if (n < 0) {
            goto done;
        }
        res = PyList_New(n);
        if (res == NULL) {
            goto done;
        }
        /* Its empty slots must never be seen: func runs Python code,
         * which could find a tracked list through the gc module. */
        PyObject_GC_UnTrack(res);
        p += LIST_HEAD;
        for (Py_ssize_t i = 0; i < n; i++, p += 8) {
            PyObject *arg = list_item(kind, p), *item;
            if (arg == NULL) {
                Py_CLEAR(res);
                goto done;
            }
            item = PyObject_CallOneArg(func, arg);
            Py_DECREF(arg);
            if (item == NULL) {
                Py_CLEAR(res);
                goto done;
            }
            PyList_SET_ITEM(res, i, item);
        }
        PyObject_GC_Track(res);
        goto done;
    }
    PyBuffer_Release(&view);
    seq = fastmp_loads(args[1]);
    if (seq == NULL) {
        return NULL;
    }
    PyObject *it =
        PyObject_CallFunctionObjArgs((PyObject *)&PyMap_Type, func, seq, NULL);
    Py_DECREF(seq);
    if (it == NULL) {
        return NULL;
    }
    res = PySequence_List(it);
    Py_DECREF(it);
    return res;
done:
    PyBuffer_Release(&view);
    return res;
}

static PyObject *
pickling_py_loads_list(PyObject *module, PyObject *data)
{
    Py_buffer view;
    PyObject *res;

    FASTMP_UNUSED(module);
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len >= LIST_HEAD && ((const char *)view.buf)[0] == LIST_TAG) {
        res = list_expand(view.buf, view.len);
        PyBuffer_Release(&view);
        return res;
    }
    PyBuffer_Release(&view);
    return fastmp_loads(data);
}

/* ---------------------------------------------------------------------
 * module level
 * ------------------------------------------------------------------- */

static PyObject *
pickling_py_dumps(PyObject *module, PyObject *obj)
{
    FASTMP_UNUSED(module);
    return fastmp_dumps(obj);
}

static PyObject *
pickling_py_loads(PyObject *module, PyObject *data)
{
    FASTMP_UNUSED(module);
    return fastmp_loads(data);
}

static PyMethodDef pickling_functions[] = {
    {"_dumps", pickling_py_dumps, METH_O,
     "_dumps($module, obj, /)\n--\n\n"
     "Pickle obj as multiprocessing.reduction.ForkingPickler.dumps does "
     "(the same bytes, the same reducers); returns bytes."},
    {"_loads", pickling_py_loads, METH_O,
     "_loads($module, data, /)\n--\n\n"
     "ForkingPickler.loads(data): unpickle a bytes-like object."},
    {"_dumps_list", (PyCFunction)(void (*)(void))pickling_py_dumps_list,
     METH_FASTCALL,
     "_dumps_list($module, obj, start=None, stop=None, /)\n--\n\n"
     "_dumps(obj), or, for a list of exact ints within int64 or of exact "
     "floats, a compact form of it (for this machine only); returns "
     "bytes.  With start and stop, obj is a list and the result is that "
     "of _dumps_list(obj[start:stop])."},
    {"_loads_list_into",
     (PyCFunction)(void (*)(void))pickling_py_loads_list_into, METH_FASTCALL,
     "_loads_list_into($module, data, target, start, /)\n--\n\n"
     "When data is the compact form and the list target has room from "
     "start on, target[start:start + n] = _loads_list(data) and True; "
     "else False, nothing changed."},
    {"_map_list", (PyCFunction)(void (*)(void))pickling_py_map_list,
     METH_FASTCALL,
     "_map_list($module, func, data, /)\n--\n\n"
     "list(map(func, _loads_list(data))), each argument made only for "
     "its call."},
    {"_loads_list", pickling_py_loads_list, METH_O,
     "_loads_list($module, data, /)\n--\n\n"
     "The object _dumps_list(obj) was made from."},
    {NULL, NULL, 0, NULL},
};

/* Every object the state holds, for traverse and clear. */
#define PICKLING_OBJECTS(X)                                                   \
    X(TableType)                                                              \
    X(table)                                                                  \
    X(extra_reducers)                                                         \
    X(copyreg_table)                                                          \
    X(loads)                                                                  \
    X(pickler)                                                                \
    X(out)                                                                    \
    X(str_dump)                                                               \
    X(str_clear_memo)

int
fastmp_pickling_exec(PyObject *m, fastmp_state *st)
{
    fastmp_pickling_state *ps = &st->pickling;

    ps->TableType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &table_spec, NULL);
    if (ps->TableType == NULL) {
        return -1;
    }
    ps->str_dump = PyUnicode_InternFromString("dump");
    ps->str_clear_memo = PyUnicode_InternFromString("clear_memo");
    if (ps->str_dump == NULL || ps->str_clear_memo == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(m, pickling_functions);
}

int
fastmp_pickling_traverse(fastmp_state *st, visitproc visit, void *arg)
{
    fastmp_pickling_state *ps = &st->pickling;

#define PICKLING_VISIT(f) Py_VISIT(ps->f);
    PICKLING_OBJECTS(PICKLING_VISIT)
#undef PICKLING_VISIT
    return 0;
}

void
fastmp_pickling_clear(fastmp_state *st)
{
    fastmp_pickling_state *ps = &st->pickling;

#define PICKLING_CLEAR(f) Py_CLEAR(ps->f);
    PICKLING_OBJECTS(PICKLING_CLEAR)
#undef PICKLING_CLEAR
}
