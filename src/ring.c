/*
 * ring.c -- the Queue ring buffer: a multi-producer multi-consumer byte
 * ring in process-shared memory, with futex waits.
 *
 * A queue is one anonymous shared-memory file (memfd) of its own: the
 * first page holds the ring_header, the rest is the ring data.  Every
 * process maps the header page once (it never moves: futex words live
 * there) and the data separately, at the size the header announces.  The
 * file starts at one page plus RING_MIN_CAP bytes, so a queue costs
 * little address space.  The ring in use is the first `cap` bytes of the
 * data; when an item does not fit, `cap` doubles (moving the wrapped part
 * up), the file grows with it and the header's `data_size` says so; every
 * process remaps its data view to `data_size` (under the lock) before it
 * touches the data.  When the queue drains, `cap` falls back to RING_KEEP
 * and a larger file is cut back to it, freeing the pages above.  So an
 * unbounded queue never blocks in put(): it grows until the machine's
 * memory (or the process's address space) runs out, and then put() raises
 * MemoryError.
 *
 * Records: an 8-byte length, then the pickled item, padded to 8 bytes.  A
 * record may wrap around the end of the ring.
 *
 * All queue-wide state changes happen under the project's owner lock
 * (fastmp.h, "owner"; a waiter takes over from a dead holder).  The state
 * the lock protects lives in two slots; the holder writes the slot that is
 * not current and publishes it with a single store of `cur`, so a process
 * that dies at any point inside the critical section leaves the previous,
 * consistent state: a half-written item is never visible, a half-read item
 * stays in the queue.  That is all a takeover needs: it repairs nothing.
 *
 * The header's layout, with who writes each field, is in ring_internal.h;
 * the file, the mapping and growing the ring are ring_mem.c.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "ring_internal.h"

#include <errno.h>
#include <string.h>
#include <structmember.h>

/* ---- the queue lock: the owner lock ------------------------------- */

/* Take the lock (called with the GIL, released while sleeping).  Returns
 * 0, or -1 with an exception set (KeyboardInterrupt from a signal
 * handler, OSError).  Taking over from a dead holder needs no repair:
 * whatever it did is unpublished. */
static inline int
ring_lock(ring_header *h)
{
    if (fastmp_owner_try(&h->lock)) {
        return 0;
    }
    int r = fastmp_owner_lock(&h->lock, NULL, FASTMP_OWNER_INTERRUPTIBLE);
    return r < 0 ? -1 : 0;
}

static inline void
ring_unlock(ring_header *h)
{
    fastmp_owner_unlock(&h->lock);
}

/* ---- following other processes' grows and shrinks ------------------ */

/* Under the lock, before touching the data: follow a grow or shrink made
 * by another process.  0, or -1 with an exception set (the caller
 * unlocks). */
static inline int
ring_sync(RingObject *q)
{
    uint64_t want = __atomic_load_n(&q->h->data_size, __ATOMIC_RELAXED);
    if (want == q->mapped) {
        return 0;
    }
    if (fastmp_ring_view(q, want) < 0) {
        return fastmp_ring_memory_error(errno, "map", want);
    }
    return 0;
}

/* ---- the slots ------------------------------------------------------ */

static inline ring_slot *
slot_cur(ring_header *h)
{
    return &h->slot[__atomic_load_n(&h->cur, __ATOMIC_ACQUIRE) & 1];
}

/* Under the lock: a copy of the current slot to modify. */
static inline ring_slot *
slot_next(ring_header *h)
{
    uint32_t c = __atomic_load_n(&h->cur, __ATOMIC_RELAXED) & 1;
    h->slot[c ^ 1] = h->slot[c];
    return &h->slot[c ^ 1];
}

static inline void
slot_publish(ring_header *h)
{
    uint32_t c = __atomic_load_n(&h->cur, __ATOMIC_RELAXED) & 1;
    __atomic_store_n(&h->cur, c ^ 1, __ATOMIC_RELEASE);
}

/* ---- data copies -------------------------------------------------- */

static inline uint64_t
rec_bytes(uint64_t n)
{
    return 8 + ((n + 7) & ~UINT64_C(7));
}

/* Copy n bytes in at offset `off` of a ring of `cap` bytes (wrapping);
 * returns the offset after them. */
