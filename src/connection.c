/*
 * connection.c -- Connection over a file descriptor.
 *
 * Wire format (identical to multiprocessing.connection on every supported
 * Python): a message of n bytes is a 4-byte big-endian signed length
 * followed by the payload; when n > 0x7fffffff the 4-byte length is -1 and
 * an 8-byte big-endian unsigned length follows.  Reads never consume more
 * than the current message, so the fd can be shared with a stdlib end,
 * handed to another process, or polled between messages.
 *
 * Blocking I/O releases the GIL.  A blocked read(2)/write(2) returns EINTR
 * when a signal arrives (Python installs its handlers without SA_RESTART);
 * the loop then runs PyErr_CheckSignals(), so Ctrl-C raises
 * KeyboardInterrupt.  poll() waits in slices of FASTMP_WAIT_SLICE_NS.
 */
#include "fastmp.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>

#include "structmember.h"

typedef struct {
    PyObject_HEAD
    int fd; /* -1 once closed */
    char readable;
    char writable;
    signed char sock; /* fd is a socket: 1, not: 0, not known: -1 */
    fastmp_spin spin; /* spinning before a blocking read */
    PyObject *weakreflist;
} ConnectionObject;

/* Messages up to this size are sent with one write of header+payload
 * copied into a stack buffer: cheaper than writev's iovec setup. */
#define SMALL_SEND 512

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
 * raw I/O helpers (called with the GIL; release it around syscalls)
 * ------------------------------------------------------------------- */

/* Read exactly n bytes into buf.  `inside` says that bytes of the same
 * field were read before (the header's first bytes, by a spin look).
 * Returns 0, or -1 with an exception: EOFError when the peer closed before
 * the field's first byte, OSError("got end of file during message") when
 * it closed part way (as the stdlib's _recv: one field per call), OSError
 * from errno, KeyboardInterrupt (or whatever a signal handler raised). */
static int
fd_read_exact(int fd, char *buf, size_t n, int inside)
{
    size_t done = 0;

    while (done < n) {
        ssize_t r;
        int err = 0;

        Py_BEGIN_ALLOW_THREADS
        do {
            size_t want = n - done;
            if (want > (size_t)SSIZE_MAX) {
                want = (size_t)SSIZE_MAX;
            }
            r = fastmp_platform_read(fd, buf + done, want);
            if (r > 0) {
                done += (size_t)r;
            }
        } while (r > 0 && done < n);
        if (r < 0) {
            err = errno;
        }
        Py_END_ALLOW_THREADS

        if (done == n) {
            break;
        }
        if (r == 0) {
            if (done == 0 && !inside) {
                PyErr_SetNone(PyExc_EOFError);
            }
            else {
                PyErr_SetString(PyExc_OSError,
                                "got end of file during message");
            }
            return -1;
        }
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return -1;
            }
            continue;
        }
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* Write the iovecs completely (they are consumed: base/len updated).
 * Returns 0, or -1 with an exception set (BrokenPipeError when the reader
 * is gone, KeyboardInterrupt from a signal). */
static int
fd_writev_all(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        ssize_t r;
        int err = 0;

        Py_BEGIN_ALLOW_THREADS
        for (;;) {
            r = fastmp_platform_writev(fd, iov, iovcnt);
            if (r < 0) {
                err = errno;
                break;
            }
            while (iovcnt > 0 && (size_t)r >= iov->iov_len) {
                r -= (ssize_t)iov->iov_len;
                iov++;
                iovcnt--;
            }
            if (iovcnt == 0) {
                break;
            }
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
        Py_END_ALLOW_THREADS

        if (iovcnt == 0) {
            break;
        }
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return -1;
            }
            continue;
        }
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* Send one framed message.  Returns 0 or -1 with an exception set. */
static int
conn_send_frame(int fd, const char *data, size_t n)
{
    unsigned char hdr[12];
    struct iovec iov[2];
    int hlen;

    if (n > 0x7fffffffu) {
        uint64_t v = (uint64_t)n;
        int i;
        hdr[0] = hdr[1] = hdr[2] = hdr[3] = 0xff;
        for (i = 0; i < 8; i++) {
            hdr[4 + i] = (unsigned char)(v >> (56 - 8 * i));
        }
        hlen = 12;
    }
    else {
        hdr[0] = (unsigned char)(n >> 24);
        hdr[1] = (unsigned char)(n >> 16);
        hdr[2] = (unsigned char)(n >> 8);
        hdr[3] = (unsigned char)n;
        hlen = 4;
    }
    if (n <= SMALL_SEND) {
        /* One contiguous write: also the one segment a TCP peer sees. */
        char small[SMALL_SEND + 4];
        memcpy(small, hdr, 4);
        if (n > 0) {
            memcpy(small + 4, data, n);
        }
        iov[0].iov_base = small;
        iov[0].iov_len = 4 + n;
        return fd_writev_all(fd, iov, 1);
    }
    iov[0].iov_base = hdr;
    iov[0].iov_len = (size_t)hlen;
    iov[1].iov_base = (void *)data;
    iov[1].iov_len = n;
    return fd_writev_all(fd, iov, 2);
}

/* ---------------------------------------------------------------------
 * spinning before a blocking read
 *
 * A round trip through a pipe or socketpair costs the reader a sleep and
 * a wake-up each way, tens of microseconds on a virtual machine, while a
 * peer on another CPU often answers within a few microseconds.  So a
 * reader whose recent waits were short first looks for input without
 * sleeping (GIL released), within its fastmp_spin budget (wait.c), and
 * only then blocks.  On a socket a look is recv(MSG_DONTWAIT) of the
 * header itself, so input that is already there costs no extra system
 * call; on a pipe it is poll().
 * ------------------------------------------------------------------- */

