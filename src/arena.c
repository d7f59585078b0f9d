/*
 * arena.c -- process-shared memory for fastmp's objects.
 *
 * A segment is a memfd file (see platform_linux.c), mapped MAP_SHARED once
 * per process and represented by a Segment object.  Blocks up to 64 KiB
 * come from power-of-two size classes carved from shared "pool" segments
 * (the first 1 MiB, each next one twice the last, up to 64 MiB: address
 * space is reserved as it is needed); larger blocks get a segment of their
 * own.  Freed blocks of 64 KiB give their pages back with
 * FALLOC_FL_PUNCH_HOLE.
 *
 * Segment layout (all offsets from the segment base):
 *
 *   [0, 4096)   seg_header (below)
 *   [4096, ..)  blocks: a 16-byte block_header, then the user data
 *
 * Lifetime never depends on a process running its finalizers:
 *
 *   - a large block's segment is freed by the kernel with its last
 *     mapping, however the processes mapping it end;
 *   - a pool block records which processes hold it: a bit per holder slot
 *     (a slot names a process by pid and start token).  A process sets its
 *     bit when it first holds the block (creating it, inheriting it across
 *     fork, rebuilding it in a spawned child) and clears it when its last
 *     handle goes.  A process that ends without clearing its bits (exit
 *     with threads still running, os._exit, exec, a signal) keeps them
 *     until its slot is recovered: by the parent joining it, by any
 *     process needing a slot, and at most once a second by a process
 *     about to carve fresh memory from the segment.  Recovery clears the
 *     dead slot's bit in every block and frees the blocks nobody else
 *     holds.  So a block is never reused while a live process can use it,
 *     and never pinned by a dead one.
 *
 * Children get segments by inheritance (fork) or by fd passing when an
 * object is pickled for a spawn/forkserver child (fastmp/_arena.py).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "fastmp.h"

#include <errno.h>
#include <string.h>

#define SEG_MAGIC UINT64_C(0x66617374706d7332) /* "fastmps2" */
#define BLOCK_MAGIC UINT32_C(0x666d626b)       /* "fmbk" */
#define HEADER_BYTES 4096
#define MIN_CLASS_SHIFT 5  /* 32-byte blocks */
#define MAX_CLASS_SHIFT 16 /* 64 KiB blocks */
#define NCLASSES (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1)
#define CLS_LARGE 0xffffU
#define POOL_FIRST_BYTES (UINT64_C(1) << 20) /* 1 MiB, then doubling */
#define POOL_MAX_BYTES (UINT64_C(64) << 20)  /* up to 64 MiB */
#define PUNCH_MIN_BYTES (64 * 1024)
#define NHOLDERS 48 /* holder slots a segment */
#define REFS_OVF_SHIFT 48
#define REFS_OVF_ONE (UINT64_C(1) << REFS_OVF_SHIFT)
#define REFS_MASK (REFS_OVF_ONE - 1)
#define SLOT_RECOVERING FASTMP_OWNER_WAITERS /* in a holders[] value */
#define SWEEP_INTERVAL_NS (INT64_C(1000) * 1000 * 1000)
/* Carves from an empty free list per look at the clock for that sweep:
 * creating many objects in a row reads the clock once in so many. */
#define SWEEP_CLOCK_EVERY 16

/* The shared header at the start of every segment.
 *
 *   magic, size, large: written once by the creating process before the
 *       segment is visible to anyone else; read-only afterwards.
 *   lock: the owner lock (owner.c) of the allocator's critical sections.
 *   bump, free_head[], nlive: written only under `lock`.  The critical
 *       sections are single stores each (pop: head = next; push: the link,
 *       then head = block; carve: the block's header, then bump += n), so a
 *       holder that dies between two of them leaks at most one block and
 *       never hands a block out twice; the next process takes the lock over.
 *   holders[]: pool segments: the processes holding blocks of this segment
 *       (holder slot i is bit i of every block's `refs`).  0 free; an owner
 *       value (pid, token) claimed by that process with a CAS from 0; with
 *       SLOT_RECOVERING set, the process named is clearing the bits of a
 *       dead holder (CAS from the dead value), then stores 0.  A claimed
 *       slot of a dead process, or a recovery left half done, is
 *       recovered (again) by the next sweep; clearing a bit twice is
 *       harmless. */
