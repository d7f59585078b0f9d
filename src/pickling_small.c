/*
 * pickling_small.c -- small pickles of a few builtin types, written and
 * read without a pickle.Pickler or Unpickler.
 *
 * A manager's requests and replies (("7f..", "__setitem__", ("k", 1), {}),
 * ("#RETURN", None)) and many queue items are tuples of a few strings and
 * small ints.  Making and running a Pickler or an Unpickler for them costs
 * several times more than the bytes themselves.  Here:
 *
 * - small_dumps writes, for an object made only of None, bool, exact
 *   ints within 32 bits, exact floats, exact str and bytes, exact tuples
 *   of those, and empty exact dicts, *the same bytes* as the C pickler
 *   with the default protocol: the PROTO opcode, one FRAME when the
 *   frame holds at least 4 bytes, MEMOIZE after each str, bytes, tuple
 *   and dict, BINGET for an object met before (by identity), STOP.
 *   Anything else (another type, a longer int, a str that is not
 *   UTF-8 encodable, a pickle past SMALL_MAX bytes, nesting past
 *   SMALL_DEPTH) makes it give up and the caller pickles as usual.
 * - small_loads reads any pickle made only of the opcodes such pickles
 *   use (and BINPUT, MARK ... TUPLE, EMPTY_LIST, SHORT_BINBYTES,
 *   BINUNICODE, BINBYTES), whichever pickler wrote it, exactly as the
 *   Unpickler does.  Any other opcode, or anything malformed, makes it
 *   give up, and the caller's Unpickler reads (and reports) it.
 *
 * Both return a new reference; NULL with no exception set: not handled
 * here; NULL with an exception: an error (out of memory).
 */
#include "fastmp.h"

#include <string.h>

#define SMALL_MAX 2048   /* bytes of pickle handled here */
#define SMALL_DEPTH 8    /* nesting of tuples */
#define SMALL_MEMO 32    /* memoized objects */
#define SMALL_STACK 64   /* loads: stack depth */
#define SMALL_MARKS 8    /* loads: open MARKs */
#define FRAME_SIZE_MIN 4 /* the C pickler's: a shorter frame is not one */

#if PY_VERSION_HEX >= 0x030E0000
#define SMALL_PROTO 5 /* pickle.DEFAULT_PROTOCOL */
#else
#define SMALL_PROTO 4
#endif

/* Opcodes (Lib/pickletools.py). */
#define OP_MARK '('
#define OP_STOP '.'
#define OP_NONE 'N'
#define OP_BININT 'J'
#define OP_BININT1 'K'
#define OP_BININT2 'M'
#define OP_BINFLOAT 'G'
#define OP_BINUNICODE 'X'
#define OP_BINBYTES 'B'
#define OP_SHORT_BINBYTES 'C'
#define OP_EMPTY_TUPLE ')'
#define OP_TUPLE 't'
#define OP_EMPTY_DICT '}'
#define OP_EMPTY_LIST ']'
#define OP_BINGET 'h'
#define OP_BINPUT 'q'
#define OP_PROTO '\x80'
#define OP_TUPLE1 '\x85'
#define OP_TUPLE2 '\x86'
#define OP_TUPLE3 '\x87'
#define OP_NEWTRUE '\x88'
#define OP_NEWFALSE '\x89'
#define OP_SHORT_BINUNICODE '\x8c'
#define OP_MEMOIZE '\x94'
#define OP_FRAME '\x95'

/* ---------------------------------------------------------------------
 * dumps
 * ------------------------------------------------------------------- */

typedef struct {
    char buf[SMALL_MAX];
    size_t len;
    PyObject *memo[SMALL_MEMO]; /* borrowed: alive while dumping */
    int nmemo;
} small_writer;