static uint64_t
ring_write(RingObject *q, uint64_t cap, uint64_t off, const char *src,
           uint64_t n)
{
    uint64_t first = cap - off;
    if (first >= n) {
        memcpy(q->data + off, src, n);
    }
    else {
        memcpy(q->data + off, src, first);
        memcpy(q->data, src + first, n - first);
    }
    return (off + n) & (cap - 1);
}

static uint64_t
ring_read(RingObject *q, uint64_t cap, uint64_t off, char *dst, uint64_t n)
{
    uint64_t first = cap - off;
    if (first >= n) {
        memcpy(dst, q->data + off, n);
    }
    else {
        memcpy(dst, q->data + off, first);
        memcpy(dst + first, q->data, n - first);
    }
    return (off + n) & (cap - 1);
}

/* ---- module state helpers ------------------------------------------ */

static inline fastmp_ring_state *
ring_state(void)
{
    return &fastmp_get_state()->ring;
}

/* Raise queue.Empty or queue.Full (`name`, cached in *slot: imported on
 * first use).  The exception is set in any case. */
static void
ring_raise(PyObject **slot, const char *name)
{
    if (*slot == NULL) {
        PyObject *mod = PyImport_ImportModule("queue");
        if (mod == NULL) {
            return;
        }
        *slot = PyObject_GetAttrString(mod, name);
        Py_DECREF(mod);
        if (*slot == NULL) {
            return;
        }
    }
    PyErr_SetNone(*slot);
}

/* ---- object life ------------------------------------------------- */

/* Map the header page of q->fd and check it.  0, or -1 with an exception
 * set. */
static int
ring_map_header(RingObject *q)
{
    uint64_t size;
    if (fastmp_platform_shm_size(q->fd, &size) < 0) {
        fastmp_oserror_syscall("fstat");
        return -1;
    }
    if (size < RING_PAGE + RING_MIN_CAP) {
        PyErr_SetString(PyExc_ValueError, "invalid shared queue reference");
        return -1;
    }
    void *p = fastmp_platform_shm_map(q->fd, 0, RING_PAGE);
    if (p == NULL) {
        return fastmp_ring_memory_error(errno, "map", RING_PAGE);
    }
    q->h = (ring_header *)p;
    if (__atomic_load_n(&q->h->magic, __ATOMIC_ACQUIRE) != RING_MAGIC) {
        PyErr_SetString(PyExc_ValueError, "invalid shared queue reference");
        return -1;
    }
    return 0;
}

static PyObject *
ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"maxsize", "joinable", "attach", "init", NULL};
    Py_ssize_t maxsize = 0;
    int joinable = 0;
    int init = 0;
    PyObject *attach = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|npOp:_Ring", kwlist,
                                     &maxsize, &joinable, &attach, &init)) {
        return NULL;
    }
    int fd = -1;
    if (attach != Py_None) {
        /* A file descriptor passed to this process (fastmp/queues.py):
         * ours from here on, also on failure. */
        long v = PyLong_AsLong(attach);
        if (v == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (v < 0 || v > INT_MAX) {
            PyErr_SetString(PyExc_ValueError,
                            "invalid shared queue reference");
            return NULL;
        }
        fd = (int)v;
    }
    RingObject *q = (RingObject *)type->tp_alloc(type, 0);
    if (q == NULL) {
        if (fd >= 0) {
            (void)fastmp_platform_close(fd);
        }
        return NULL;
    }
    q->fd = fd;
    q->h = NULL;
    q->data = NULL;
    q->mapped = 0;
    q->weakreflist = NULL;
    fastmp_spin_init(&q->get_spin);
    fastmp_spin_init(&q->put_spin);
    fastmp_spin_init(&q->join_spin);
    if (attach != Py_None && fd >= 0 && init) {
        /* A new empty file of the caller's (a manager queue's named
         * segment): sized and set up as an anonymous one. */
        if (fastmp_platform_shm_resize(fd, RING_PAGE + RING_MIN_CAP) < 0) {
            fastmp_ring_memory_error(errno, "reserve",
                                     RING_PAGE + RING_MIN_CAP);
            goto error;
        }
    }
    if (attach == Py_None || (fd >= 0 && init)) {
        if (attach == Py_None) {
            q->fd = fastmp_platform_shm_anon("fastmp-queue",
                                             RING_PAGE + RING_MIN_CAP);
        }
        if (q->fd < 0) {
            fastmp_ring_memory_error(errno, "reserve",
                                     RING_PAGE + RING_MIN_CAP);
            goto error;
        }
        void *p = fastmp_platform_shm_map(q->fd, 0, RING_PAGE);
        if (p == NULL) {
            fastmp_ring_memory_error(errno, "map", RING_PAGE);
            goto error;
        }
        ring_header *h = (ring_header *)p;
        q->h = h;
        h->data_size = RING_MIN_CAP;
        h->slot[0].cap = RING_MIN_CAP;
        h->maxsize = maxsize > 0 ? (uint64_t)maxsize : 0;
        h->joinable = joinable ? 1 : 0;
        __atomic_store_n(&h->magic, RING_MAGIC, __ATOMIC_RELEASE);
    }
    else if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid shared queue reference");
        goto error;
    }
    else if (ring_map_header(q) < 0) {
        goto error;
    }
    return (PyObject *)q;

