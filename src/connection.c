/*
 * connection.c -- Connection over a file descriptor.
 *
 * Wire format (identical to multiprocessing.connection on every supported
 * Python): a message of n bytes is a 4-byte big-endian signed length
 * followed by the payload; when n > 0x7fffffff the 4-byte length is -1 and
 * an 8-byte big-endian unsigned length follows.  Reads never consume more
 * than the current message, so the fd can be shared with a stdlib end,
 * handed to another process, or polled between messages -- except on a
 * Connection whose `_spin` is False (a manager's: requests and replies
 * alternate, and nobody else reads the fd), which reads ahead: up to
 * FASTMP_CONN_AHEAD bytes with the header, so a small message costs one
 * read(2); what it read past the message is the next recv()'s, and its
 * poll() sees it (an fd-level wait() or a copy of the fd would not).
 *
 * Blocking I/O releases the GIL.  A blocked read(2)/write(2) returns EINTR
 * when a signal arrives (Python installs its handlers without SA_RESTART);
 * the loop then runs PyErr_CheckSignals(), so Ctrl-C raises
 * KeyboardInterrupt.  poll() waits in slices of FASTMP_WAIT_SLICE_NS.
 *
 * Shared state: none but the kernel's pipe or socket buffer.  A
 * Connection has no lock: processes or threads sharing one end serialize
 * themselves.  A sender that dies (or is interrupted by a raising signal
 * handler) mid-frame leaves a partial frame: the reader blocks for the
 * rest, or gets OSError("got end of file during message") once every
 * write end is closed.  A reader that dies mid-frame leaves the rest of
 * the frame, which the next recv() reads as a header.
 *
 * This file is the Python type; the reads and writes of frames, and the
 * spin before a blocking read, are connection_io.c.
 */
#include "connection_internal.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>

#include "structmember.h"

static fastmp_connection_state *
conn_state(PyObject *self)
{
    FASTMP_UNUSED(self);
    return &fastmp_get_state()->connection;
}

/* Import multiprocessing.BufferTooShort on first use.  Returns 0, or -1
 * with an exception set. */
static int
conn_load_errors(fastmp_connection_state *cs)
{
    PyObject *mp;

    if (cs->BufferTooShort != NULL) {
        return 0;
    }
    mp = PyImport_ImportModule("multiprocessing");
    if (mp == NULL) {
        return -1;
    }
    cs->BufferTooShort = PyObject_GetAttrString(mp, "BufferTooShort");
    Py_DECREF(mp);
    return cs->BufferTooShort == NULL ? -1 : 0;
}

/* ---------------------------------------------------------------------
 * the Connection type
 * ------------------------------------------------------------------- */

static int
conn_check_closed(ConnectionObject *self)
{
    if (self->fd < 0) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return -1;
    }
    return 0;
}

static int
conn_check_readable(ConnectionObject *self)
{
    if (conn_check_closed(self) < 0) {
        return -1;
    }
    if (!self->readable) {
        PyErr_SetString(PyExc_OSError, "connection is write-only");
        return -1;
    }
    return 0;
}

static int
conn_check_writable(ConnectionObject *self)
{
    if (conn_check_closed(self) < 0) {
        return -1;
    }
    if (!self->writable) {
        PyErr_SetString(PyExc_OSError, "connection is read-only");
        return -1;
    }
    return 0;
}

static void
conn_close_fd(ConnectionObject *self)
{
    fastmp_conn_drop_ahead(self);
    if (self->fd >= 0) {
        int fd = self->fd;
        self->fd = -1;
        (void)fastmp_platform_close(fd);
    }
}

static PyObject *
conn_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handle", "readable", "writable", NULL};
    PyObject *handle, *idx;
    int readable = 1, writable = 1;
    long fd;
    ConnectionObject *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pp:Connection", kwlist,
                                     &handle, &readable, &writable)) {
        return NULL;
    }
    idx = PyNumber_Index(handle);
    if (idx == NULL) {
        return NULL;
    }
    fd = PyLong_AsLong(idx);
    Py_DECREF(idx);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid handle");
        return NULL;
    }
    if (fd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "handle is too large");
        return NULL;
    }
    if (!readable && !writable) {
        PyErr_SetString(PyExc_ValueError,
                        "at least one of `readable` and `writable` must be "
                        "True");
        return NULL;
    }
    self = (ConnectionObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->fd = (int)fd;
    self->readable = (char)readable;
    self->writable = (char)writable;
    self->sock = -1;
    fastmp_spin_init(&self->spin);
    self->nospin = 0;
    self->ahead = NULL;
    self->ahead_pos = self->ahead_len = 0;
    self->weakreflist = NULL;
    return (PyObject *)self;
}

