/*
 * connection_io.c -- the wire side of Connection (connection.c): reading
 * and writing framed messages on the fd with the GIL released and
 * signals checked, and the spin that looks for input before a blocking
 * read.  The frame format is described in connection.c.
 */
#include "connection_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

/* Messages up to this size are sent with one write of header+payload
 * copied into a stack buffer: cheaper than writev's iovec setup. */
#define SMALL_SEND 512

/* ---------------------------------------------------------------------
 * raw I/O helpers (called with the GIL; release it around syscalls)
 * ------------------------------------------------------------------- */

/* After a read failed with errno `err`: 0 when a signal interrupted it and
 * its handlers ran (read again), -1 with an exception (OSError from err,
 * or whatever a handler raised: KeyboardInterrupt). */
static int
read_failed(int err)
{
    if (err == EINTR) {
        return PyErr_CheckSignals() < 0 ? -1 : 0;
    }
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* Read exactly n bytes into buf.  `inside` says that bytes of the same
 * field were read before (the header's first bytes, by a spin look).
 * Returns 0, or -1 with an exception: EOFError when the peer closed before
 * the field's first byte, OSError("got end of file during message") when
 * it closed part way (as the stdlib's _recv: one field per call), OSError
 * from errno, KeyboardInterrupt (or whatever a signal handler raised). */
int
fastmp_conn_read_exact(ConnectionObject *self, char *buf, size_t n, int inside)
{
    int fd = self->fd;
    size_t done = fastmp_conn_ahead(self);

    if (done > 0) {
        /* Read ahead before: take those first. */
        if (done > n) {
            done = n;
        }
        memcpy(buf, self->ahead + self->ahead_pos, done);
        self->ahead_pos += (uint32_t)done;
        if (self->ahead_pos == self->ahead_len) {
            fastmp_conn_drop_ahead(self);
        }
        inside = 1;
    }
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
        if (read_failed(err) < 0) {
            return -1;
        }
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
int
fastmp_conn_send_frame(int fd, const char *data, size_t n)
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
    if (self->nospin) {
        /* The caller sleeps in the read itself (Connection._spin = False):
         * one system call when the message is not there yet. */
        return 0;
    }
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

/* A nospin Connection's wait for a message: one blocking read of as much
 * as is there, up to FASTMP_CONN_AHEAD bytes, into self->ahead (empty
 * before).  A message that fits arrives with its header, so header and
 * payload cost one system call; bytes past it stay for the next read.
 * Returns 0 (at least one byte read), or -1 with an exception: EOFError
 * when the peer closed, OSError, KeyboardInterrupt. */
static int
conn_read_ahead(ConnectionObject *self)
{
    ssize_t r;
    int err;

    if (self->ahead == NULL) {
        self->ahead = PyMem_Malloc(FASTMP_CONN_AHEAD);
        if (self->ahead == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = fastmp_platform_read(self->fd, self->ahead, FASTMP_CONN_AHEAD);
        err = errno;
        Py_END_ALLOW_THREADS
        if (r > 0) {
            self->ahead_pos = 0;
            self->ahead_len = (uint32_t)r;
            return 0;
        }
        if (r == 0) {
            PyErr_SetNone(PyExc_EOFError);
            return -1;
        }
        if (read_failed(err) < 0) {
            return -1;
        }
    }
}

/* Read a frame header.  Returns 0 and the payload size, or -1. */
int
fastmp_conn_recv_header(ConnectionObject *self, uint64_t *size)
{
    unsigned char h[8];
    int32_t n;
    int64_t t0 = 0;
    int spun = 0;
    int got = 0;

    if (fastmp_conn_ahead(self) == 0) {
        if (self->nospin) {
            if (conn_read_ahead(self) < 0) {
                return -1;
            }
        }
        else {
            got = conn_spin(self, (char *)h, 4, &t0, &spun);
        }
    }
    if (got < 4) {
        if (t0 != 0 && PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (fastmp_conn_read_exact(self, (char *)h + got, (size_t)(4 - got),
                                   got > 0)
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
        if (fastmp_conn_read_exact(self, (char *)h, 8, 0) < 0) {
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
PyObject *
fastmp_conn_recv_payload(ConnectionObject *self, uint64_t size)
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
    if (fastmp_conn_read_exact(self, PyBytes_AS_STRING(b), (size_t)size, 0)
        < 0) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}
