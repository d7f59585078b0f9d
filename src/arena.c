/*
 * arena.c -- process-shared memory for fastmp's objects.
 *
 * A segment is a memfd file (see platform_linux.c), mapped MAP_SHARED once
 * per process and represented by a Segment object.  Small and medium
 * blocks (up to FASTMP_MAX_CLASS_BYTES) come from power-of-two size classes
 * carved from shared "pool" segments of POOL_SEGMENT_BYTES; larger blocks
 * get a segment of their own.  Segments are reserved large and sparse: a
 * page costs memory only once touched, and freed large blocks give their
 * pages back with FALLOC_FL_PUNCH_HOLE.
 *
 * Segment layout (all offsets from the segment base):
 *
 *   [0, 4096)   seg_header (below)
 *   [4096, ..)  blocks: a 16-byte block_header, then the user data
 *
 * Children get segments by inheritance (fork) or by fd passing when an
 * object is pickled for a spawn/forkserver child (fastmp/_arena.py).
 */
#ifndef _GNU_SOURCE
#  define _GNU_SOURCE 1
#endif
#include "fastmp.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEG_MAGIC UINT64_C(0x66617374706d7365)     /* "fastmpse" */
#define BLOCK_MAGIC UINT32_C(0x666d626b)           /* "fmbk" */
#define HEADER_BYTES 4096
#define MIN_CLASS_SHIFT 5                          /* 32-byte blocks */
#define MAX_CLASS_SHIFT 24                         /* 16 MiB blocks */
#define NCLASSES (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1)
#define CLS_LARGE 0xffffU
#define POOL_SEGMENT_BYTES (UINT64_C(1) << 30)     /* 1 GiB, sparse */
#define PUNCH_MIN_BYTES (64 * 1024)

/* The shared header at the start of every segment.
 *
 *   magic, size, large: written once by the creating process before the
 *       segment is visible to anyone else; read-only afterwards.
 *   lock: 0 when free, else the pid of the process inside the allocator's
 *       critical section (CAS).  lock_start: that holder's start token,
 *       written by the holder right after its CAS (a waiter trusts it only
 *       when lock still holds the same pid).
 *   bump, free_head[], nlive: written only under `lock`.
 *
 * A process that dies holding `lock` is detected by the next process that
 * spins on it (pid + start time check) and the lock is taken over.  The
 * critical sections are single stores each (pop: head = next; push:
 * next = head, head = block; bump += n), so a death between two of them
 * leaks at most one block and never hands a block out twice. */
typedef struct {
    uint64_t magic;
    uint64_t size;
    uint32_t lock;
    uint32_t large;
    uint64_t lock_start;
    uint64_t bump;
    uint64_t nlive;
    uint64_t free_head[NCLASSES];
} seg_header;

/* Precedes every block's data.
 *
 *   magic, cls: written by the allocating process under the segment lock
 *       before the block is handed out; read-only while the block lives.
 *   refcnt: atomic; one per process-local handle (fastmp_block) anywhere.
 *   next: the free-list link, valid only while the block is free (under
 *       the segment lock). */
typedef struct {
    uint32_t magic;
    uint16_t cls;
    uint16_t pad;
    uint32_t refcnt;
    uint32_t next_lo;          /* next free block's data offset, split so */
} block_header;                /* the header stays 16 bytes */

_Static_assert(sizeof(block_header) == 16, "block header must be 16 bytes");
_Static_assert(sizeof(seg_header) <= HEADER_BYTES, "segment header size");

struct fastmp_segment_object {
    PyObject_HEAD
    int fd;
    char *base;
    uint64_t size;
    dev_t dev;
    ino_t ino;
    fastmp_segment_object *reg_prev, *reg_next;   /* live segments */
};

/* Process-local bookkeeping (never shared): the live segments of this
 * process, and the blocks this process holds references on. */
static fastmp_segment_object *registry = NULL;
static fastmp_block *tracked = NULL;

/* Free-list links are data offsets; large pool segments never exceed
 * 2^32 * 16 bytes, so links are stored as offset / 16 in 32 bits. */
#define LINK_SHIFT 4

static inline seg_header *
hdr(fastmp_segment_object *s)
{
    return (seg_header *)s->base;
}