error:
    Py_DECREF(q);
    return NULL;
}

static void
ring_dealloc(RingObject *q)
{
    PyTypeObject *tp = Py_TYPE(q);
    if (PyType_IS_GC(tp)) {
        PyObject_GC_UnTrack(q);
    }
    if (q->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)q);
    }
    fastmp_platform_shm_unmap(q->data, q->mapped);
    fastmp_platform_shm_unmap(q->h, RING_PAGE);
    if (q->fd >= 0) {
        (void)fastmp_platform_close(q->fd);
    }
    tp->tp_free(q);
    Py_DECREF(tp);
}

static int
ring_check_open(RingObject *q)
{
    if (q->closed) {
        PyErr_Format(PyExc_ValueError, "Queue %R is closed", (PyObject *)q);
        return -1;
    }
    return 0;
}

/* ---- put --------------------------------------------------------- */

/* Wait on a futex word (spinning first when recent waits were short),
 * GIL released, sliced.  Returns like fastmp_wait_futex. */
static int
ring_sleep(uint32_t *word, uint32_t seen, uint32_t *sleepers,
           const fastmp_deadline *d, fastmp_spin *sp)
{
    int r = fastmp_wait_futex_spin(word, seen, d, sp);
    __atomic_sub_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
    return r;
}

/* The stdlib hands a timeout that is not None to a SemLock (put, and get
 * without blocking) even when nothing has to wait, and so rejects one that
 * is not a number.  0, or -1 with TypeError set. */