/* One look for input without blocking: >0 bytes read into buf (sockets)
 * or 1 (pipes: readable, nothing read), 0 none yet, -1 stop looking (EOF,
 * error or signal: the blocking read reports it). */
static ssize_t
spin_look(ConnectionObject *self, char *buf, size_t n, int *got)
{
    *got = 0;
    if (self->sock != 0) {
        ssize_t r = fastmp_platform_recv_nowait(self->fd, buf, n);
        if (r > 0) {
            *got = (int)r;
            return r;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            self->sock = 1;
            return 0;
        }
        if (r < 0 && errno == ENOTSOCK) {
            self->sock = 0;
        }
        else {
            return -1;
        }
    }
    return fastmp_platform_poll_in(self->fd, 0);
}

typedef struct {
    ConnectionObject *self;
    char *buf;
    size_t n;
    int got;
} spin_look_args;

/* spin_look for fastmp_spin_poll (runs without the GIL). */
static int
spin_look_cb(void *arg)
{
    spin_look_args *a = (spin_look_args *)arg;
    ssize_t r = spin_look(a->self, a->buf, a->n, &a->got);
    return r == 0 ? 0 : (r > 0 ? 1 : -1);
}

/* Wait a little for the first bytes of a frame (at most n).  Returns the
 * number of bytes already read into buf, in *t0 when waiting began (0
 * when input was there at once) and in *spun whether the spin saw input
 * arrive. */
static int
conn_spin(ConnectionObject *self, char *buf, size_t n, int64_t *t0, int *spun)
{
    int got;
    ssize_t r;
    uint32_t budget = self->spin.budget_ns;

    *t0 = 0;
    *spun = 0;
    if (budget == 0 && self->sock == 0) {
        /* Nothing to gain from a look on a pipe: time the read only. */
        *t0 = fastmp_now_ns();
        return 0;
    }
    r = spin_look(self, buf, n, &got);
    if (r != 0) {
        return got;
    }
    *t0 = fastmp_now_ns();
    if (budget == 0) {
        return 0;
    }
    spin_look_args la = {self, buf, n, 0};
    *spun = fastmp_spin_poll(&self->spin, *t0, spin_look_cb, &la) > 0;
    return la.got;
}

/* Read a frame header.  Returns 0 and the payload size, or -1. */
static int
conn_recv_header(ConnectionObject *self, uint64_t *size)
{
    unsigned char h[8];
    int32_t n;
    int fd = self->fd;
    int64_t t0;
    int spun;
    int got = conn_spin(self, (char *)h, 4, &t0, &spun);

    if (got < 4) {
        if (t0 != 0 && PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (fd_read_exact(fd, (char *)h + got, (size_t)(4 - got), got > 0)
            < 0) {
            return -1;
        }
    }
    if (t0 != 0) {
        fastmp_spin_learn(&self->spin, fastmp_now_ns() - t0, spun);
    }
    n = (int32_t)(((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16)
                  | ((uint32_t)h[2] << 8) | (uint32_t)h[3]);
    if (n == -1) {
        uint64_t v = 0;
        int i;
        if (fd_read_exact(fd, (char *)h, 8, 0) < 0) {
            return -1;
        }
        for (i = 0; i < 8; i++) {
            v = (v << 8) | h[i];
        }
        *size = v;
        return 0;
    }
    if (n < 0) {
        /* Never produced by a well-behaved sender. */
        PyErr_SetString(PyExc_OSError, "bad message length");
        return -1;
    }
    *size = (uint64_t)n;
    return 0;
}

/* Read a whole message's payload into a new bytes object. */
static PyObject *
conn_recv_payload(int fd, uint64_t size)
{
    PyObject *b;

    if (size > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OSError, "bad message length");
        return NULL;
    }
    b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (b == NULL) {
        return NULL;
    }
    if (fd_read_exact(fd, PyBytes_AS_STRING(b), (size_t)size, 0) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
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
    r = conn_send_frame(self->fd, (const char *)view.buf + offset,
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

PyDoc_STRVAR(conn_send_doc, "send($self, obj, /)\n--\n\n"
                            "Send a (picklable) object.");

static PyObject *
conn_send(ConnectionObject *self, PyObject *obj)
{
    PyObject *data;
    int r;

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
    r = conn_send_frame(self->fd, PyBytes_AS_STRING(data),
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
    if (conn_recv_header(self, &size) < 0) {
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
    return conn_recv_payload(self->fd, size);
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

    if (conn_recv_header(self, &size) < 0) {
        return NULL;
    }
    msg = conn_recv_payload(self->fd, size);
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
    if (conn_recv_header(self, &size) < 0) {
        goto done;
    }
    if (size <= (uint64_t)(view.len - offset)) {
        /* Fits: read straight into the caller's buffer, which the view
         * keeps alive and pinned while the GIL is released. */
        if (fd_read_exact(self->fd, (char *)view.buf + offset, (size_t)size, 0)
            == 0) {
            res = PyLong_FromUnsignedLongLong((unsigned long long)size);
        }
        goto done;
    }
    PyBuffer_Release(&view);
    msg = conn_recv_payload(self->fd, size);
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
    if (conn_recv_header(self, &size) < 0) {
        return NULL;
    }
    b = conn_recv_payload(self->fd, size);
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

/* `_handle` mirrors the stdlib's attribute: setting it to None forgets
 * the descriptor without closing it; setting an int adopts that fd. */
static int
conn_set_handle(ConnectionObject *self, PyObject *v, void *Py_UNUSED(c))
{
    long fd;

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
    {"send", (PyCFunction)conn_send, METH_O, conn_send_doc},
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