static inline block_header *
bhdr(fastmp_segment_object *s, uint64_t data_off)
{
    return (block_header *)(s->base + data_off - sizeof(block_header));
}

/* ---- the segment allocator lock ---------------------------------- */

static void
seg_lock(seg_header *h)
{
    uint32_t me = fastmp_platform_getpid();
    unsigned spins = 0;
    for (;;) {
        uint32_t expected = 0;
        if (__atomic_compare_exchange_n(&h->lock, &expected, me, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            __atomic_store_n(&h->lock_start, fastmp_platform_self_start(),
                             __ATOMIC_RELEASE);
            return;
        }
        if (++spins % 256 == 0) {
            /* The holder may have died inside the critical section. */
            uint64_t start = __atomic_load_n(&h->lock_start,
                                             __ATOMIC_ACQUIRE);
            uint32_t again = __atomic_load_n(&h->lock, __ATOMIC_ACQUIRE);
            if (again == expected
                && !fastmp_platform_pid_alive(expected,
                                              again == expected ? start : 0)
                && __atomic_compare_exchange_n(&h->lock, &expected, me, 0,
                                               __ATOMIC_ACQUIRE,
                                               __ATOMIC_RELAXED)) {
                __atomic_store_n(&h->lock_start,
                                 fastmp_platform_self_start(),
                                 __ATOMIC_RELEASE);
                return;
            }
        }
        sched_yield();
    }
}

static void
seg_unlock(seg_header *h)
{
    __atomic_store_n(&h->lock, 0, __ATOMIC_RELEASE);
}

/* ---- Segment objects --------------------------------------------- */

static void
registry_add(fastmp_segment_object *s)
{
    s->reg_prev = NULL;
    s->reg_next = registry;
    if (registry != NULL) {
        registry->reg_prev = s;
    }
    registry = s;
}

static void
registry_remove(fastmp_segment_object *s)
{
    if (s->reg_prev != NULL) {
        s->reg_prev->reg_next = s->reg_next;
    }
    else if (registry == s) {
        registry = s->reg_next;
    }
    if (s->reg_next != NULL) {
        s->reg_next->reg_prev = s->reg_prev;
    }
    s->reg_prev = s->reg_next = NULL;
}

/* Wrap a mapped fd in a new Segment object (steals fd on success). */
static fastmp_segment_object *
segment_new(PyTypeObject *type, int fd, uint64_t size)
{
    struct stat stb;
    if (fstat(fd, &stb) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    void *base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
                      MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    fastmp_segment_object *s = PyObject_New(fastmp_segment_object, type);
    if (s == NULL) {
        munmap(base, (size_t)size);
        return NULL;
    }
    s->fd = fd;
    s->base = base;
    s->size = size;
    s->dev = stb.st_dev;
    s->ino = stb.st_ino;
    registry_add(s);
    return s;
}

/* Create a fresh segment of `size` bytes (HEADER_BYTES included). */
static fastmp_segment_object *
segment_create(fastmp_state *st, uint64_t size, int large)
{
    int fd = fastmp_platform_shm_anon("fastmp", size);
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    fastmp_segment_object *s = segment_new(st->SegmentType, fd, size);
    if (s == NULL) {
        close(fd);
        return NULL;
    }
    seg_header *h = hdr(s);
    h->size = size;
    h->large = (uint32_t)large;
    h->bump = HEADER_BYTES;
    __atomic_store_n(&h->magic, SEG_MAGIC, __ATOMIC_RELEASE);
    return s;
}

static void
segment_dealloc(fastmp_segment_object *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    registry_remove(s);
    if (s->base != NULL) {
        munmap(s->base, (size_t)s->size);
        s->base = NULL;
    }
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    PyObject_Free(s);
    Py_DECREF(tp);
}

static PyObject *
segment_fileno(fastmp_segment_object *s, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(s->fd);
}

static PyObject *
segment_get_size(fastmp_segment_object *s, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(s->size);
}

static PyObject *
segment_repr(fastmp_segment_object *s)
{
    return PyUnicode_FromFormat("<fastmp Segment fd=%d size=%llu>", s->fd,
                                (unsigned long long)s->size);
}

static PyMethodDef segment_methods[] = {
    {"fileno", (PyCFunction)segment_fileno, METH_NOARGS,
     "fileno($self, /)\n--\n\nThe segment's file descriptor."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef segment_getset[] = {
    {"size", (getter)segment_get_size, NULL, "Mapped size in bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot segment_slots[] = {
    {Py_tp_dealloc, segment_dealloc},
    {Py_tp_repr, segment_repr},
    {Py_tp_methods, segment_methods},
    {Py_tp_getset, segment_getset},
    {Py_tp_doc, "A process-shared memory segment of fastmp's arena.\n\n"
                "Picklable only while a child process is being started "
                "(its file descriptor is passed to the child)."},
    {0, NULL},
};

static PyType_Spec segment_spec = {
    .name = "fastmp._fastmp.Segment",
    .basicsize = sizeof(fastmp_segment_object),
    .flags = Py_TPFLAGS_DEFAULT | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = segment_slots,
};

int
fastmp_segment_check(PyObject *o)
{
    fastmp_state *st = fastmp_get_state();
    return st != NULL && Py_IS_TYPE(o, st->SegmentType);
}

/* ---- blocks ------------------------------------------------------- */

static void
track(fastmp_block *b)
{
    b->prev = NULL;
    b->next = tracked;
    if (tracked != NULL) {
        tracked->prev = b;
    }
    tracked = b;
}

static void
untrack(fastmp_block *b)
{
    if (b->prev != NULL) {
        b->prev->next = b->next;
    }
    else if (tracked == b) {
        tracked = b->next;
    }
    if (b->next != NULL) {
        b->next->prev = b->prev;
    }
    b->prev = b->next = NULL;
}

static int
class_for(size_t total)
{
    int shift = MIN_CLASS_SHIFT;
    while (shift <= MAX_CLASS_SHIFT && ((size_t)1 << shift) < total) {
        shift++;
    }
    return shift <= MAX_CLASS_SHIFT ? shift - MIN_CLASS_SHIFT : -1;
}

/* Pop or carve a block of class `cls` from pool segment s.  Returns the
 * data offset, or 0 when the segment is full. */
static uint64_t
pool_take(fastmp_segment_object *s, int cls)
{
    seg_header *h = hdr(s);
    uint64_t total = (uint64_t)1 << (cls + MIN_CLASS_SHIFT);
    uint64_t off = 0;
    seg_lock(h);
    if (h->free_head[cls] != 0) {
        off = h->free_head[cls];
        block_header *bh = bhdr(s, off);
        h->free_head[cls] = (uint64_t)bh->next_lo << LINK_SHIFT;
    }
    else if (h->bump + total <= h->size) {
        off = h->bump + sizeof(block_header);
        h->bump += total;
    }
    if (off != 0) {
        block_header *bh = bhdr(s, off);
        bh->magic = BLOCK_MAGIC;
        bh->cls = (uint16_t)cls;
        bh->next_lo = 0;
        __atomic_store_n(&bh->refcnt, 1, __ATOMIC_RELEASE);
        h->nlive++;
    }
    seg_unlock(h);
    return off;
}

static void
pool_give_back(fastmp_segment_object *s, uint64_t off)
{
    seg_header *h = hdr(s);
    block_header *bh = bhdr(s, off);
    int cls = bh->cls;
    uint64_t total = (uint64_t)1 << (cls + MIN_CLASS_SHIFT);
    if (total >= PUNCH_MIN_BYTES) {
        /* Return the pages of a big freed block to the system; they read
         * back as zeros.  Only whole pages inside the data are punched. */
        uint64_t start = (off + 4095) & ~UINT64_C(4095);
        uint64_t end = (off - sizeof(block_header) + total) & ~UINT64_C(4095);
        if (end > start) {
            (void)fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            (off_t)start, (off_t)(end - start));
        }
    }
    seg_lock(h);
    bh->next_lo = (uint32_t)(h->free_head[cls] >> LINK_SHIFT);
    h->free_head[cls] = off;
    h->nlive--;
    seg_unlock(h);
}

static int
fill_block(fastmp_block *b, fastmp_segment_object *s, uint64_t off,
           size_t size)
{
    b->seg = (fastmp_segment_object *)Py_NewRef((PyObject *)s);
    b->offset = off;
    b->ptr = s->base + off;
    b->size = size;
    b->released = 0;
    track(b);
    return 0;
}

int
fastmp_block_alloc(size_t size, fastmp_block *b)
{
    fastmp_state *st = fastmp_get_state();
    if (st == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fastmp._fastmp not initialised");
        return -1;
    }
    if (size > (size_t)PY_SSIZE_T_MAX / 2) {
        PyErr_NoMemory();
        return -1;
    }
    size_t total = size + sizeof(block_header);
    total = (total + FASTMP_BLOCK_ALIGN - 1) & ~(size_t)(FASTMP_BLOCK_ALIGN - 1);
    int cls = class_for(total);
    if (cls < 0) {
        /* A large block: a segment of its own. */
        uint64_t segsize = (HEADER_BYTES + total + 4095) & ~UINT64_C(4095);
        fastmp_segment_object *s = segment_create(st, segsize, 1);
        if (s == NULL) {
            return -1;
        }
        uint64_t off = HEADER_BYTES + sizeof(block_header);
        block_header *bh = bhdr(s, off);
        bh->magic = BLOCK_MAGIC;
        bh->cls = CLS_LARGE;
        bh->refcnt = 1;
        hdr(s)->bump = segsize;
        hdr(s)->nlive = 1;
        fill_block(b, s, off, size);
        Py_DECREF(s);
        return 0;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        fastmp_segment_object *s = (fastmp_segment_object *)st->alloc_segment;
        if (s == NULL) {
            s = segment_create(st, POOL_SEGMENT_BYTES, 0);
            if (s == NULL) {
                return -1;
            }
            st->alloc_segment = (PyObject *)s;
        }
        uint64_t off = pool_take(s, cls);
        if (off != 0) {
            /* Fresh bump memory is zero; recycled blocks are not. */
            memset(s->base + off, 0, size);
            return fill_block(b, s, off, size);
        }
        /* Full: start a new pool segment; the old one lives on as long
         * as blocks in it do. */
        Py_CLEAR(st->alloc_segment);
    }
    PyErr_NoMemory();
    return -1;
}

int
fastmp_block_attach(PyObject *seg, uint64_t offset, size_t size,
                    fastmp_block *b)
{
    if (!fastmp_segment_check(seg)) {
        PyErr_SetString(PyExc_TypeError, "expected a fastmp Segment");
        return -1;
    }
    fastmp_segment_object *s = (fastmp_segment_object *)seg;
    if (offset < HEADER_BYTES + sizeof(block_header) || offset >= s->size
        || size > s->size - offset || offset % FASTMP_BLOCK_ALIGN != 0) {
        PyErr_SetString(PyExc_ValueError, "invalid shared block reference");
        return -1;
    }
    block_header *bh = bhdr(s, offset);
    if (bh->magic != BLOCK_MAGIC) {
        PyErr_SetString(PyExc_ValueError, "invalid shared block reference");
        return -1;
    }
    /* Only take a reference while someone still holds one: a block whose
     * count reached zero may already be on a free list. */
    uint32_t n = __atomic_load_n(&bh->refcnt, __ATOMIC_ACQUIRE);
    do {
        if (n == 0) {
            PyErr_SetString(PyExc_ValueError,
                            "shared object was released by all processes");
            return -1;
        }
    } while (!__atomic_compare_exchange_n(&bh->refcnt, &n, n + 1, 1,
                                          __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));
    return fill_block(b, s, offset, size);
}

void
fastmp_block_release(fastmp_block *b)
{
    if (b->seg == NULL) {
        return;
    }
    untrack(b);
    fastmp_segment_object *s = b->seg;
    if (!b->released) {
        b->released = 1;
        block_header *bh = bhdr(s, b->offset);
        if (__atomic_sub_fetch(&bh->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
            if (bh->cls == CLS_LARGE) {
                /* Nobody uses it any more: drop the pages now, the
                 * segment itself goes with the last mapping. */
                (void)fallocate(s->fd,
                                FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                HEADER_BYTES, (off_t)(s->size - HEADER_BYTES));
            }
            else {
                pool_give_back(s, b->offset);
            }
        }
    }
    b->seg = NULL;
    b->ptr = NULL;
    Py_DECREF(s);
}

PyObject *
fastmp_block_segment(const fastmp_block *b)
{
    if (b->seg == NULL) {
        PyErr_SetString(PyExc_ValueError, "shared block already released");
        return NULL;
    }
    return Py_NewRef((PyObject *)b->seg);
}

/* ---- module functions -------------------------------------------- */

static PyObject *
arena_segment_attach(PyObject *module, PyObject *args)
{
    int fd;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "iK:_segment_attach", &fd, &size)) {
        return NULL;
    }
    struct stat stb;
    if (fstat(fd, &stb) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (fastmp_segment_object *s = registry; s != NULL; s = s->reg_next) {
        if (s->dev == stb.st_dev && s->ino == stb.st_ino) {
            /* Already mapped here (e.g. two objects in one pickle stream
             * were not memoised together): keep one mapping. */
            if (s->fd != fd) {
                close(fd);
            }
            return Py_NewRef((PyObject *)s);
        }
    }
    if ((uint64_t)stb.st_size < size || size < HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "segment size mismatch");
        return NULL;
    }
    fastmp_state *st = (fastmp_state *)PyModule_GetState(module);
    fastmp_segment_object *s = segment_new(st->SegmentType, fd, size);
    if (s == NULL) {
        return NULL;
    }
    if (__atomic_load_n(&hdr(s)->magic, __ATOMIC_ACQUIRE) != SEG_MAGIC) {
        s->fd = -1;             /* the caller still owns fd on error */
        Py_DECREF(s);
        PyErr_SetString(PyExc_ValueError, "not a fastmp segment");
        return NULL;
    }
    return (PyObject *)s;
}

static PyObject *
arena_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    FASTMP_UNUSED(module);
    fastmp_platform_after_fork_child();
    /* Every object this process inherited is now referenced from here
     * too. */
    for (fastmp_block *b = tracked; b != NULL; b = b->next) {
        if (!b->released) {
            __atomic_add_fetch(&bhdr(b->seg, b->offset)->refcnt, 1,
                               __ATOMIC_ACQ_REL);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
arena_release_all(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    FASTMP_UNUSED(module);
    /* At the end of a child process: drop this process's references so
     * blocks it inherited can be reused by the processes that remain.
     * Handles stay valid (memory stays mapped) until the process exits. */
    for (fastmp_block *b = tracked; b != NULL; b = b->next) {
        if (!b->released) {
            b->released = 1;
            block_header *bh = bhdr(b->seg, b->offset);
            if (__atomic_sub_fetch(&bh->refcnt, 1, __ATOMIC_ACQ_REL) == 0
                && bh->cls != CLS_LARGE) {
                pool_give_back(b->seg, b->offset);
            }
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
arena_stats(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    FASTMP_UNUSED(module);
    Py_ssize_t nseg = 0, nblocks = 0;
    for (fastmp_segment_object *s = registry; s != NULL; s = s->reg_next) {
        nseg++;
    }
    for (fastmp_block *b = tracked; b != NULL; b = b->next) {
        nblocks++;
    }
    return Py_BuildValue("{snsn}", "segments", nseg, "blocks", nblocks);
}

PyMethodDef fastmp_arena_functions[] = {
    {"_segment_attach", arena_segment_attach, METH_VARARGS,
     "_segment_attach(fd, size, /)\n--\n\n"
     "Map a segment received from a parent (takes ownership of fd)."},
    {"_after_fork_child", arena_after_fork_child, METH_NOARGS,
     "_after_fork_child($module, /)\n--\n\n"
     "Run in a fork child: take references on inherited objects."},
    {"_release_all", arena_release_all, METH_NOARGS,
     "_release_all($module, /)\n--\n\n"
     "Run at a child's exit: drop this process's shared references."},
    {"_arena_stats", arena_stats, METH_NOARGS,
     "_arena_stats($module, /)\n--\n\n"
     "Counts of this process's mapped segments and tracked blocks."},
    {NULL, NULL, 0, NULL},
};

int
fastmp_arena_exec(PyObject *m, fastmp_state *st)
{
    st->SegmentType = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &segment_spec, NULL);
    if (st->SegmentType == NULL) {
        return -1;
    }
    if (PyModule_AddType(m, st->SegmentType) < 0) {
        return -1;
    }
    return 0;
}