/* 0 done, 1 give up. */
static int
w_put(small_writer *w, const void *p, size_t n)
{
    if (n > SMALL_MAX - w->len) {
        return 1;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    return 0;
}

static int
w_op(small_writer *w, char op)
{
    return w_put(w, &op, 1);
}

static void
le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* MEMOIZE obj (its index is the memo's size, as the pickler's). */
static int
w_memoize(small_writer *w, PyObject *obj)
{
    if (w->nmemo == SMALL_MEMO) {
        return 1;
    }
    w->memo[w->nmemo++] = obj;
    return w_op(w, OP_MEMOIZE);
}

/* A str or bytes body: the short opcode with a 1-byte length under 256
 * bytes, else the long one with 4 bytes. */
static int
w_sized(small_writer *w, char short_op, char long_op, const char *s,
        Py_ssize_t n)
{
    unsigned char h[5];
    size_t hl;

    if (n < 256) {
        h[0] = (unsigned char)short_op;
        h[1] = (unsigned char)n;
        hl = 2;
    }
    else {
        if ((size_t)n > SMALL_MAX) {
            return 1;
        }
        h[0] = (unsigned char)long_op;
        le32(h + 1, (uint32_t)n);
        hl = 5;
    }
    return w_put(w, h, hl) || w_put(w, s, (size_t)n);
}

/* 0 written, 1 give up, -1 error set. */
static int
w_save(small_writer *w, PyObject *obj, int depth)
{
    PyTypeObject *t = Py_TYPE(obj);
    int i;

    /* Atoms: never memoized (the pickler's order: these first). */
    if (obj == Py_None) {
        return w_op(w, OP_NONE);
    }
    if (obj == Py_True || obj == Py_False) {
        return w_op(w, obj == Py_True ? OP_NEWTRUE : OP_NEWFALSE);
    }
    if (t == &PyLong_Type) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(obj, &overflow);
        unsigned char b[5];
        if (overflow || v < -0x80000000L || v > 0x7fffffffL) {
            return 1;
        }
        if (v >= 0 && v < 256) {
            b[0] = OP_BININT1;
            b[1] = (unsigned char)v;
            return w_put(w, b, 2);
        }
        if (v >= 0 && v < 65536) {
            b[0] = OP_BININT2;
            b[1] = (unsigned char)v;
            b[2] = (unsigned char)(v >> 8);
            return w_put(w, b, 3);
        }
        b[0] = OP_BININT;
        le32(b + 1, (uint32_t)v);
        return w_put(w, b, 5);
    }
    if (t == &PyFloat_Type) {
#if PY_VERSION_HEX >= 0x030B0000
        unsigned char b[9];
        b[0] = OP_BINFLOAT;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(obj), (char *)b + 1, 0) < 0) {
            return -1;
        }
        return w_put(w, b, 9);
#else
        return 1;
#endif
    }
    /* Met before: BINGET. */
    for (i = 0; i < w->nmemo; i++) {
        if (w->memo[i] == obj) {
            unsigned char b[2] = {(unsigned char)OP_BINGET, (unsigned char)i};
            return w_put(w, b, 2);
        }
    }
    if (t == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s;
        if (PyUnicode_GET_LENGTH(obj) > SMALL_MAX) {
            return 1; /* (before encoding a long one) */
        }
        s = PyUnicode_AsUTF8AndSize(obj, &n);
        if (s == NULL) {
            /* Lone surrogates: the pickler's "surrogatepass". */
            PyErr_Clear();
            return 1;
        }
        return w_sized(w, OP_SHORT_BINUNICODE, OP_BINUNICODE, s, n)
               || w_memoize(w, obj);
    }
    if (t == &PyBytes_Type) {
        return w_sized(w, OP_SHORT_BINBYTES, OP_BINBYTES,
                       PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj))
               || w_memoize(w, obj);
    }
    if (t == &PyDict_Type) {
        if (PyDict_GET_SIZE(obj) != 0) {
            return 1;
        }
        return w_op(w, OP_EMPTY_DICT) || w_memoize(w, obj);
    }
    if (t == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj), k;
        static const char ops[4] = {0, OP_TUPLE1, OP_TUPLE2, OP_TUPLE3};
        int r;
        if (n == 0) {
            return w_op(w, OP_EMPTY_TUPLE);
        }
        if (depth >= SMALL_DEPTH) {
            return 1;
        }
        if (n > 3 && w_op(w, OP_MARK)) {
            return 1;
        }
        for (k = 0; k < n; k++) {
            r = w_save(w, PyTuple_GET_ITEM(obj, k), depth + 1);
            if (r != 0) {
                return r;
            }
        }
        return w_op(w, n > 3 ? OP_TUPLE : ops[n]) || w_memoize(w, obj);
    }
    return 1;
}

/* The default protocol's pickle of obj when it is small and made of the
 * types above; NULL without an exception when not. */