/* Everything happens in tp_new; __init__ only accepts the same arguments
 * so that a Python subclass may call super().__init__(handle, ...). */
static int
conn_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handle", "readable", "writable", NULL};
    PyObject *handle;
    int readable = 1, writable = 1;

    FASTMP_UNUSED(self);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pp:Connection", kwlist,
                                     &handle, &readable, &writable)) {
        return -1;
    }
    return 0;
}

static void
conn_dealloc(ConnectionObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    conn_close_fd(self);
    PyMem_Free(self->ahead);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(conn_send_bytes_doc,
             "send_bytes($self, /, buf, offset=0, size=None)\n--\n\n"
             "Send the bytes data from a bytes-like object.");

static PyObject *
conn_send_bytes(ConnectionObject *self, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *buf = NULL, *ooffset = NULL, *osize = Py_None;
    Py_ssize_t offset = 0, size;
    Py_buffer view;
    int r;

    static const fastmp_argspec spec = {"_ConnectionBase.send_bytes",
                                        FASTMP_ARGS_PY,
                                        3,
                                        1,
                                        {"buf", "offset", "size"}};
    PyObject *a[3];
    if (fastmp_parse_args(&spec, args, nargs, kwnames, a) < 0) {
        return NULL;
    }
    buf = a[0];
    ooffset = a[1];
    if (a[2] != NULL) {
        osize = a[2];
    }
    if (conn_check_writable(self) < 0) {
        return NULL;
    }
    if (ooffset != NULL) {
        offset = PyNumber_AsSsize_t(ooffset, PyExc_OverflowError);
        if (offset == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset is negative");
        goto error;
    }
    if (view.len < offset) {
        PyErr_SetString(PyExc_ValueError, "buffer length < offset");
        goto error;
    }
    if (osize == Py_None) {
        size = view.len - offset;
    }
    else {
        size = PyNumber_AsSsize_t(osize, PyExc_OverflowError);
        if (size == -1 && PyErr_Occurred()) {
            goto error;
        }
        if (size < 0) {
            PyErr_SetString(PyExc_ValueError, "size is negative");
            goto error;
        }
        if (size > view.len - offset) {
            PyErr_SetString(PyExc_ValueError, "buffer length < offset + size");
            goto error;
        }
    }
    r = fastmp_conn_send_frame(self->fd, (const char *)view.buf + offset,
                               (size_t)size);
    PyBuffer_Release(&view);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
error:
    PyBuffer_Release(&view);
    return NULL;
}

PyDoc_STRVAR(conn_send_doc, "send($self, /, obj)\n--\n\n"
                            "Send a (picklable) object.");

static PyObject *
conn_send(ConnectionObject *self, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames)
{
    static const fastmp_argspec spec = {
        "_ConnectionBase.send", FASTMP_ARGS_PY, 1, 1, {"obj"}};
    PyObject *obj, *data;
    int r;

    if (fastmp_parse_args(&spec, args, nargs, kwnames, &obj) < 0) {
        return NULL;
    }
    if (conn_check_writable(self) < 0) {
        return NULL;
    }
    data = fastmp_dumps(obj);
    if (data == NULL) {
        return NULL;
    }
    /* The pickler may have run code that closed us. */
    if (self->fd < 0) {
        Py_DECREF(data);
        return conn_check_closed(self), NULL;
    }
    r = fastmp_conn_send_frame(self->fd, PyBytes_AS_STRING(data),
                               (size_t)PyBytes_GET_SIZE(data));
    Py_DECREF(data);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The stdlib's reaction to a message longer than maxlength: a duplex
 * connection stops being readable, a read-only one is closed. */
static PyObject *
conn_bad_message_length(ConnectionObject *self)
{
    if (self->writable) {
        self->readable = 0;
    }
    else {
        conn_close_fd(self);
    }
    PyErr_SetString(PyExc_OSError, "bad message length");
    return NULL;
}

/* A limit from a Python number, checked as the stdlib checks maxlength
 * and offset: it only compares the object with ints, so a float or an int
 * of any size is a limit too.  An exact int (the usual case) is read
 * directly; anything else is kept in `obj` and compared with the Python
 * operators, with their errors. */
typedef struct {
    int64_t v;     /* the value (ints); ints past INT64_MAX: INT64_MAX */
    PyObject *obj; /* borrowed: not an exact int, compare through it */
} conn_limit;

/* Fill *lim from o and check `o < 0` (ValueError(negative_msg)).  0, or
 * -1 with an exception set. */
static int
conn_limit_from(PyObject *o, conn_limit *lim, const char *negative_msg)
{
    int neg;

    lim->obj = NULL;
    if (PyLong_CheckExact(o) || PyBool_Check(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        neg = overflow < 0 || (overflow == 0 && v < 0);
        lim->v = overflow > 0 ? INT64_MAX : (int64_t)v;
    }
    else {
        PyObject *zero = PyLong_FromLong(0);
        if (zero == NULL) {
            return -1;
        }
        neg = PyObject_RichCompareBool(o, zero, Py_LT);
        Py_DECREF(zero);
        if (neg < 0) {
            return -1;
        }
        lim->obj = o;
        lim->v = 0;
    }
    if (neg) {
        PyErr_SetString(PyExc_ValueError, negative_msg);
        return -1;
    }
    return 0;
}

/* 1 if n > lim (the stdlib's `size > maxsize`), 0 if not, -1 with an
 * exception set. */
static int
conn_limit_below(const conn_limit *lim, uint64_t n)
{
    PyObject *pn;
    int r;

    if (lim->obj == NULL) {
        return n > (uint64_t)lim->v;
    }
    pn = PyLong_FromUnsignedLongLong((unsigned long long)n);
    if (pn == NULL) {
        return -1;
    }
    r = PyObject_RichCompareBool(pn, lim->obj, Py_GT);
    Py_DECREF(pn);
    return r;
}

/* 1 if lim > n (the stdlib's `offset > bytesize`), 0 if not, -1 with an
 * exception set. */
static int
conn_limit_above(const conn_limit *lim, uint64_t n)
{
    PyObject *pn;
    int r;

    if (lim->obj == NULL) {
        return (uint64_t)lim->v > n;
    }
    pn = PyLong_FromUnsignedLongLong((unsigned long long)n);
    if (pn == NULL) {
        return -1;
    }
    r = PyObject_RichCompareBool(lim->obj, pn, Py_GT);
    Py_DECREF(pn);
    return r;
}

PyDoc_STRVAR(conn_recv_bytes_doc,
             "recv_bytes($self, /, maxlength=None)\n--\n\n"
             "Receive bytes data as a bytes object.");

static PyObject *
conn_recv_bytes(ConnectionObject *self, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *omax = Py_None;
    conn_limit lim = {INT64_MAX, NULL};
    uint64_t size;
    int r;

    static const fastmp_argspec spec = {
        "_ConnectionBase.recv_bytes", FASTMP_ARGS_PY, 1, 0, {"maxlength"}};
    PyObject *a[1];
    if (fastmp_parse_args(&spec, args, nargs, kwnames, a) < 0) {
        return NULL;
    }
    if (a[0] != NULL) {
        omax = a[0];
    }
    if (conn_check_readable(self) < 0) {
        return NULL;
    }
    if (omax != Py_None
        && conn_limit_from(omax, &lim, "negative maxlength") < 0) {
        return NULL;
    }
    if (fastmp_conn_recv_header(self, &size) < 0) {
        return NULL;
    }
    if (omax != Py_None) {
        r = conn_limit_below(&lim, size);
        if (r < 0) {
            return NULL;
        }
        if (r) {
            return conn_bad_message_length(self);
        }
    }
    return fastmp_conn_recv_payload(self, size);
}

/* recv_bytes_into's ending when the stdlib only fails after reading the
 * message (a read-only buffer, an offset that is no index): read it, then
 * raise BufferTooShort if it does not fit at offset, else `err`. */
static PyObject *
conn_recv_into_unusable(ConnectionObject *self, Py_ssize_t buflen,
                        PyObject *offset, const char *err)
{
    fastmp_connection_state *cs = conn_state((PyObject *)self);
    PyObject *msg, *n = NULL, *end = NULL, *exc;
    uint64_t size;
    int fits;

    if (fastmp_conn_recv_header(self, &size) < 0) {
        return NULL;
    }
    msg = fastmp_conn_recv_payload(self, size);
    if (msg == NULL) {
        return NULL;
    }
    /* the stdlib: bytesize < offset + size */
    n = PyLong_FromSsize_t(PyBytes_GET_SIZE(msg));
    end = n == NULL ? NULL : PyNumber_Add(offset, n);
    Py_XDECREF(n);
    n = end == NULL ? NULL : PyLong_FromSsize_t(buflen);
    fits = n == NULL ? -1 : PyObject_RichCompareBool(n, end, Py_GE);
    Py_XDECREF(n);
    Py_XDECREF(end);
    if (fits == 0) {
        exc = PyObject_CallOneArg(cs->BufferTooShort, msg);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
    }
    else if (fits > 0) {
        PyErr_SetString(PyExc_TypeError, err);
    }
    Py_DECREF(msg);
    return NULL;
}

PyDoc_STRVAR(conn_recv_bytes_into_doc,
             "recv_bytes_into($self, /, buf, offset=0)\n--\n\n"
             "Receive bytes data into a writeable bytes-like object.\n"
             "Return the number of bytes read.");

static PyObject *
conn_recv_bytes_into(ConnectionObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buf", "offset", NULL};
    fastmp_connection_state *cs = conn_state((PyObject *)self);
    PyObject *buf, *ooff = NULL, *msg, *exc, *res = NULL;
    Py_ssize_t offset = 0;
    Py_buffer view;
    conn_limit lim;
    uint64_t size;
    int r;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:recv_bytes_into", kwlist,
                                     &buf, &ooff)) {
        return NULL;
    }
    if (conn_check_readable(self) < 0) {
        return NULL;
    }
    if (conn_load_errors(cs) < 0) {
        return NULL;
    }
    if (!PyObject_CheckBuffer(buf)) {
        /* the stdlib's memoryview(buf) */
        PyErr_Format(PyExc_TypeError,
                     "memoryview: a bytes-like object is required, "
                     "not '%.200s'",
                     Py_TYPE(buf)->tp_name);
        return NULL;
    }
    /* Not PyBUF_WRITABLE: a read-only buffer fails only after the read,
     * as in the stdlib; a writable one reports readonly == 0. */
    if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (ooff != NULL) {
        if (conn_limit_from(ooff, &lim, "negative offset") < 0) {
            goto done;
        }
        r = conn_limit_above(&lim, (uint64_t)view.len);
        if (r != 0) {
            if (r > 0) {
                PyErr_SetString(PyExc_ValueError, "offset too large");
            }
            goto done;
        }
        if (lim.obj != NULL && !PyIndex_Check(lim.obj)) {
            /* the stdlib slices the buffer with it after the read */
            res = conn_recv_into_unusable(
                self, view.len, lim.obj,
                "slice indices must be integers or None or have an "
                "__index__ method");
            goto done;
        }
        offset = lim.obj == NULL
                     ? (Py_ssize_t)lim.v
                     : PyNumber_AsSsize_t(lim.obj, PyExc_OverflowError);
        if (offset == -1 && PyErr_Occurred()) {
            goto done;
        }
    }
    if (view.readonly) {
        PyObject *zero = PyLong_FromSsize_t(offset);
        if (zero != NULL) {
            res = conn_recv_into_unusable(
                self, view.len, zero,
                "readinto() argument must be read-write bytes-like object, "
                "not memoryview");
            Py_DECREF(zero);
        }
        goto done;
    }
    if (fastmp_conn_recv_header(self, &size) < 0) {
        goto done;
    }
    if (size <= (uint64_t)(view.len - offset)) {
        /* Fits: read straight into the caller's buffer, which the view
         * keeps alive and pinned while the GIL is released. */
        if (fastmp_conn_read_exact(self, (char *)view.buf + offset,
                                   (size_t)size, 0)
            == 0) {
            res = PyLong_FromUnsignedLongLong((unsigned long long)size);
        }
        goto done;
    }
    PyBuffer_Release(&view);
    msg = fastmp_conn_recv_payload(self, size);
    if (msg == NULL) {
        return NULL;
    }
    exc = PyObject_CallOneArg(cs->BufferTooShort, msg);
    Py_DECREF(msg);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
done:
    PyBuffer_Release(&view);
    return res;
}

PyDoc_STRVAR(conn_recv_doc, "recv($self, /)\n--\n\n"
                            "Receive a (picklable) object.");

static PyObject *
conn_recv(ConnectionObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *b, *res;
    uint64_t size;

    if (conn_check_readable(self) < 0) {
        return NULL;
    }
    if (fastmp_conn_recv_header(self, &size) < 0) {
        return NULL;
    }
    b = fastmp_conn_recv_payload(self, size);
    if (b == NULL) {
        return NULL;
    }
    res = fastmp_loads(b);
    Py_DECREF(b);
    return res;
}

PyDoc_STRVAR(conn_poll_doc,
             "poll($self, /, timeout=0.0)\n--\n\n"
             "Whether there is any input available to be read.");

static PyObject *
conn_poll(ConnectionObject *self, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames)
{
    fastmp_deadline d;
    int r;
    PyObject *timeout = NULL;

    /* poll(timeout=0.0): the stdlib accepts the keyword too. */
    static const fastmp_argspec spec = {
        "_ConnectionBase.poll", FASTMP_ARGS_PY, 1, 0, {"timeout"}};
    if (fastmp_parse_args(&spec, args, nargs, kwnames, &timeout) < 0) {
        return NULL;
    }
    if (conn_check_readable(self) < 0) {
        return NULL;
    }
    if (fastmp_conn_ahead(self) > 0) {
        Py_RETURN_TRUE; /* read ahead, not consumed yet */
    }
    if (timeout == NULL) {
        fastmp_deadline_from_seconds(0.0, &d);
    }
    else if (fastmp_deadline_from_object(timeout, &d) < 0) {
        return NULL;
    }
    r = fastmp_wait_readable(self->fd, &d);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

PyDoc_STRVAR(conn_fileno_doc, "fileno($self, /)\n--\n\n"
                              "File descriptor or handle of the connection");

static PyObject *
conn_fileno(ConnectionObject *self, PyObject *Py_UNUSED(ignored))
{
    if (conn_check_closed(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->fd);
}

PyDoc_STRVAR(conn_close_doc, "close($self, /)\n--\n\n"
                             "Close the connection");

static PyObject *
conn_close(ConnectionObject *self, PyObject *Py_UNUSED(ignored))
{
    fastmp_conn_drop_ahead(self);
    if (self->fd >= 0) {
        int fd = self->fd;
        self->fd = -1;
        if (fastmp_platform_close(fd) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
conn_enter(ConnectionObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *
conn_exit(ConnectionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    FASTMP_UNUSED(args);
    FASTMP_UNUSED(nargs);
    return conn_close(self, NULL);
}

static PyObject *
conn_get_closed(ConnectionObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->fd < 0);
}

static PyObject *
conn_get_readable(ConnectionObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->readable);
}

static PyObject *
conn_get_writable(ConnectionObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->writable);
}

static PyObject *
conn_get_handle(ConnectionObject *self, void *Py_UNUSED(c))
{
    if (self->fd < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(self->fd);
}

static PyObject *
conn_get_spin(ConnectionObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(!self->nospin);
}

/* `_spin = False`: a receive that finds no input sleeps in read(2) at
 * once, without a look for input or a spin first, and reads ahead (see
 * the top of this file).  For a reader whose peer answers only after its
 * own work (a manager's server thread waiting for its client's next
 * request): spinning through that time takes a CPU the peer needs, and a
 * look costs a system call that finds nothing. */
static int
conn_set_spin(ConnectionObject *self, PyObject *v, void *Py_UNUSED(c))
{
    int t;

    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _spin");
        return -1;
    }
    t = PyObject_IsTrue(v);
    if (t < 0) {
        return -1;
    }
    self->nospin = (char)!t;
    return 0;
}

/* `_handle` mirrors the stdlib's attribute: setting it to None forgets
 * the descriptor without closing it; setting an int adopts that fd. */
static int
conn_set_handle(ConnectionObject *self, PyObject *v, void *Py_UNUSED(c))
{
    long fd;

    fastmp_conn_drop_ahead(self);
    if (v == NULL || v == Py_None) {
        self->fd = -1;
        return 0;
    }
    fd = PyLong_AsLong(v);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "invalid handle");
        return -1;
    }
    self->fd = (int)fd;
    self->sock = -1;
    return 0;
}

static PyMethodDef conn_methods[] = {
    {"send_bytes", (PyCFunction)(void (*)(void))conn_send_bytes,
     METH_FASTCALL | METH_KEYWORDS, conn_send_bytes_doc},
    {"send", (PyCFunction)(void (*)(void))conn_send,
     METH_FASTCALL | METH_KEYWORDS, conn_send_doc},
    {"recv_bytes", (PyCFunction)(void (*)(void))conn_recv_bytes,
     METH_FASTCALL | METH_KEYWORDS, conn_recv_bytes_doc},
    {"recv_bytes_into", (PyCFunction)(void (*)(void))conn_recv_bytes_into,
     METH_VARARGS | METH_KEYWORDS, conn_recv_bytes_into_doc},
    {"recv", (PyCFunction)conn_recv, METH_NOARGS, conn_recv_doc},
    {"poll", (PyCFunction)(void (*)(void))conn_poll,
     METH_FASTCALL | METH_KEYWORDS, conn_poll_doc},
    {"fileno", (PyCFunction)conn_fileno, METH_NOARGS, conn_fileno_doc},
    {"close", (PyCFunction)conn_close, METH_NOARGS, conn_close_doc},
    {"__enter__", (PyCFunction)conn_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))conn_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef conn_getset[] = {
    {"closed", (getter)conn_get_closed, NULL,
     "True if the connection is closed", NULL},
    {"readable", (getter)conn_get_readable, NULL,
     "True if the connection is readable", NULL},
    {"writable", (getter)conn_get_writable, NULL,
     "True if the connection is writable", NULL},
    {"_handle", (getter)conn_get_handle, (setter)conn_set_handle,
     "The file descriptor, or None once closed", NULL},
    {"_spin", (getter)conn_get_spin, (setter)conn_set_spin,
     "Whether a receive may spin before it sleeps (default True); False "
     "also reads ahead of the current message",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef conn_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ConnectionObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(
    conn_doc,
    "Connection(handle, readable=True, writable=True)\n--\n\n"
    "Connection based on an arbitrary file descriptor (a socket or a pipe),\n"
    "speaking the multiprocessing.connection wire format.");

static PyType_Slot conn_slots[] = {
    {Py_tp_new, conn_new},         {Py_tp_init, conn_init},
    {Py_tp_dealloc, conn_dealloc}, {Py_tp_methods, conn_methods},
    {Py_tp_getset, conn_getset},   {Py_tp_members, conn_members},
    {Py_tp_doc, (void *)conn_doc}, {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "fastmp.connection.Connection",
    .basicsize = sizeof(ConnectionObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = conn_slots,
};

static PyMethodDef connection_functions[] = {
    {NULL, NULL, 0, NULL},
};

int
fastmp_connection_exec(PyObject *m, fastmp_state *st)
{
    if (PyModule_AddFunctions(m, connection_functions) < 0) {
        return -1;
    }
    fastmp_connection_state *cs = &st->connection;

    cs->ConnectionType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &conn_spec, NULL);
    if (cs->ConnectionType == NULL) {
        return -1;
    }
    if (PyModule_AddObject(m, "Connection", Py_NewRef(cs->ConnectionType))
        < 0) {
        Py_DECREF(cs->ConnectionType);
        return -1;
    }
    return 0;
}

int
fastmp_connection_traverse(fastmp_state *st, visitproc visit, void *arg)
{
    fastmp_connection_state *cs = &st->connection;

    Py_VISIT(cs->ConnectionType);
    Py_VISIT(cs->BufferTooShort);
    return 0;
}

void
fastmp_connection_clear(fastmp_state *st)
{
    fastmp_connection_state *cs = &st->connection;

    Py_CLEAR(cs->ConnectionType);
    Py_CLEAR(cs->BufferTooShort);
}
