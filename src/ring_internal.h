/*
 * ring_internal.h -- what ring.c (the Queue ring: put, get, the Python
 * type) and ring_mem.c (the file, the mapping, growing) share: the layout
 * of a queue's shared header and the process-local object.  Not for
 * other areas.
 */
#ifndef FASTMP_RING_INTERNAL_H
#define FASTMP_RING_INTERNAL_H

#include "fastmp.h"

#define RING_PAGE 4096
#define RING_MIN_CAP (UINT64_C(64) << 10)       /* initial ring and file */
#define RING_KEEP (UINT64_C(4) << 20)           /* kept when drained */
#define RING_MAX_CAP (UINT64_C(1) << 62)        /* arithmetic bound */
#define RING_MAGIC UINT64_C(0x666d7071726e6732) /* "fmpqrng2" */

/* The state the queue lock protects (see ring_header.slot). */
typedef struct {
    uint64_t head;       /* offset in [0, cap) of the oldest record */
    uint64_t tail;       /* offset in [0, cap) after the newest one */
    uint64_t used;       /* bytes of records from head to tail */
    uint64_t cap;        /* ring size in use: a power of two */
    uint64_t nitems;     /* records between head and tail */
    uint64_t unfinished; /* JoinableQueue: puts minus task_done()s */
} ring_slot;

/* The shared header, the first page of the queue's file.
 *
 *   magic, maxsize, joinable: written once by the creator (ring_new,
 *       `magic` last, with release) before the queue is visible to any
 *       other process; read-only.  An attacher checks `magic`.
 *   lock: the owner lock (fastmp.h, "owner"): 0 when free, else the
 *       holder's pid and start token from the CAS that took it.  A waiter
 *       that finds the holder dead takes the lock over; the dead holder's
 *       half-done work is simply not published (below).
 *   data_size: bytes of ring data the file holds after the header page,
 *       written only under `lock`.  Invariant: published cap <= data_size
 *       <= the file's real size minus a page.  A grower sets the file size
 *       first, then data_size; a shrinker publishes the smaller cap, then
 *       lowers data_size, then the file.  A holder dying between two of
 *       these steps leaves the invariant true (at worst a file larger than
 *       data_size, cut back at the next shrink).
 *   slot[2], cur: written only under `lock`: the holder fills
 *       slot[!cur] and publishes it with one release store of `cur`.
 *       A holder that dies before that store leaves slot[cur] intact.
 *   put_seq, get_seq, done_seq: futex words, bumped atomically after a
 *       put, a get, and when `unfinished` reaches 0.  A process that dies
 *       before its bump delays sleepers by at most one wait slice.
 *   getters, putters, joiners: atomic counts of sleepers, so that put/get
 *       make no wake-up syscall when nobody sleeps.  A process killed while
 *       asleep leaves its count raised: only extra wake-ups follow.
 *
 * The data after the header page: records (an 8-byte length, the pickle,
 * padding to 8) in [head, tail) of slot[cur], wrapping at `cap`.  Written
 * only under `lock` and outside the published [head, tail) (a putter's new
 * record, a grower's copy above the old ring), so a process dying there
 * leaves bytes nobody reads.  Each process remaps its view to `data_size`
 * before touching the data (ring_sync). */
typedef struct {
    uint64_t magic;
    uint64_t maxsize;
    uint64_t lock;
    uint64_t data_size;
    uint32_t joinable;
    uint32_t cur;
    uint32_t put_seq;
    uint32_t get_seq;
    uint32_t done_seq;
    uint32_t getters;
    uint32_t putters;
    uint32_t joiners;
    ring_slot slot[2];
} ring_header;

_Static_assert(sizeof(ring_header) <= RING_PAGE, "ring header");
_Static_assert(offsetof(ring_header, lock) % 8 == 0, "owner lock alignment");

typedef struct {
    PyObject_HEAD
    int fd;               /* the queue's file (header page + data) */
    ring_header *h;       /* its first page, mapped once */
    char *data;           /* the data, mapped `mapped` bytes (or NULL) */
    uint64_t mapped;      /* follows h->data_size, under the lock */
    int closed;           /* process-local, as the stdlib's _closed */
    int used;             /* this process has put: join_thread() ends
                             reads */
    int reader_closed;    /* empty() raises OSError, as the stdlib's */
    pid_t interrupted;    /* the pid that called _interrupt_get(), until
                             a get of that process returned Empty (a fork
                             child's copy is not its own: ignored) */
    fastmp_spin get_spin; /* how long this process's waits lasted: */
    fastmp_spin put_spin; /* for an item, for room, for task_done */
    fastmp_spin join_spin;
    PyObject *weakreflist;
} RingObject;

/* ring_mem.c */

/* Raise for a failed resize/map of `bytes` bytes of queue memory, with
 * errno `err`: MemoryError when memory or a limit ran out, else OSError
 * (its errno subclass).  Always returns -1. */
int fastmp_ring_memory_error(int err, const char *what, uint64_t bytes);

/* Map (or remap) this process's data view to `size` bytes.  0, or -1
 * with errno set and the old view intact. */
int fastmp_ring_view(RingObject *q, uint64_t size);

/* Under the lock, after a smaller cap was published: cut the file and
 * this process's view back to `keep` bytes of data, freeing the pages
 * above.  Failures only leave more mapped than needed. */
void fastmp_ring_shrink(RingObject *q, uint64_t keep);

/* Under the lock, on the unpublished slot s: make room for `need` more
 * bytes by doubling the ring, growing the file and this process's view
 * first when they are too small.  The wrapped part [0, tail) moves up to
 * [cap, cap + tail), above the old ring, where nothing published lives,
 * so a process dying here leaves the published state intact.  Returns 0,
 * or -1 with MemoryError (or OSError) set when the memory is not there;
 * the queue is then unchanged. */
int fastmp_ring_grow(RingObject *q, ring_slot *s, uint64_t need);

#endif /* FASTMP_RING_INTERNAL_H */