typedef struct {
    uint64_t magic;
    uint64_t size;
    uint64_t lock;
    uint32_t large;
    uint32_t pad;
    uint64_t bump;
    uint64_t nlive;
    uint64_t free_head[NCLASSES];
    uint64_t holders[NHOLDERS];
} seg_header;

/* Precedes every block's data.
 *
 *   magic, cls: written by the allocating process under the segment lock
 *       before the block is handed out (and before `bump` covers it); kept
 *       while the block is free, so the blocks of a segment can be walked.
 *   refs: pool blocks: who holds the block.  Bits 0..47: holder slots (a
 *       process sets its slot's bit when it first holds a handle on the
 *       block, clears it when its last handle goes); bits 48..63: handles
 *       of processes that found no free slot (counted one by one, and the
 *       only references a death can leave behind).  Changed by atomic
 *       or/and/add/sub only; the operation that takes it to 0 frees the
 *       block.  A dead holder's bits are cleared by whoever recovers its
 *       slot.  Large blocks (a segment each) keep 0: the kernel frees the
 *       segment with its last mapping.
 *   While a pool block is free, its first 8 data bytes link it into its
 *   class's free list (under the segment lock).  A head that does not name
 *   a free block of the class empties the list (pool_take): its blocks
 *   leak rather than memory in use being handed out. */
typedef struct {
    uint32_t magic;
    uint16_t cls;
    uint16_t pad;
    uint64_t refs;
} block_header;

_Static_assert(sizeof(block_header) == 16, "block header must be 16 bytes");
_Static_assert(sizeof(seg_header) <= HEADER_BYTES, "segment header size");

struct fastmp_segment_object {
    PyObject_HEAD
    int fd;
    char *base;
    uint64_t size;
    uint64_t dev;
    uint64_t ino;
    uint32_t slot_pid;   /* my_slot is valid for this pid only */
    int my_slot;         /* holder slot of this process, -1: none */
    int64_t last_sweep;  /* fastmp_now_ns() of the last sweep */
    int carves_to_clock; /* carves from an empty free list left before
                            the next clock read (carve_wants_sweep) */
    fastmp_segment_object *reg_prev, *reg_next; /* live segments */
};

/* Process-local bookkeeping (never shared): the live segments of this
 * process, and the block handles it holds. */
static fastmp_segment_object *registry = NULL;
static fastmp_block *tracked = NULL;
static uint64_t next_pool_bytes = POOL_FIRST_BYTES;

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

/* The critical sections never release the GIL: finding this process as
 * the holder means a thread died there (or the word is corrupt).  Freeing
 * (from a deallocator) cannot fail, so it waits without looking at
 * signals; allocating can be interrupted (-1 with an exception set). */
static int
seg_lock(seg_header *h, int interruptible)
{
    if (fastmp_owner_try(&h->lock)) {
        return 0;
    }
    int flags = FASTMP_OWNER_SELF_IS_STALE
                | (interruptible ? FASTMP_OWNER_INTERRUPTIBLE : 0);
    return fastmp_owner_lock(&h->lock, NULL, flags) < 0 ? -1 : 0;
}

