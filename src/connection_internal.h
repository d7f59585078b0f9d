/*
 * connection_internal.h -- what connection.c (the Connection type) and
 * connection_io.c (the wire: framed reads and writes, the spin before a
 * blocking read) share.  Not for other areas.
 */
#ifndef FASTMP_CONNECTION_INTERNAL_H
#define FASTMP_CONNECTION_INTERNAL_H

#include "fastmp.h"

typedef struct {
    PyObject_HEAD
    int fd; /* -1 once closed */
    char readable;
    char writable;
    signed char sock; /* fd is a socket: 1, not: 0, not known: -1 */
    fastmp_spin spin; /* spinning before a blocking read */
    char nospin;      /* recv sleeps in read(2) at once: no look, no spin,
                         and reads ahead (below) */
    /* Bytes read past the current message: only a nospin Connection reads
     * ahead (one read(2) of up to FASTMP_CONN_AHEAD bytes for a message's
     * header, most often its whole payload too); every read takes from
     * here first.  NULL until first needed. */
    char *ahead;
    uint32_t ahead_pos, ahead_len;
    PyObject *weakreflist;
} ConnectionObject;

/* connection_io.c */

#define FASTMP_CONN_AHEAD 4096

/* Read exactly n bytes into buf.  `inside` says that bytes of the same
 * field were read before (the header's first bytes, by a spin look).
 * Returns 0, or -1 with an exception: EOFError when the peer closed before
 * the field's first byte, OSError("got end of file during message") when
 * it closed part way (as the stdlib's _recv: one field per call), OSError
 * from errno, KeyboardInterrupt (or whatever a signal handler raised). */
int fastmp_conn_read_exact(ConnectionObject *self, char *buf, size_t n,
                           int inside);

/* Send one framed message.  Returns 0 or -1 with an exception set. */
int fastmp_conn_send_frame(int fd, const char *data, size_t n);

/* Read a frame header.  Returns 0 and the payload size, or -1. */
int fastmp_conn_recv_header(ConnectionObject *self, uint64_t *size);

/* Read a whole message's payload into a new bytes object. */
PyObject *fastmp_conn_recv_payload(ConnectionObject *self, uint64_t size);

/* Forget the bytes read ahead (the fd was closed or replaced). */
static inline void
fastmp_conn_drop_ahead(ConnectionObject *self)
{
    self->ahead_pos = self->ahead_len = 0;
}

/* Bytes read ahead and not consumed yet. */
static inline uint32_t
fastmp_conn_ahead(const ConnectionObject *self)
{
    return self->ahead_len - self->ahead_pos;
}

#endif /* FASTMP_CONNECTION_INTERNAL_H */
