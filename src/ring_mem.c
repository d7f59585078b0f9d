/*
 * ring_mem.c -- the Queue ring's memory (ring.c): the size of the queue's
 * file, this process's mapping of it, and growing the ring when an item
 * does not fit.  Called under the queue lock.
 */
#include "ring_internal.h"

#include <errno.h>
#include <string.h>

/* ---- the file and its mapping ----------------------------------------- */

/* Raise for a failed resize/map of `bytes` bytes of queue memory, with
 * errno `err`: MemoryError when memory or a limit ran out, else OSError
 * (its errno subclass).  Always returns -1. */
int
fastmp_ring_memory_error(int err, const char *what, uint64_t bytes)
{
    if (err == ENOMEM || err == ENOSPC || err == EFBIG) {
        PyErr_Format(PyExc_MemoryError,
                     "queue: cannot %s %llu bytes of shared memory (%s)", what,
                     (unsigned long long)bytes, strerror(err));
        return -1;
    }
    PyObject *msg = PyUnicode_FromFormat(
        "queue: cannot %s %llu bytes of shared memory: %s", what,
        (unsigned long long)bytes, strerror(err));
    if (msg != NULL) {
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", err, msg);
        Py_DECREF(msg);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
    }
    return -1;
}

/* Map (or remap) this process's data view to `size` bytes.  0, or -1
 * with errno set and the old view intact. */
int
fastmp_ring_view(RingObject *q, uint64_t size)
{
    void *p;
    if (q->data == NULL) {
        p = fastmp_platform_shm_map(q->fd, RING_PAGE, size);
    }
    else {
        p = fastmp_platform_shm_remap(q->data, q->mapped, size);
    }
    if (p == NULL) {
        return -1;
    }
    q->data = p;
    q->mapped = size;
    return 0;
}

/* Under the lock, after a smaller cap was published: cut the file and
 * this process's view back to `keep` bytes of data, freeing the pages
 * above.  Failures only leave more mapped than needed. */
void
fastmp_ring_shrink(RingObject *q, uint64_t keep)
{
    ring_header *h = q->h;
    __atomic_store_n(&h->data_size, keep, __ATOMIC_RELAXED);
    (void)fastmp_platform_shm_resize(q->fd, RING_PAGE + keep);
    (void)fastmp_ring_view(q, keep);
}

/* ---- growing the ring ------------------------------------------------ */

/* The most bytes one queue may hold: the machine's memory. */
static uint64_t
ring_limit(void)
{
    uint64_t phys = fastmp_platform_phys_bytes();
    return phys != 0 && phys < RING_MAX_CAP / 2 ? phys : RING_MAX_CAP / 2;
}

/* Under the lock, on the unpublished slot s: make room for `need` more
 * bytes by doubling the ring, growing the file and this process's view
 * first when they are too small.  The wrapped part [0, tail) moves up to
 * [cap, cap + tail), above the old ring, where nothing published lives,
 * so a process dying here leaves the published state intact.  Returns 0,
 * or -1 with MemoryError (or OSError) set when the memory is not there;
 * the queue is then unchanged. */
int
fastmp_ring_grow(RingObject *q, ring_slot *s, uint64_t need)
{
    ring_header *h = q->h;
    uint64_t limit = ring_limit();
    if (need > limit || s->used > limit - need) {
        PyErr_Format(PyExc_MemoryError,
                     "queue: %llu bytes waiting and an item of %llu bytes "
                     "would exceed the machine's memory (%llu bytes)",
                     (unsigned long long)s->used, (unsigned long long)need,
                     (unsigned long long)limit);
        return -1;
    }
    uint64_t newcap = s->cap;
    while (s->used + need > newcap) {
        newcap *= 2;
    }
    uint64_t oldsize = __atomic_load_n(&h->data_size, __ATOMIC_RELAXED);
    if (newcap > oldsize) {
        if (fastmp_platform_shm_resize(q->fd, RING_PAGE + newcap) < 0) {
            return fastmp_ring_memory_error(errno, "reserve", newcap);
        }
        __atomic_store_n(&h->data_size, newcap, __ATOMIC_RELAXED);
    }
    if (newcap > q->mapped && fastmp_ring_view(q, newcap) < 0) {
        /* Give the file back its old size: nothing published lives
         * above it. */
        int err = errno;
        if (newcap > oldsize) {
            __atomic_store_n(&h->data_size, oldsize, __ATOMIC_RELAXED);
            (void)fastmp_platform_shm_resize(q->fd, RING_PAGE + oldsize);
        }
        return fastmp_ring_memory_error(err, "map", newcap);
    }
    if (s->used == 0) {
        s->head = s->tail = 0;
    }
    else if (s->tail <= s->head) {
        memcpy(q->data + s->cap, q->data, s->tail);
        s->tail += s->cap;
    }
    s->cap = newcap;
    return 0;
}