static void
seg_unlock(seg_header *h)
{
    fastmp_owner_unlock(&h->lock);
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

/* Memory or address space ran out: say so, with the size asked for. */
static void
map_error(uint64_t size)
{
    int err = errno;
    if (err == ENOMEM || err == ENOSPC || err == EFBIG) {
        PyErr_Format(PyExc_MemoryError,
                     "fastmp: cannot map %llu bytes of shared memory (%s): "
                     "the address space or the memory is exhausted",
                     (unsigned long long)size, strerror(err));
    }
    else {
        PyErr_Format(PyExc_OSError,
                     "fastmp: cannot create %llu bytes of shared memory: %s",
                     (unsigned long long)size, strerror(err));
    }
}

/* Wrap a mapped fd in a new Segment object (steals fd on success). */
static fastmp_segment_object *
segment_new(PyTypeObject *type, int fd, uint64_t size)
{
    uint64_t dev, ino, fsize;
    if (fastmp_platform_file_id(fd, &dev, &ino, &fsize) < 0) {
        fastmp_oserror_syscall("fstat");
        return NULL;
    }
    void *base = fastmp_platform_shm_map(fd, 0, size);
    if (base == NULL) {
        map_error(size);
        return NULL;
    }
    fastmp_segment_object *s = PyObject_New(fastmp_segment_object, type);
    if (s == NULL) {
        fastmp_platform_shm_unmap(base, size);
        return NULL;
    }
    s->fd = fd;
    s->base = base;
    s->size = size;
    s->dev = dev;
    s->ino = ino;
    s->slot_pid = 0;
    s->my_slot = -1;
    s->last_sweep = 0;
    s->carves_to_clock = 0;
    registry_add(s);
    return s;
}

/* Create a fresh segment of `size` bytes (HEADER_BYTES included). */
static fastmp_segment_object *
segment_create(fastmp_state *st, uint64_t size, int large)
{
    int fd = fastmp_platform_shm_anon("fastmp", size);
    if (fd < 0) {
        map_error(size);
        return NULL;
    }
    fastmp_segment_object *s = segment_new(st->SegmentType, fd, size);
    if (s == NULL) {
        (void)fastmp_platform_close(fd);
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
        fastmp_platform_shm_unmap(s->base, s->size);
        s->base = NULL;
    }
    if (s->fd >= 0) {
        (void)fastmp_platform_close(s->fd);
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

enum { HOW_NONE = 0, HOW_BIT = 1, HOW_OVF = 2 };

static void
track(fastmp_block *b)
{
    b->prev = NULL;
    b->next = tracked;
    if (tracked != NULL) {
        tracked->prev = b;
    }
    tracked = b;
    b->sib_prev = b->sib_next = b;
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
    b->sib_prev->sib_next = b->sib_next;
    b->sib_next->sib_prev = b->sib_prev;
    b->sib_prev = b->sib_next = b;
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

static void
pool_give_back(fastmp_segment_object *s, uint64_t off)
{
    seg_header *h = hdr(s);
    block_header *bh = bhdr(s, off);
    int cls = bh->cls;
    uint64_t total = (uint64_t)1 << (cls + MIN_CLASS_SHIFT);
    if (total >= PUNCH_MIN_BYTES) {
        /* Return the pages of a big freed block to the system; they read
         * back as zeros.  Only whole pages past the link are punched. */
        uint64_t start = (off + 8 + 4095) & ~UINT64_C(4095);
        uint64_t end = (off - sizeof(block_header) + total) & ~UINT64_C(4095);
        if (end > start) {
            (void)fastmp_platform_shm_punch(s->fd, start, end - start);
        }
    }
    (void)seg_lock(h, 0);
    __atomic_store_n((uint64_t *)(s->base + off), h->free_head[cls],
                     __ATOMIC_RELAXED);
    __atomic_store_n(&h->free_head[cls], off, __ATOMIC_RELEASE);
    h->nlive--;
    seg_unlock(h);
}

/* Clear holder bit `bit` of the block at data offset off; frees the block
 * when that was its last reference. */
static void
refs_drop_bit(fastmp_segment_object *s, uint64_t off, uint64_t bit)
{
    block_header *bh = bhdr(s, off);
    uint64_t old = __atomic_fetch_and(&bh->refs, ~bit, __ATOMIC_ACQ_REL);
    if ((old & bit) && (old & ~bit) == 0) {
        pool_give_back(s, off);
    }
}

/* Holder slot `i` of s names a dead process (or a dead recoverer), and
 * this process has claimed it (holders[i] = self | SLOT_RECOVERING): clear
 * its bit in every block, freeing the blocks only it held, then free the
 * slot.  Idempotent, so a recoverer that dies half-way is simply
 * followed by another. */
static void
recover_slot(fastmp_segment_object *s, int i)
{
    seg_header *h = hdr(s);
    uint64_t bit = UINT64_C(1) << i;
    uint64_t end = __atomic_load_n(&h->bump, __ATOMIC_ACQUIRE);
    if (end > s->size) {
        end = s->size;
    }
    uint64_t off = HEADER_BYTES;
    while (off + sizeof(block_header) <= end) {
        block_header *bh = (block_header *)(s->base + off);
        if (bh->magic != BLOCK_MAGIC || bh->cls >= NCLASSES) {
            break; /* not a block: stop rather than walk garbage */
        }
        uint64_t total = (uint64_t)1 << (bh->cls + MIN_CLASS_SHIFT);
        if (__atomic_load_n(&bh->refs, __ATOMIC_RELAXED) & bit) {
            refs_drop_bit(s, off + sizeof(block_header), bit);
        }
        off += total;
    }
    __atomic_store_n(&h->holders[i], 0, __ATOMIC_RELEASE);
}

/* Recover every slot of s whose holder is dead.  Returns how many. */
static int
sweep(fastmp_segment_object *s)
{
    seg_header *h = hdr(s);
    if (h->large) {
        return 0;
    }
    s->last_sweep = fastmp_now_ns();
    uint64_t self = fastmp_owner_self();
    int n = 0;
    for (int i = 0; i < NHOLDERS; i++) {
        uint64_t v = __atomic_load_n(&h->holders[i], __ATOMIC_ACQUIRE);
        if (v == 0 || (v & ~(uint64_t)SLOT_RECOVERING) == self) {
            continue;
        }
        if (!fastmp_owner_dead(v)) {
            continue;
        }
        if (__atomic_compare_exchange_n(&h->holders[i], &v,
                                        self | SLOT_RECOVERING, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            recover_slot(s, i);
            n++;
        }
    }
    return n;
}

/* Called before carving fresh memory from pool segment s: 1 when a sweep
 * should come first.  At most once a second; the clock is read at the
 * first carve of the segment and then at every SWEEP_CLOCK_EVERY-th. */
static int
carve_wants_sweep(fastmp_segment_object *s)
{
    if (s->carves_to_clock > 0) {
        s->carves_to_clock--;
        return 0;
    }
    s->carves_to_clock = SWEEP_CLOCK_EVERY - 1;
    return fastmp_now_ns() - s->last_sweep >= SWEEP_INTERVAL_NS;
}

/* This process's holder slot in pool segment s, claimed on first use;
 * -1 when every slot is held by a live process. */
static int
seg_slot(fastmp_segment_object *s)
{
    uint32_t me = fastmp_platform_getpid();
    if (s->slot_pid == me) {
        return s->my_slot;
    }
    seg_header *h = hdr(s);
    uint64_t self = fastmp_owner_self();
    int slot = -1;
    for (int pass = 0; pass < 2 && slot < 0; pass++) {
        if (pass == 1 && sweep(s) == 0) {
            break;
        }
        for (int i = 0; i < NHOLDERS; i++) {
            uint64_t v = 0;
            if (__atomic_load_n(&h->holders[i], __ATOMIC_RELAXED) == 0
                && __atomic_compare_exchange_n(&h->holders[i], &v, self, 0,
                                               __ATOMIC_ACQ_REL,
                                               __ATOMIC_RELAXED)) {
                slot = i;
                break;
            }
        }
    }
    s->slot_pid = me;
    s->my_slot = slot;
    return slot;
}

/* The reference a new holder of a pool block adds: its slot bit, or one
 * overflow count when it has no slot. */
static uint64_t
my_ref(fastmp_segment_object *s, int *how)
{
    int slot = seg_slot(s);
    *how = slot >= 0 ? HOW_BIT : HOW_OVF;
    return slot >= 0 ? UINT64_C(1) << slot : REFS_OVF_ONE;
}

/* Pop or carve a block of class `cls` from pool segment s, held by `ref`.
 * Returns the data offset, 0 when the segment is full, or TAKE_ERROR with
 * an exception set (interrupted while waiting for the lock). */
#define TAKE_ERROR UINT64_MAX

static uint64_t
pool_take(fastmp_segment_object *s, int cls, uint64_t ref)
{
    seg_header *h = hdr(s);
    uint64_t total = (uint64_t)1 << (cls + MIN_CLASS_SHIFT);
    uint64_t off = 0;
    if (seg_lock(h, 1) < 0) {
        return TAKE_ERROR;
    }
    uint64_t bump = h->bump;
    uint64_t head = h->free_head[cls];
    if (head != 0) {
        block_header *bh = NULL;
        if (head % FASTMP_BLOCK_ALIGN == 0
            && head >= HEADER_BYTES + sizeof(block_header)
            && head + 8 <= bump) {
            bh = bhdr(s, head);
        }
        if (bh != NULL && bh->magic == BLOCK_MAGIC && bh->cls == cls
            && __atomic_load_n(&bh->refs, __ATOMIC_ACQUIRE) == 0) {
            off = head;
            __atomic_store_n(&h->free_head[cls], *(uint64_t *)(s->base + off),
                             __ATOMIC_RELAXED);
        }
        else {
            /* A corrupt list: forget it (its blocks leak) rather than
             * hand out memory that may be in use. */
            __atomic_store_n(&h->free_head[cls], 0, __ATOMIC_RELAXED);
        }
    }
    if (off == 0 && bump + total <= h->size) {
        off = bump + sizeof(block_header);
        block_header *bh = bhdr(s, off);
        bh->magic = BLOCK_MAGIC;
        bh->cls = (uint16_t)cls;
        __atomic_store_n(&bh->refs, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&h->bump, bump + total, __ATOMIC_RELEASE);
    }
    if (off != 0) {
        __atomic_store_n(&bhdr(s, off)->refs, ref, __ATOMIC_RELEASE);
        h->nlive++;
    }
    seg_unlock(h);
    return off;
}

static void
fill_block(fastmp_block *b, fastmp_segment_object *s, uint64_t off,
           size_t size, int how)
{
    b->seg = (fastmp_segment_object *)Py_NewRef((PyObject *)s);
    b->offset = off;
    b->ptr = s->base + off;
    b->size = size;
    b->released = 0;
    b->how = how;
    track(b);
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
    total =
        (total + FASTMP_BLOCK_ALIGN - 1) & ~(size_t)(FASTMP_BLOCK_ALIGN - 1);
    int cls = class_for(total);
    if (cls < 0) {
        /* A large block: a segment of its own, whose lifetime is the
         * kernel's (it goes with the last mapping, however processes
         * end). */
        uint64_t segsize = (HEADER_BYTES + total + 4095) & ~UINT64_C(4095);
        fastmp_segment_object *s = segment_create(st, segsize, 1);
        if (s == NULL) {
            return -1;
        }
        uint64_t off = HEADER_BYTES + sizeof(block_header);
        block_header *bh = bhdr(s, off);
        bh->magic = BLOCK_MAGIC;
        bh->cls = CLS_LARGE;
        bh->refs = 0;
        hdr(s)->bump = segsize;
        hdr(s)->nlive = 1;
        fill_block(b, s, off, size, HOW_NONE);
        Py_DECREF(s);
        return 0;
    }
    for (int attempt = 0; attempt < 3; attempt++) {
        fastmp_segment_object *s = (fastmp_segment_object *)st->alloc_segment;
        if (s == NULL) {
            s = segment_create(st, next_pool_bytes, 0);
            if (s == NULL && next_pool_bytes > POOL_FIRST_BYTES
                && PyErr_ExceptionMatches(PyExc_MemoryError)) {
                /* Address space is short: start small again. */
                PyErr_Clear();
                next_pool_bytes = POOL_FIRST_BYTES;
                s = segment_create(st, next_pool_bytes, 0);
            }
            if (s == NULL) {
                return -1;
            }
            if (next_pool_bytes < POOL_MAX_BYTES) {
                next_pool_bytes *= 2;
            }
            st->alloc_segment = (PyObject *)s;
        }
        int how;
        uint64_t ref = my_ref(s, &how);
        if (__atomic_load_n(&hdr(s)->free_head[cls], __ATOMIC_RELAXED) == 0
            && carve_wants_sweep(s)) {
            /* About to carve fresh memory: first give back what dead
             * holders pinned. */
            (void)sweep(s);
        }
        uint64_t off = pool_take(s, cls, ref);
        if (off == TAKE_ERROR) {
            return -1;
        }
        if (off != 0) {
            /* Fresh bump memory is zero; recycled blocks are not. */
            memset(s->base + off, 0, size);
            fill_block(b, s, off, size, how);
            return 0;
        }
        /* Full: start a new pool segment; the old one lives on as long
         * as blocks in it do. */
        Py_CLEAR(st->alloc_segment);
    }
    PyErr_NoMemory();
    return -1;
}

/* Another handle of this process on the same block as b, or NULL. */
static fastmp_block *
find_sibling(fastmp_segment_object *s, uint64_t offset)
{
    for (fastmp_block *o = tracked; o != NULL; o = o->next) {
        if (o->seg == s && o->offset == offset && o->how == HOW_BIT) {
            return o;
        }
    }
    return NULL;
}

static void
link_sibling(fastmp_block *b, fastmp_block *sib)
{
    b->sib_next = sib->sib_next;
    b->sib_prev = sib;
    sib->sib_next->sib_prev = b;
    sib->sib_next = b;
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
    if (hdr(s)->large) {
        /* The mapping itself keeps a large block alive. */
        fill_block(b, s, offset, size, HOW_NONE);
        return 0;
    }
    if (bh->cls >= NCLASSES
        || size > ((size_t)1 << (bh->cls + MIN_CLASS_SHIFT))
                      - sizeof(block_header)) {
        PyErr_SetString(PyExc_ValueError, "invalid shared block reference");
        return -1;
    }
    int how;
    uint64_t ref = my_ref(s, &how);
    /* Only take a reference while someone still holds one: a block that
     * nobody holds may already be on a free list. */
    uint64_t n = __atomic_load_n(&bh->refs, __ATOMIC_ACQUIRE);
    for (;;) {
        if (n == 0) {
            PyErr_SetString(PyExc_ValueError,
                            "shared object was released by all processes");
            return -1;
        }
        if (how == HOW_BIT && (n & ref)) {
            /* This process holds it already. */
            fill_block(b, s, offset, size, how);
            fastmp_block *sib = find_sibling(s, offset);
            if (sib != NULL && sib != b) {
                link_sibling(b, sib);
            }
            return 0;
        }
        uint64_t want = how == HOW_BIT ? n | ref : n + ref;
        if (__atomic_compare_exchange_n(&bh->refs, &n, want, 1,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            break;
        }
    }
    fill_block(b, s, offset, size, how);
    return 0;
}

void
fastmp_block_release(fastmp_block *b)
{
    if (b->seg == NULL) {
        return;
    }
    fastmp_segment_object *s = b->seg;
    int alone = b->sib_next == b;
    untrack(b);
    if (!b->released) {
        b->released = 1;
        if (b->how == HOW_BIT && alone
            && s->slot_pid == fastmp_platform_getpid() && s->my_slot >= 0) {
            refs_drop_bit(s, b->offset, UINT64_C(1) << s->my_slot);
        }
        else if (b->how == HOW_OVF) {
            block_header *bh = bhdr(s, b->offset);
            if (__atomic_sub_fetch(&bh->refs, REFS_OVF_ONE, __ATOMIC_ACQ_REL)
                == 0) {
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
arena_segment_attach(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "iK:_segment_attach", &fd, &size)) {
        return NULL;
    }
    uint64_t dev, ino, fsize;
    if (fastmp_platform_file_id(fd, &dev, &ino, &fsize) < 0) {
        return fastmp_oserror_syscall("fstat");
    }
    for (fastmp_segment_object *s = registry; s != NULL; s = s->reg_next) {
        if (s->dev == dev && s->ino == ino) {
            /* Already mapped here (e.g. two objects in one pickle stream
             * were not memoised together): keep one mapping. */
            if (s->fd != fd) {
                (void)fastmp_platform_close(fd);
            }
            return Py_NewRef((PyObject *)s);
        }
    }
    if ((uint64_t)fsize < size || size < HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "segment size mismatch");
        return NULL;
    }
    fastmp_state *st = fastmp_get_state();
    fastmp_segment_object *s = segment_new(st->SegmentType, fd, size);
    if (s == NULL) {
        return NULL;
    }
    if (__atomic_load_n(&hdr(s)->magic, __ATOMIC_ACQUIRE) != SEG_MAGIC) {
        s->fd = -1; /* the caller still owns fd on error */
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
    /* This process now holds every block it inherited a handle on: it
     * takes a holder slot of its own in each pool segment and sets its
     * bit (a death from here on is recovered like any other). */
    for (fastmp_block *b = tracked; b != NULL; b = b->next) {
        if (b->released || b->how == HOW_NONE) {
            continue;
        }
        int how;
        uint64_t ref = my_ref(b->seg, &how);
        block_header *bh = bhdr(b->seg, b->offset);
        if (how == HOW_BIT) {
            (void)__atomic_fetch_or(&bh->refs, ref, __ATOMIC_ACQ_REL);
            if (b->how == HOW_OVF) {
                /* Counted one by one in the parent, sharing one bit here:
                 * join the handles already converted. */
                fastmp_block *sib = find_sibling(b->seg, b->offset);
                if (sib != NULL && sib != b) {
                    link_sibling(b, sib);
                }
            }
        }
        else {
            (void)__atomic_fetch_add(&bh->refs, ref, __ATOMIC_ACQ_REL);
        }
        b->how = how;
    }
    Py_RETURN_NONE;
}

static PyObject *
arena_sweep(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    FASTMP_UNUSED(module);
    /* Give back what processes that have ended still held. */
    Py_ssize_t n = 0;
    for (fastmp_segment_object *s = registry; s != NULL; s = s->reg_next) {
        n += sweep(s);
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *
arena_stats(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    FASTMP_UNUSED(module);
    Py_ssize_t nseg = 0, nblocks = 0;
    unsigned long long resident = 0;
    for (fastmp_segment_object *s = registry; s != NULL; s = s->reg_next) {
        uint64_t bytes;
        nseg++;
        if (fastmp_platform_file_resident(s->fd, &bytes) == 0) {
            resident += (unsigned long long)bytes;
        }
    }
    for (fastmp_block *b = tracked; b != NULL; b = b->next) {
        nblocks++;
    }
    return Py_BuildValue("{snsnsK}", "segments", nseg, "blocks", nblocks,
                         "resident", resident);
}

static PyMethodDef arena_functions[] = {
    {"_segment_attach", arena_segment_attach, METH_VARARGS,
     "_segment_attach(fd, size, /)\n--\n\n"
     "Map a segment received from a parent (takes ownership of fd)."},
    {"_after_fork_child", arena_after_fork_child, METH_NOARGS,
     "_after_fork_child($module, /)\n--\n\n"
     "Run in a fork child: take references on inherited objects."},
    {"_arena_sweep", arena_sweep, METH_NOARGS,
     "_arena_sweep($module, /)\n--\n\n"
     "Give back the shared blocks that ended processes still held; "
     "returns how many holders were recovered."},
    {"_arena_stats", arena_stats, METH_NOARGS,
     "_arena_stats($module, /)\n--\n\n"
     "Counts of this process's mapped segments and tracked blocks, and "
     "the bytes of shared memory those segments occupy."},
    {NULL, NULL, 0, NULL},
};

int
fastmp_arena_exec(PyObject *m, fastmp_state *st)
{
    if (PyModule_AddFunctions(m, arena_functions) < 0) {
        return -1;
    }
    st->SegmentType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &segment_spec, NULL);
    if (st->SegmentType == NULL) {
        return -1;
    }
    if (PyModule_AddType(m, st->SegmentType) < 0) {
        return -1;
    }
    return 0;
}