PyObject *
fastmp_small_dumps(PyObject *obj)
{
    small_writer w;
    size_t body;
    unsigned char h[11];
    PyObject *res;
    int r;

    w.len = 0;
    w.nmemo = 0;
    r = w_save(&w, obj, 0);
    if (r == 0) {
        r = w_op(&w, OP_STOP);
    }
    if (r != 0) {
        return NULL;
    }
    body = w.len;
    h[0] = (unsigned char)OP_PROTO;
    h[1] = SMALL_PROTO;
    if (body < FRAME_SIZE_MIN) {
        res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(2 + body));
        if (res != NULL) {
            memcpy(PyBytes_AS_STRING(res), h, 2);
            memcpy(PyBytes_AS_STRING(res) + 2, w.buf, body);
        }
        return res;
    }
    h[2] = (unsigned char)OP_FRAME;
    le32(h + 3, (uint32_t)body);
    memset(h + 7, 0, 4);
    res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(11 + body));
    if (res != NULL) {
        memcpy(PyBytes_AS_STRING(res), h, 11);
        memcpy(PyBytes_AS_STRING(res) + 11, w.buf, body);
    }
    return res;
}

/* ---------------------------------------------------------------------
 * loads
 * ------------------------------------------------------------------- */

typedef struct {
    PyObject *stack[SMALL_STACK];
    Py_ssize_t sp;
    Py_ssize_t marks[SMALL_MARKS];
    int nmarks;
    PyObject *memo[SMALL_MEMO]; /* owned; NULL: unset */
    int nmemo;                  /* indices below this may be set */
    int memo_len;               /* entries set (MEMOIZE's index) */
} small_reader;

/* The stack's bottom for the current MARK (the Unpickler's fence). */
static Py_ssize_t
r_fence(const small_reader *r)
{
    return r->nmarks > 0 ? r->marks[r->nmarks - 1] : 0;
}

static void
r_clear(small_reader *r)
{
    Py_ssize_t i;

    for (i = 0; i < r->sp; i++) {
        Py_DECREF(r->stack[i]);
    }
    for (i = 0; i < r->nmemo; i++) {
        Py_XDECREF(r->memo[i]);
    }
}

/* Push a new reference (NULL: an error is set).  0, 1 give up, -1. */
static int
r_push(small_reader *r, PyObject *o)
{
    if (o == NULL) {
        return -1;
    }
    if (r->sp == SMALL_STACK) {
        Py_DECREF(o);
        return 1;
    }
    r->stack[r->sp++] = o;
    return 0;
}

/* Store the top of the stack at memo[i]. */
static int
r_put(small_reader *r, size_t i)
{
    if (r->sp <= r_fence(r) || i >= SMALL_MEMO) {
        return 1;
    }
    while ((size_t)r->nmemo <= i) {
        r->memo[r->nmemo++] = NULL;
    }
    if (r->memo[i] == NULL) {
        r->memo_len++;
    }
    Py_XSETREF(r->memo[i], Py_NewRef(r->stack[r->sp - 1]));
    return 0;
}

/* Pop the items above `from` into a new tuple and push it. */
static int
r_tuple(small_reader *r, Py_ssize_t from)
{
    Py_ssize_t n = r->sp - from, i;
    PyObject *t;

    if (from < r_fence(r) || n < 0) {
        return 1;
    }
    t = PyTuple_New(n);
    if (t == NULL) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        PyTuple_SET_ITEM(t, i, r->stack[from + i]);
    }
    r->sp = from;
    return r_push(r, t);
}

static uint32_t
rd_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
           | ((uint32_t)p[3] << 24);
}

/* Read a str or bytes of n bytes at p. */
static int
r_sized(small_reader *r, int str, const unsigned char *p, size_t n)
{
    if (str) {
        return r_push(r, PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n,
                                              "surrogatepass"));
    }
    return r_push(r,
                  PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n));
}

/* The object pickled in data[0:n] when it uses only the opcodes above;
 * NULL without an exception when not (or when it is malformed). */