static inline int
ring_check_timeout(PyObject *timeout)
{
    if (timeout != NULL && timeout != Py_None) {
        double v = PyFloat_AsDouble(timeout);
        if (v == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

static PyObject *ring_put_pickled(RingObject *q, PyObject *pickled, int block,
                                  PyObject *timeout);

static PyObject *
ring_put_impl(RingObject *q, PyObject *obj, int block, PyObject *timeout)
{
    if (ring_check_open(q) < 0 || ring_check_timeout(timeout) < 0) {
        return NULL;
    }
    q->used = 1;
    PyObject *pickled = fastmp_dumps(obj);
    if (pickled == NULL) {
        return NULL;
    }
    return ring_put_pickled(q, pickled, block, timeout);
}

/* Put the record `pickled` (a reference the call takes over), blocking
 * as put() does.  None, or NULL with an exception set (queue.Full). */
static PyObject *
ring_put_pickled(RingObject *q, PyObject *pickled, int block,
                 PyObject *timeout)
{
    fastmp_ring_state *rs = ring_state();
    Py_buffer view;
    if (PyObject_GetBuffer(pickled, &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(pickled);
        return NULL;
    }
    ring_header *h = q->h;
    uint64_t n = (uint64_t)view.len;
    uint64_t need = rec_bytes(n);
    fastmp_deadline d;
    int have_deadline = 0, last = 0;
    if (n > RING_MAX_CAP) {
        PyErr_NoMemory();
        goto error;
    }
    for (;;) {
        if (ring_lock(h) < 0) {
            goto error;
        }
        if (ring_sync(q) < 0) {
            ring_unlock(h);
            goto error;
        }
        ring_slot *cs = slot_cur(h);
        int full = h->maxsize != 0 && cs->nitems >= h->maxsize;
        if (!full) {
            ring_slot *s = slot_next(h);
            if (s->used + need > s->cap && fastmp_ring_grow(q, s, need) < 0) {
                ring_unlock(h);
                goto error;
            }
            uint64_t len = n;
            uint64_t off =
                ring_write(q, s->cap, s->tail, (const char *)&len, 8);
            ring_write(q, s->cap, off, view.buf, n);
            s->tail = (s->tail + need) & (s->cap - 1);
            s->used += need;
            s->nitems++;
            if (h->joinable) {
                s->unfinished++;
            }
            slot_publish(h);
            __atomic_add_fetch(&h->put_seq, 1, __ATOMIC_SEQ_CST);
            ring_unlock(h);
            if (__atomic_load_n(&h->getters, __ATOMIC_SEQ_CST) != 0) {
                (void)fastmp_platform_futex_wake(&h->put_seq, 1);
            }
            PyBuffer_Release(&view);
            Py_DECREF(pickled);
            Py_RETURN_NONE;
        }
        if (!block || last) {
            ring_unlock(h);
            ring_raise(&rs->Full, "Full");
            goto error;
        }
        uint32_t seen = __atomic_load_n(&h->get_seq, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&h->putters, 1, __ATOMIC_SEQ_CST);
        ring_unlock(h);
        if (!have_deadline) {
            if (fastmp_deadline_from_object(timeout, &d) < 0) {
                __atomic_sub_fetch(&h->putters, 1, __ATOMIC_SEQ_CST);
                goto error;
            }
            have_deadline = 1;
        }
        int r = ring_sleep(&h->get_seq, seen, &h->putters, &d, &q->put_spin);
        if (r < 0) {
            goto error;
        }
        if (r == 1) {
            last = 1;
        }
    }

error:
    PyBuffer_Release(&view);
    Py_DECREF(pickled);
    return NULL;
}

/* ---- get --------------------------------------------------------- */

/* Whether this process called _interrupt_get() since its last get that
 * returned Empty (and if so, that is this one). */
static int
ring_take_interrupt(RingObject *q)
{
    pid_t me;
    if (__atomic_load_n(&q->interrupted, __ATOMIC_SEQ_CST) == 0) {
        return 0;
    }
    me = getpid();
    return __atomic_compare_exchange_n(&q->interrupted, &me, 0, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* Take the oldest record out as bytes.  Returns a new reference, or NULL
 * with an exception set (queue.Empty when there is none and the wait, if
 * any, is over). */
static PyObject *
ring_get_bytes(RingObject *q, int block, PyObject *timeout)
{
    fastmp_ring_state *rs = ring_state();
    ring_header *h = q->h;
    fastmp_deadline d;
    int have_deadline = 0, last = 0, spun = 0;
    int64_t t0 = 0;
    if (block && timeout != NULL && timeout != Py_None) {
        /* As the stdlib's, which computes its deadline first. */
        if (fastmp_deadline_from_object(timeout, &d) < 0) {
            return NULL;
        }
        have_deadline = 1;
    }
    else if (ring_check_timeout(timeout) < 0) {
        return NULL;
    }
    for (;;) {
        if (ring_lock(h) < 0) {
            return NULL;
        }
        ring_slot *cs = slot_cur(h);
        if (cs->nitems != 0) {
            if (ring_sync(q) < 0) {
                ring_unlock(h);
                return NULL;
            }
            uint64_t len;
            uint64_t off = ring_read(q, cs->cap, cs->head, (char *)&len, 8);
            if (len > cs->used - 8) {
                /* Cannot happen unless the memory was overwritten. */
                ring_unlock(h);
                PyErr_SetString(PyExc_OSError, "queue memory corrupted");
                return NULL;
            }
            PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
            if (b == NULL) {
                ring_unlock(h);
                return NULL;
            }
            ring_read(q, cs->cap, off, PyBytes_AS_STRING(b), len);
            ring_slot *s = slot_next(h);
            s->head = (s->head + rec_bytes(len)) & (s->cap - 1);
            s->used -= rec_bytes(len);
            s->nitems--;
            if (s->nitems == 0) {
                /* Drained: start again at offset 0 (warm pages), and
                 * shrink a ring that grew large. */
                s->head = s->tail = 0;
                if (s->cap > RING_KEEP) {
                    s->cap = RING_KEEP;
                }
            }
            slot_publish(h);
            if (s->nitems == 0 && q->mapped > RING_KEEP
                && __atomic_load_n(&h->data_size, __ATOMIC_RELAXED)
                       > RING_KEEP) {
                /* Only after the smaller ring is published: nothing
                 * published lives above it any more. */
                fastmp_ring_shrink(q, RING_KEEP);
            }
            __atomic_add_fetch(&h->get_seq, 1, __ATOMIC_SEQ_CST);
            ring_unlock(h);
            if (__atomic_load_n(&h->putters, __ATOMIC_SEQ_CST) != 0) {
                (void)fastmp_platform_futex_wake(&h->get_seq, 1);
            }
            if (spun == 1) {
                /* Slept for it: how long did that take? */
                fastmp_spin_learn(&q->get_spin, fastmp_now_ns() - t0, 0);
            }
            return b;
        }
        if (!block || last || ring_take_interrupt(q)) {
            ring_unlock(h);
            ring_raise(&rs->Empty, "Empty");
            return NULL;
        }
        uint32_t seen = __atomic_load_n(&h->put_seq, __ATOMIC_SEQ_CST);
        if (!spun) {
            /* A producer on another CPU usually delivers within a few
             * microseconds: watch for it (within this queue's spin
             * budget, 0 on one CPU) before counting as a sleeper, which
             * spares both sides a futex syscall per item. */
            spun = 1;
            ring_unlock(h);
            t0 = fastmp_now_ns();
            if (fastmp_spin_watch(&h->put_seq, seen, &q->get_spin, t0)) {
                fastmp_spin_learn(&q->get_spin, fastmp_now_ns() - t0, 1);
                if (PyErr_CheckSignals() < 0) {
                    return NULL;
                }
                spun = 2;
                continue;
            }
            if (ring_lock(h) < 0) {
                return NULL;
            }
            if (slot_cur(h)->nitems != 0) {
                ring_unlock(h);
                continue;
            }
            seen = __atomic_load_n(&h->put_seq, __ATOMIC_SEQ_CST);
        }
        __atomic_add_fetch(&h->getters, 1, __ATOMIC_SEQ_CST);
        ring_unlock(h);
        if (!have_deadline) {
            if (fastmp_deadline_from_object(timeout, &d) < 0) {
                __atomic_sub_fetch(&h->getters, 1, __ATOMIC_SEQ_CST);
                return NULL;
            }
            have_deadline = 1;
        }
        /* The spin above was this wait's watching: sleep at once. */
        int r = fastmp_wait_futex(&h->put_seq, seen, &d);
        __atomic_sub_fetch(&h->getters, 1, __ATOMIC_SEQ_CST);
        if (r < 0) {
            return NULL;
        }
        if (r == 1) {
            last = 1;
        }
        else if (__atomic_load_n(&h->put_seq, __ATOMIC_ACQUIRE) == seen) {
            fastmp_spin_learn(&q->get_spin, INT64_MAX, 0);
        }
    }
}

static PyObject *
ring_get_impl(RingObject *q, int block, PyObject *timeout)
{
    if (ring_check_open(q) < 0) {
        return NULL;
    }
    PyObject *b = ring_get_bytes(q, block, timeout);
    if (b == NULL) {
        return NULL;
    }
    PyObject *res = fastmp_loads(b);
    Py_DECREF(b);
    return res;
}

static PyObject *
ring_put(RingObject *q, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    static const fastmp_argspec put_spec = {
        "Queue.put", FASTMP_ARGS_PY, 3, 1, {"obj", "block", "timeout"}};
    static const fastmp_argspec joinable_put_spec = {
        "JoinableQueue.put",
        FASTMP_ARGS_PY,
        3,
        1,
        {"obj", "block", "timeout"}};
    /* The stdlib's JoinableQueue overrides put(): its errors name it.
     * Looked at only when the call is not plain positional. */
    const fastmp_argspec *spec = &put_spec;
    if ((kwnames != NULL || nargs < 1 || nargs > 3) && q->h->joinable) {
        spec = &joinable_put_spec;
    }
    PyObject *a[3];
    if (fastmp_parse_args(spec, args, nargs, kwnames, a) < 0) {
        return NULL;
    }
    int block = 1;
    if (a[1] != NULL && (block = PyObject_IsTrue(a[1])) < 0) {
        return NULL;
    }
    return ring_put_impl(q, a[0], block, a[2]);
}

static PyObject *
ring_get(RingObject *q, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    static const fastmp_argspec spec = {
        "Queue.get", FASTMP_ARGS_PY, 2, 0, {"block", "timeout"}};
    PyObject *a[2];
    if (nargs == 0 && kwnames == NULL) {
        return ring_get_impl(q, 1, NULL);
    }
    if (fastmp_parse_args(&spec, args, nargs, kwnames, a) < 0) {
        return NULL;
    }
    int block = 1;
    if (a[0] != NULL && (block = PyObject_IsTrue(a[0])) < 0) {
        return NULL;
    }
    return ring_get_impl(q, block, a[1]);
}

/* put_nowait(obj) and SimpleQueue.put(obj): the stdlib's are Python
 * methods, so obj may be passed by keyword. */
static PyObject *
ring_put_nowait(RingObject *q, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    static const fastmp_argspec spec = {
        "Queue.put_nowait", FASTMP_ARGS_PY, 1, 1, {"obj"}};
    PyObject *obj;
    if (fastmp_parse_args(&spec, args, nargs, kwnames, &obj) < 0) {
        return NULL;
    }
    return ring_put_impl(q, obj, 0, NULL);
}

static PyObject *
ring_get_nowait(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    return ring_get_impl(q, 0, NULL);
}

/* _put_pickled(data, block, timeout): put an item pickled by the caller
 * (bytes), as put() does (a manager queue, fastmp/_manager_sync.py, which
 * looks at the pickle before it is put). */
static PyObject *
ring_put_pickled_method(RingObject *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "_put_pickled(data: bytes, block, timeout)");
        return NULL;
    }
    int block = PyObject_IsTrue(args[1]);
    if (block < 0 || ring_check_open(q) < 0
        || ring_check_timeout(args[2]) < 0) {
        return NULL;
    }
    q->used = 1;
    return ring_put_pickled(q, Py_NewRef(args[0]), block, args[2]);
}

/* SimpleQueue: put(obj) / get(), no closed check (the stdlib's SimpleQueue
 * raises OSError from its closed pipe; ours raises the same type). */
static PyObject *
ring_simple_put(RingObject *q, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    static const fastmp_argspec spec = {
        "SimpleQueue.put", FASTMP_ARGS_PY, 1, 1, {"obj"}};
    PyObject *obj;
    if (fastmp_parse_args(&spec, args, nargs, kwnames, &obj) < 0) {
        return NULL;
    }
    if (q->closed) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    return ring_put_impl(q, obj, 1, NULL);
}

static PyObject *
ring_simple_get(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    if (q->closed) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    return ring_get_impl(q, 1, NULL);
}

/* ---- inspection -------------------------------------------------- */

static int
ring_snapshot(RingObject *q, ring_slot *out)
{
    if (ring_lock(q->h) < 0) {
        return -1;
    }
    *out = *slot_cur(q->h);
    ring_unlock(q->h);
    return 0;
}

static PyObject *
ring_qsize(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    ring_slot s;
    if (ring_snapshot(q, &s) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(s.nitems);
}

static PyObject *
ring_empty(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    ring_slot s;
    if (q->reader_closed) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    if (ring_snapshot(q, &s) < 0) {
        return NULL;
    }
    return PyBool_FromLong(s.nitems == 0);
}

static PyObject *
ring_full(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    ring_slot s;
    if (ring_snapshot(q, &s) < 0) {
        return NULL;
    }
    return PyBool_FromLong(q->h->maxsize != 0 && s.nitems >= q->h->maxsize);
}

/* Queue.close(): later put/get raise ValueError in this process. */
static PyObject *
ring_close(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    q->closed = 1;
    Py_RETURN_NONE;
}

/* Queue.join_thread(): the stdlib's feeder thread, started by a put in
 * this process, closes the reader when it handles close()'s sentinel;
 * once join_thread() has waited for it, empty() raises OSError.  Before
 * that, empty() still answers. */
static PyObject *
ring_finish_close(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    if (q->closed && q->used) {
        q->reader_closed = 1;
    }
    Py_RETURN_NONE;
}

/* SimpleQueue.close(): both pipe ends close at once in the stdlib. */
static PyObject *
ring_close_all(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    q->closed = 1;
    q->reader_closed = 1;
    Py_RETURN_NONE;
}

/* ---- JoinableQueue ---------------------------------------------- */

static PyObject *
ring_task_done(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    ring_header *h = q->h;
    if (ring_lock(h) < 0) {
        return NULL;
    }
    ring_slot *cs = slot_cur(h);
    if (cs->unfinished == 0) {
        ring_unlock(h);
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    ring_slot *s = slot_next(h);
    s->unfinished--;
    int zero = s->unfinished == 0;
    slot_publish(h);
    if (zero) {
        __atomic_add_fetch(&h->done_seq, 1, __ATOMIC_SEQ_CST);
    }
    ring_unlock(h);
    if (zero && __atomic_load_n(&h->joiners, __ATOMIC_SEQ_CST) != 0) {
        (void)fastmp_platform_futex_wake(&h->done_seq, INT32_MAX);
    }
    Py_RETURN_NONE;
}

static PyObject *
ring_join(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    ring_header *h = q->h;
    fastmp_deadline d;
    d.forever = 1;
    for (;;) {
        if (ring_lock(h) < 0) {
            return NULL;
        }
        if (slot_cur(h)->unfinished == 0) {
            ring_unlock(h);
            Py_RETURN_NONE;
        }
        uint32_t seen = __atomic_load_n(&h->done_seq, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&h->joiners, 1, __ATOMIC_SEQ_CST);
        ring_unlock(h);
        if (ring_sleep(&h->done_seq, seen, &h->joiners, &d, &q->join_spin)
            < 0) {
            return NULL;
        }
    }
}

/* For tests: take the queue lock and keep it (a process that then dies
 * plays a holder killed inside a critical section). */
static PyObject *
ring_debug_hold_lock(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    if (ring_lock(q->h) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* For tests: the pid in the lock word (0: free), read without taking
 * the lock. */
static PyObject *
ring_lock_owner(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    uint64_t v = __atomic_load_n(&q->h->lock, __ATOMIC_ACQUIRE);
    return PyLong_FromUnsignedLong(fastmp_owner_pid(v));
}

/* A get of this process waiting for an item (or the next one to wait)
 * returns Empty now: the flag is this process's own, and the bump of
 * put_seq only wakes the sleepers, which look again (a sleeper in another
 * process finds nothing and sleeps on).  No lock is taken: a stopped
 * process may hold it (a Pool's terminate() wakes its helper thread). */
static PyObject *
ring_interrupt_get(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    __atomic_store_n(&q->interrupted, getpid(), __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&q->h->put_seq, 1, __ATOMIC_SEQ_CST);
    (void)fastmp_platform_futex_wake(&q->h->put_seq, INT_MAX);
    Py_RETURN_NONE;
}

/* ---- pickling support -------------------------------------------- */

static PyObject *
ring_fileno(RingObject *q, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(q->fd);
}

static PyObject *
ring_get_maxsize(RingObject *q, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(q->h->maxsize);
}

static PyObject *
ring_get_closed(RingObject *q, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(q->closed);
}

static PyObject *
ring_get_unfinished(RingObject *q, void *Py_UNUSED(closure))
{
    ring_slot s;
    if (ring_snapshot(q, &s) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(s.unfinished);
}

static PyMethodDef ring_methods[] = {
    {"put", (PyCFunction)(void (*)(void))ring_put,
     METH_FASTCALL | METH_KEYWORDS,
     "put($self, /, obj, block=True, timeout=None)\n--\n\n"
     "Put obj into the queue.  The item is pickled here and is in shared "
     "memory when this returns."},
    {"get", (PyCFunction)(void (*)(void))ring_get,
     METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, block=True, timeout=None)\n--\n\n"
     "Remove and return an item from the queue."},
    {"put_nowait", (PyCFunction)(void (*)(void))ring_put_nowait,
     METH_FASTCALL | METH_KEYWORDS,
     "put_nowait($self, /, obj)\n--\n\nput(obj, False)."},
    {"_put_pickled", (PyCFunction)(void (*)(void))ring_put_pickled_method,
     METH_FASTCALL,
     "_put_pickled($self, data, block, timeout, /)\n--\n\nPut an item "
     "already pickled."},
    {"get_nowait", (PyCFunction)ring_get_nowait, METH_NOARGS,
     "get_nowait($self, /)\n--\n\nget(False)."},
    {"qsize", (PyCFunction)ring_qsize, METH_NOARGS,
     "qsize($self, /)\n--\n\nThe exact number of items in the queue."},
    {"empty", (PyCFunction)ring_empty, METH_NOARGS,
     "empty($self, /)\n--\n\nTrue if the queue is empty."},
    {"full", (PyCFunction)ring_full, METH_NOARGS,
     "full($self, /)\n--\n\nTrue if the queue holds maxsize items."},
    {"_close", (PyCFunction)ring_close, METH_NOARGS,
     "_close($self, /)\n--\n\nMark closed in this process."},
    {"_close_all", (PyCFunction)ring_close_all, METH_NOARGS,
     "_close_all($self, /)\n--\n\nSimpleQueue.close."},
    {"_simple_put", (PyCFunction)(void (*)(void))ring_simple_put,
     METH_FASTCALL | METH_KEYWORDS,
     "_simple_put($self, /, obj)\n--\n\nSimpleQueue.put."},
    {"_simple_get", (PyCFunction)ring_simple_get, METH_NOARGS,
     "_simple_get($self, /)\n--\n\nSimpleQueue.get."},
    {"_task_done", (PyCFunction)ring_task_done, METH_NOARGS,
     "_task_done($self, /)\n--\n\nJoinableQueue.task_done."},
    {"_join", (PyCFunction)ring_join, METH_NOARGS,
     "_join($self, /)\n--\n\nJoinableQueue.join."},
    {"_debug_hold_lock", (PyCFunction)ring_debug_hold_lock, METH_NOARGS,
     "_debug_hold_lock($self, /)\n--\n\nTake the queue lock and keep it "
     "(tests only)."},
    {"_lock_owner", (PyCFunction)ring_lock_owner, METH_NOARGS,
     "_lock_owner($self, /)\n--\n\nThe pid holding the queue lock, 0 "
     "when free (read without taking it; tests only)."},
    {"_finish_close", (PyCFunction)ring_finish_close, METH_NOARGS,
     "_finish_close($self, /)\n--\n\nQueue.join_thread: a closed queue "
     "this process used has no reading side any more."},
    {"_interrupt_get", (PyCFunction)ring_interrupt_get, METH_NOARGS,
     "_interrupt_get($self, /)\n--\n\nA get waiting in this process (or "
     "the next to wait) raises queue.Empty now; takes no lock."},
    {"_fileno", (PyCFunction)ring_fileno, METH_NOARGS,
     "_fileno($self, /)\n--\n\nThe queue's shared-memory file, for "
     "pickling (the fd is passed to the child)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ring_getset[] = {
    {"_maxsize", (getter)ring_get_maxsize, NULL, "maxsize (0: none)", NULL},
    {"_closed", (getter)ring_get_closed, NULL, "closed in this process", NULL},
    {"_unfinished_tasks_count", (getter)ring_get_unfinished, NULL,
     "JoinableQueue: unfinished tasks", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef ring_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(RingObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot ring_slots[] = {
    {Py_tp_new, ring_new},
    {Py_tp_dealloc, ring_dealloc},
    {Py_tp_methods, ring_methods},
    {Py_tp_getset, ring_getset},
    {Py_tp_members, ring_members},
    {Py_tp_doc,
     "_Ring(maxsize=0, joinable=False, attach=None, init=False)\n--\n\n"
     "A queue's ring buffer in shared memory (base of "
     "fastmp.queues.Queue).  attach: the fd of an existing ring's file, or "
     "with init, of a new empty file to set up as one."},
    {0, NULL},
};

static PyType_Spec ring_spec = {
    .name = "fastmp._fastmp._Ring",
    .basicsize = sizeof(RingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = ring_slots,
};

/* ---- module level ------------------------------------------------ */

static PyMethodDef ring_functions[] = {
    {NULL, NULL, 0, NULL},
};

int
fastmp_ring_exec(PyObject *m, fastmp_state *st)
{
    if (PyModule_AddFunctions(m, ring_functions) < 0) {
        return -1;
    }
    st->ring.RingType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &ring_spec, NULL);
    if (st->ring.RingType == NULL) {
        return -1;
    }
    if (PyModule_AddType(m, st->ring.RingType) < 0) {
        return -1;
    }
    return 0;
}

int
fastmp_ring_traverse(fastmp_state *st, visitproc visit, void *arg)
{
    fastmp_ring_state *rs = &st->ring;
    Py_VISIT(rs->RingType);
    Py_VISIT(rs->Empty);
    Py_VISIT(rs->Full);
    return 0;
}

void
fastmp_ring_clear(fastmp_state *st)
{
    fastmp_ring_state *rs = &st->ring;
    Py_CLEAR(rs->RingType);
    Py_CLEAR(rs->Empty);
    Py_CLEAR(rs->Full);
}