PyObject *
fastmp_small_loads(const char *data, Py_ssize_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    const unsigned char *end = p + n;
    small_reader r;
    PyObject *res = NULL;
    int st = 0;

    if (n > SMALL_MAX + 11 || n < 3 || p[0] != (unsigned char)OP_PROTO
        || p[1] > 5) {
        return NULL;
    }
    r.sp = 0;
    r.nmarks = 0;
    r.nmemo = 0;
    r.memo_len = 0;
    p += 2;
    if (p < end && *p == (unsigned char)OP_FRAME) {
        /* One frame holding the rest, exactly (else: the Unpickler). */
        if (end - p < 9 || rd_le32(p + 1) != (uint32_t)(end - p - 9)
            || rd_le32(p + 5) != 0) {
            return NULL;
        }
        p += 9;
    }
    while (st == 0) {
        unsigned char op;
        size_t len;

        if (p >= end) {
            st = 1;
            break;
        }
        op = *p++;
        switch (op) {
        case OP_STOP:
            if (r.sp != 1 || r.nmarks != 0) {
                st = 1;
                break;
            }
            res = r.stack[0];
            r.sp = 0;
            goto done;
        case OP_NONE:
            st = r_push(&r, Py_NewRef(Py_None));
            break;
        case (unsigned char)OP_NEWTRUE:
            st = r_push(&r, Py_NewRef(Py_True));
            break;
        case (unsigned char)OP_NEWFALSE:
            st = r_push(&r, Py_NewRef(Py_False));
            break;
        case OP_BININT1:
            if (end - p < 1) {
                st = 1;
                break;
            }
            st = r_push(&r, PyLong_FromLong(p[0]));
            p += 1;
            break;
        case OP_BININT2:
            if (end - p < 2) {
                st = 1;
                break;
            }
            st = r_push(&r, PyLong_FromLong(p[0] | (p[1] << 8)));
            p += 2;
            break;
        case OP_BININT:
            if (end - p < 4) {
                st = 1;
                break;
            }
            st = r_push(&r, PyLong_FromLong((long)(int32_t)rd_le32(p)));
            p += 4;
            break;
#if PY_VERSION_HEX >= 0x030B0000
        case OP_BINFLOAT: {
            double d;
            if (end - p < 8) {
                st = 1;
                break;
            }
            d = PyFloat_Unpack8((const char *)p, 0);
            if (d == -1.0 && PyErr_Occurred()) {
                st = -1;
                break;
            }
            st = r_push(&r, PyFloat_FromDouble(d));
            p += 8;
            break;
        }
#endif
        case (unsigned char)OP_SHORT_BINUNICODE:
        case OP_SHORT_BINBYTES:
            if (end - p < 1 || (size_t)(end - p - 1) < p[0]) {
                st = 1;
                break;
            }
            len = p[0];
            st = r_sized(&r, op != OP_SHORT_BINBYTES, p + 1, len);
            p += 1 + len;
            break;
        case OP_BINUNICODE:
        case OP_BINBYTES:
            if (end - p < 4 || (size_t)(end - p - 4) < rd_le32(p)) {
                st = 1;
                break;
            }
            len = rd_le32(p);
            st = r_sized(&r, op == OP_BINUNICODE, p + 4, len);
            p += 4 + len;
            break;
        case OP_EMPTY_TUPLE:
            st = r_push(&r, PyTuple_New(0));
            break;
        case (unsigned char)OP_TUPLE1:
        case (unsigned char)OP_TUPLE2:
        case (unsigned char)OP_TUPLE3:
            st = r_tuple(&r, r.sp - (op - (unsigned char)OP_TUPLE1 + 1));
            break;
        case OP_MARK:
            if (r.nmarks == SMALL_MARKS) {
                st = 1;
                break;
            }
            r.marks[r.nmarks++] = r.sp;
            break;
        case OP_TUPLE:
            if (r.nmarks == 0) {
                st = 1;
                break;
            }
            st = r_tuple(&r, r.marks[--r.nmarks]);
            break;
        case OP_EMPTY_DICT:
            st = r_push(&r, PyDict_New());
            break;
        case OP_EMPTY_LIST:
            st = r_push(&r, PyList_New(0));
            break;
        case (unsigned char)OP_MEMOIZE:
            st = r_put(&r, (size_t)r.memo_len);
            break;
        case OP_BINPUT:
            if (end - p < 1) {
                st = 1;
                break;
            }
            st = r_put(&r, p[0]);
            p += 1;
            break;
        case OP_BINGET:
            if (end - p < 1 || p[0] >= r.nmemo || r.memo[p[0]] == NULL) {
                st = 1;
                break;
            }
            st = r_push(&r, Py_NewRef(r.memo[p[0]]));
            p += 1;
            break;
        default:
            st = 1;
            break;
        }
    }
    /* st > 0: given up, nothing set; st < 0: an error set (no memory, or
     * the UnicodeDecodeError the Unpickler raises too). */
done:
    r_clear(&r);
    return res;
}
