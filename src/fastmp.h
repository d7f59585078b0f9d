/*
 * fastmp.h -- the one header every fastmp C file includes.
 *
 * It holds the module state, the shared-arena interface (arena.c), the
 * blocking-wait helper (wait.c), the owner lock (owner.c), pickling
 * (pickling.c) and the small C interface that one area offers another
 * (SemLock for the synchronized Value/Array wrappers).  It includes
 * platform.h, the platform interface (platform_linux.c: memfd, futex,
 * process identity).  Internals shared by the files of one area only are
 * in that area's header: semlock_internal.h, sharedctypes_internal.h.
 *
 * Each area owns a section below, fenced by "area:" comments, and its own
 * state struct; keep edits inside your own section.
 */
#ifndef FASTMP_H
#define FASTMP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if PY_VERSION_HEX < 0x03090000
#error "fastmp needs CPython 3.9 or newer"
#endif

#define FASTMP_UNUSED(x) ((void)(x))

#include "platform.h"

/* ---------------------------------------------------------------------
 * wait: wait.c -- blocking with the GIL released, a monotonic deadline,
 * prompt Ctrl-C.
 * ------------------------------------------------------------------- */

/* Longest single futex sleep; between slices signals are checked and the
 * caller may look for a dead peer. */
#define FASTMP_WAIT_SLICE_NS (50 * 1000 * 1000)

typedef struct {
    int forever;        /* 1: no deadline */
    struct timespec at; /* absolute CLOCK_MONOTONIC */
} fastmp_deadline;

/* Fill *d from a Python timeout: Py_None or NULL means forever; a number is
 * seconds (negative means 0, as the stdlib's SemLock treats it).  Returns 0,
 * or -1 with TypeError/ValueError/OverflowError set. */
int fastmp_deadline_from_object(PyObject *timeout, fastmp_deadline *d);

/* Fill *d from seconds (< 0: forever). */
void fastmp_deadline_from_seconds(double seconds, fastmp_deadline *d);

/* 1 if the deadline has passed. */
int fastmp_deadline_expired(const fastmp_deadline *d);

/* Seconds left (>= 0), or -1.0 when forever. */
double fastmp_deadline_remaining(const fastmp_deadline *d);

/* Called WITH the GIL.  Sleeps on the futex `word` while it equals
 * `expected`, releasing the GIL, for at most one slice and never past the
 * deadline, then runs PyErr_CheckSignals().  Returns 0 when the caller
 * should re-check its condition (woken, changed, slice over), 1 when the
 * deadline has passed, -1 with an exception set (KeyboardInterrupt from a
 * signal handler, or OSError). */
int fastmp_wait_futex(uint32_t *word, uint32_t expected,
                      const fastmp_deadline *d);

/* As fastmp_wait_futex for waits that no exception may come out of (a
 * lock protecting a critical section that must be entered): signal
 * handlers are not run.  Returns 0 (re-check) or 1 (deadline passed). */
int fastmp_wait_futex_quiet(uint32_t *word, uint32_t expected,
                            const fastmp_deadline *d);

/* Called WITH the GIL.  Wait until fd is readable (or at EOF or in
 * error), at most until d, in slices with the GIL released and signals
 * checked.  Returns 1 ready, 0 timed out, -1 with an exception set. */
int fastmp_wait_readable(int fd, const fastmp_deadline *d);

/* A monotonic "every slice" timer: *next is when the next look is due.
 * fastmp_slice_due returns 1 (and moves *next one slice on) when it has
 * come.  For looks that cost system calls (is a holder dead?), done at
 * most once a slice however often the waiter is woken. */
static inline void
fastmp_slice_start(int64_t *next)
{
    *next = fastmp_now_ns() + FASTMP_WAIT_SLICE_NS;
}

static inline int
fastmp_slice_due(int64_t *next)
{
    int64_t now = fastmp_now_ns();
    if (now < *next) {
        return 0;
    }
    *next = now + FASTMP_WAIT_SLICE_NS;
    return 1;
}

/* Spinning before sleeping.  A wait that ends within microseconds (a peer
 * on another CPU answering) costs far less if the waiter watches for the
 * change than if it sleeps and is woken.  A fastmp_spin is process-local
 * memory of one object's recent waits: the budget is twice the last wait
 * when that was shorter than FASTMP_SPIN_CAP_NS, halved after a spin that
 * saw nothing, and always 0 when the process can run on one CPU only. */
#define FASTMP_SPIN_CAP_NS 50000

typedef struct {
    uint32_t budget_ns;
} fastmp_spin;

/* 1 when spinning can pay at all: this process may run on more than one
 * CPU (checked once).  A brief fixed spin (a few dozen pause
 * instructions before the real wait) asks this too. */
extern int fastmp_spin_cpus_ok; /* -1 until known */
int fastmp_spin_ok_slow(void);
static inline int
fastmp_spin_ok(void)
{
    int ok = fastmp_spin_cpus_ok;
    return ok >= 0 ? ok : fastmp_spin_ok_slow();
}

void fastmp_spin_init(fastmp_spin *sp);
/* Record a wait of `waited` ns; `spun` says whether spinning saw it end. */
void fastmp_spin_learn(fastmp_spin *sp, int64_t waited, int spun);

/* Watch `word` without sleeping (GIL released) until it differs from
 * `expected` (1) or sp's budget, counted from t0, is spent (0). */
int fastmp_spin_watch(uint32_t *word, uint32_t expected, fastmp_spin *sp,
                      int64_t t0);

/* Spin on a condition that is not a futex word (input on an fd): call
 * look(arg) without the GIL (so it must not touch the Python API) until
 * it returns non-zero or sp's budget, counted from t0, is spent.  Returns
 * look's last result (0: the budget ran out first, or there was none). */
int fastmp_spin_poll(fastmp_spin *sp, int64_t t0, int (*look)(void *arg),
                     void *arg);

/* fastmp_wait_futex, first watching `word` for a change without sleeping
 * (GIL released) for at most sp's budget.  Returns like
 * fastmp_wait_futex. */
int fastmp_wait_futex_spin(uint32_t *word, uint32_t expected,
                           const fastmp_deadline *d, fastmp_spin *sp);

/* ---------------------------------------------------------------------
 * owner: owner.c -- the one process-shared owner lock.
 *
 * A 64-bit word, 0 when free.  Held, its low half (the futex word) is the
 * holder's pid, with FASTMP_OWNER_WAITERS set when someone may sleep on
 * it; its high half is the holder's start token (fastmp_owner_token).
 * One CAS 0 -> (pid, token) takes the lock and publishes who holds it, so
 * a live holder is identified exactly from its first instant, however
 * long it is stalled (preempted, SIGSTOP, a page fault).  A waiter that
 * finds the (pid, token) it saw dead takes the lock over with a CAS from
 * exactly that value: of several waiters one wins, and a holder that took
 * the lock in the meantime is never robbed.  docs/dead-holders.md.
 * ------------------------------------------------------------------- */

#define FASTMP_OWNER_WAITERS UINT32_C(0x80000000)

/* The 32-bit start token stored in owner words: never 0. */
static inline uint32_t
fastmp_owner_token(uint64_t start)
{
    uint32_t t = (uint32_t)start;
    return t != 0 ? t : 1;
}

static inline uint64_t
fastmp_owner_make(uint32_t pid, uint32_t token)
{
    return (uint64_t)pid | ((uint64_t)token << 32);
}

static inline uint32_t
fastmp_owner_pid(uint64_t v)
{
    return (uint32_t)v & ~FASTMP_OWNER_WAITERS;
}

/* This process's owner value (pid, token). */
static inline uint64_t
fastmp_owner_self(void)
{
    return fastmp_owner_make(fastmp_platform_getpid(),
                             fastmp_owner_token(fastmp_platform_self_start()));
}

/* The futex half of an owner word. */
static inline uint32_t *
fastmp_owner_futex(uint64_t *w)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (uint32_t *)w;
#else
    return (uint32_t *)w + 1;
#endif
}

/* Test hook (tests only, off unless _fastmp._owner_stall() was called in
 * this process): after every acquisition the holder stalls. */
extern int fastmp_owner_stall_armed;
void fastmp_owner_stall(void);

/* Take the lock if it is free.  1 taken, 0 not. */
static inline int
fastmp_owner_try(uint64_t *w)
{
    uint64_t expected = 0;
    if (__atomic_compare_exchange_n(w, &expected, fastmp_owner_self(), 0,
                                    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        if (fastmp_owner_stall_armed) {
            fastmp_owner_stall();
        }
        return 1;
    }
    return 0;
}

/* Is the holder named by owner value v dead (or v names nobody)? */
int fastmp_owner_dead(uint64_t v);

/* If `seen` (a value read from *w) names a dead holder, take the lock
 * over: CAS seen -> self, keeping the waiters bit.  1 taken over. */
int fastmp_owner_takeover(uint64_t *w, uint64_t seen);

/* Flags of fastmp_owner_lock. */
#define FASTMP_OWNER_INTERRUPTIBLE                                            \
    1 /* check signals between slices                                         \
          (may fail with an exception) */
#define FASTMP_OWNER_SELF_IS_STALE                                            \
    2 /* critical sections never release                                      \
          the GIL: finding this process as                                    \
          the holder means it died there                                      \
          (or the word is corrupt) */

/* Blocking acquire.  Called WITH the GIL, which is released while
 * sleeping.  Returns 0 taken, 1 taken over from a dead holder (the caller
 * repairs what it protects), 2 the deadline passed (d may be NULL:
 * forever), -1 with an exception set (only with INTERRUPTIBLE). */
int fastmp_owner_lock(uint64_t *w, const fastmp_deadline *d, int flags);

/* Release: the word returns to 0; a sleeper, if any, is woken. */
static inline void
fastmp_owner_unlock(uint64_t *w)
{
    uint64_t old = __atomic_exchange_n(w, 0, __ATOMIC_RELEASE);
    if (old & FASTMP_OWNER_WAITERS) {
        (void)fastmp_platform_futex_wake(fastmp_owner_futex(w), 1);
    }
}

/* ---------------------------------------------------------------------
 * arena: arena.c -- process-shared memory carved into blocks.
 *
 * Segments are memfd files mapped MAP_SHARED.  A block is (segment,
 * offset).  A pool block records, per holder slot, which processes hold it
 * (a slot names a process by pid and start token); a dead holder's
 * references are recovered without its help.  A large block is a segment
 * of its own, freed by the kernel with its last mapping.  See arena.c.
 * ------------------------------------------------------------------- */

typedef struct fastmp_segment_object fastmp_segment_object;

/* A process-local handle on one block.  Embed it in any Python object that
 * owns arena memory; fastmp_block_alloc/attach register it so that a fork
 * child takes its own reference. */
typedef struct fastmp_block {
    fastmp_segment_object *seg;       /* strong ref (a Python object) */
    uint64_t offset;                  /* of the user data within the segment */
    void *ptr;                        /* seg base + offset */
    size_t size;                      /* usable bytes */
    int released;                     /* this process's reference is gone */
    int how;                          /* how this process holds it (arena.c) */
    struct fastmp_block *prev, *next; /* tracking list (process-local) */
    /* Other handles of this process on the same block (a ring). */
    struct fastmp_block *sib_prev, *sib_next;
} fastmp_block;

/* Blocks are aligned to this (enough for long double and SIMD loads). */
#define FASTMP_BLOCK_ALIGN 16

/* Allocate `size` zeroed bytes of shared memory.  On success fills *b
 * (held by this process, tracked) and returns 0; on failure returns -1 with
 * MemoryError/OSError set.  Needs the GIL. */
int fastmp_block_alloc(size_t size, fastmp_block *b);

/* Take a new handle on the block at (seg, offset) -- used when an
 * object is rebuilt in a spawned child.  Validates offset/size against the
 * segment; returns 0, or -1 with ValueError set.  Tracks *b. */
int fastmp_block_attach(PyObject *seg, uint64_t offset, size_t size,
                        fastmp_block *b);

/* Drop this handle (idempotent) and untrack.  Frees the block when it
 * was the last reference anywhere.  Needs the GIL. */
void fastmp_block_release(fastmp_block *b);

/* The Segment object that holds b, as a new reference (for pickling). */
PyObject *fastmp_block_segment(const fastmp_block *b);

/* Check a Python object is a Segment. */
int fastmp_segment_check(PyObject *o);

/* ---------------------------------------------------------------------
 * area: semlock (semlock.c)
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *SemLockType;
    PyObject *AbandonedLockWarning;
    /* fastmp.synchronize's _reduce and _repr, looked up on first use. */
    PyObject *sync_reduce;
    PyObject *sync_repr;
} fastmp_semlock_state;

/* For other areas (the synchronized Value/Array wrappers): if `lock` is a
 * fastmp SemLock, or an object whose `_semlock` attribute is one (the same
 * object at every access), return that C object as a new reference, which
 * the caller keeps for as long as it uses the lock; else NULL without an
 * exception. */
PyObject *fastmp_semlock_unwrap(PyObject *lock);

/* Acquire (blocking, no timeout) / release a SemLock returned by
 * fastmp_semlock_unwrap.  0 on success, -1 with an exception set. */
int fastmp_semlock_enter(PyObject *semlock);
int fastmp_semlock_exit(PyObject *semlock);
/* 1 when the calling thread holds this SemLock and it is recursive (an
 * RLock): what it protects may then be used without taking it again. */
int fastmp_semlock_held_by_me(PyObject *semlock);
/* Lock-free reads of data a mutex (Lock, RLock) protects.  `word` is 0
 * while the mutex is free; `gen` grows by one at every release, before
 * `word` goes back to 0.  A reader loads gen, then word (0, or it must
 * lock), copies the data, issues an acquire fence, and keeps the copy if
 * word is still 0 and gen unchanged: no critical section overlapped it.
 * Returns 0 (pointers unset) for a counting semaphore.  The pointers stay
 * valid while the SemLock object lives. */
int fastmp_semlock_seq(PyObject *semlock, const uint32_t **word,
                       const uint32_t **gen);

/* end area: semlock */

/* ---------------------------------------------------------------------
 * area: sharedctypes (sharedctypes.c)
 * ------------------------------------------------------------------- */

#define FASTMP_SMALL_INT_MIN (-5)
#define FASTMP_SMALL_INT_MAX 256

typedef struct {
    PyTypeObject *BlockType;      /* a Block of arena memory */
    PyTypeObject *SyncBaseType;   /* SynchronizedBase */
    PyTypeObject *SyncType;       /* Synchronized (values, atomics) */
    PyTypeObject *SyncArrayType;  /* SynchronizedArray */
    PyTypeObject *SyncStringType; /* SynchronizedString (char arrays) */
    /* The interpreter's cached ints -5..256, held here so that building
     * a list from an array of small values needs no call per element. */
    PyObject *small_ints[FASTMP_SMALL_INT_MAX - FASTMP_SMALL_INT_MIN + 1];
} fastmp_sharedctypes_state;

/* end area: sharedctypes */

/* ---------------------------------------------------------------------
 * area: shm (shm.c) -- SharedMemory, ShareableList
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *MappingType;  /* _ShmMapping: one mmap of a segment */
    PyTypeObject *ListCoreType; /* _ShareableListCore */
    PyObject *struct_error;     /* struct.error */
} fastmp_shm_state;

/* end area: shm */

/* ---------------------------------------------------------------------
 * area: pickling (pickling.c) -- the one way fastmp pickles: exactly
 * multiprocessing.reduction.ForkingPickler.dumps / .loads, with one
 * reusable pickler whose dispatch table reads ForkingPickler's reducers
 * live.  Connection.send/recv and Queue.put/get use it.
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *TableType; /* the dispatch table's type */
    PyObject *table;         /* its one instance */
    /* Filled on first use (importing multiprocessing.reduction at module
     * exec would slow down `import fastmp`). */
    PyObject *extra_reducers; /* ForkingPickler._extra_reducers */
    PyObject *copyreg_table;  /* ForkingPickler._copyreg_dispatch_table */
    PyObject *loads;          /* ForkingPickler.loads */
    PyObject *pickler;        /* the reusable pickle.Pickler (NULL after a
                                 failed dump: made again) */
    PyObject *out;            /* the list its writes are appended to */
    int busy;                 /* `pickler` is dumping: a nested dump (a
                                 reducer that pickles, another thread)
                                 uses a fresh one */
    PyObject *str_dump, *str_clear_memo; /* interned names */
} fastmp_pickling_state;

/* Pickle obj as ForkingPickler.dumps(obj) does: the same bytes, the same
 * reducers (copyreg's table and ForkingPickler's, including reducers
 * registered or replaced since the last call).  Returns a new bytes
 * object, or NULL with the exception the pickling raised (PicklingError,
 * TypeError, a reducer's own exception...).  Reentrant. */
PyObject *fastmp_dumps(PyObject *obj);

/* ForkingPickler.loads(data) for a bytes-like `data`.  Returns a new
 * reference, or NULL with an exception set. */
PyObject *fastmp_loads(PyObject *data);

/* pickling_small.c: the pickle of a small object made of None, bools,
 * 32-bit ints, floats, str, bytes, tuples and empty dicts, written or
 * read without a Pickler (the same bytes as fastmp_dumps; the same object
 * as fastmp_loads).  Each returns a new reference; NULL without an
 * exception: not handled here (pickle as usual); NULL with one: error. */
PyObject *fastmp_small_dumps(PyObject *obj);
PyObject *fastmp_small_loads(const char *data, Py_ssize_t n);

/* end area: pickling */

/* ---------------------------------------------------------------------
 * area: connection (connection.c)
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *ConnectionType;
    /* multiprocessing.BufferTooShort, filled on first use. */
    PyObject *BufferTooShort;
} fastmp_connection_state;

/* end area: connection */

/* ---------------------------------------------------------------------
 * area: ring (ring.c) -- the Queue ring buffer
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *RingType; /* _Ring, base of fastmp.queues.Queue */
    PyObject *Empty;        /* queue.Empty, filled on first use */
    PyObject *Full;         /* queue.Full, filled on first use */
} fastmp_ring_state;

/* end area: ring */

/* ---------------------------------------------------------------------
 * module state (module.c)
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *SegmentType;
    PyObject *alloc_segment; /* arena.c: the pool segment to carve */
    fastmp_semlock_state semlock;
    fastmp_sharedctypes_state sharedctypes;
    fastmp_shm_state shm;
    fastmp_connection_state connection;
    fastmp_ring_state ring;
    fastmp_pickling_state pickling;
} fastmp_state;

/* Reaching the module state -- one convention for all code: call
 * fastmp_get_state().  fastmp supports one interpreter per process
 * (Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED; shared memory is per
 * process anyway), so the state is one global pointer, set by the exec
 * slot and reset to NULL by m_free: a load, cheaper than
 * PyModule_GetState or PyType_GetModuleState, and the same from module
 * functions, methods, dealloc and helpers.  It is NULL before exec and
 * after the module is freed: code that can run then (dealloc, type
 * checks, fastmp_semlock_unwrap) tests for NULL.  A method of a live
 * fastmp object may assume non-NULL: its heap type holds the module. */
extern fastmp_state *fastmp_current_state;

static inline fastmp_state *
fastmp_get_state(void)
{
    return fastmp_current_state;
}

/* Per-area exec hooks: create types, add them and the area's module-level
 * functions (PyModule_AddFunctions) to the module.  Return 0, or -1 with
 * an exception set.  traverse/clear visit the area's state. */
int fastmp_arena_exec(PyObject *m, fastmp_state *st);
int fastmp_semlock_exec(PyObject *m, fastmp_state *st);
int fastmp_sharedctypes_exec(PyObject *m, fastmp_state *st);
int fastmp_shm_exec(PyObject *m, fastmp_state *st);
int fastmp_connection_exec(PyObject *m, fastmp_state *st);
int fastmp_ring_exec(PyObject *m, fastmp_state *st);
int fastmp_pickling_exec(PyObject *m, fastmp_state *st);

int fastmp_semlock_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_sharedctypes_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_shm_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_connection_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_ring_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_pickling_traverse(fastmp_state *st, visitproc visit, void *arg);
void fastmp_semlock_clear(fastmp_state *st);
void fastmp_sharedctypes_clear(fastmp_state *st);
void fastmp_shm_clear(fastmp_state *st);
void fastmp_connection_clear(fastmp_state *st);
void fastmp_ring_clear(fastmp_state *st);
void fastmp_pickling_clear(fastmp_state *st);

/* The owner lock's test hook functions. */
int fastmp_owner_exec(PyObject *m);

/* ---------------------------------------------------------------------
 * small helpers
 * ------------------------------------------------------------------- */

/* Compatibility for 3.9 (Py_NewRef arrived in 3.10). */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
fastmp_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#define Py_NewRef(o) fastmp_newref((PyObject *)(o))
#endif

/* Raise OSError from errno for a failed system call, naming it: the
 * exception is the errno's OSError subclass (as PyErr_SetFromErrno picks
 * it) with filename "(originated from <syscall>)".  Returns NULL.  For
 * errors the stdlib raises too (a connection's read/write, shm_open's
 * FileExistsError), the stdlib's own form is kept instead. */
PyObject *fastmp_oserror_syscall(const char *syscall);

/* Argument parsing for METH_FASTCALL | METH_KEYWORDS methods whose
 * parameters are all positional-or-keyword (block, timeout, obj ...):
 * the one place that words argument errors, as the stdlib does for the
 * function fastmp stands in for.  `fname` is that function's name in
 * messages: for FASTMP_ARGS_C an Argument Clinic function of the stdlib's
 * C code ("acquire"), for FASTMP_ARGS_PY a method written in Python in the
 * stdlib, by qualified name ("Queue.put"; the class part is dropped on
 * 3.9, as 3.9 words it). */
enum { FASTMP_ARGS_C, FASTMP_ARGS_PY };

typedef struct {
    const char *fname;
    int style;    /* FASTMP_ARGS_C or FASTMP_ARGS_PY */
    int nparams;  /* at most 4, self not counted */
    int required; /* the first `required` must be given */
    const char *names[4];
} fastmp_argspec;

int fastmp_parse_args_slow(const fastmp_argspec *spec, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames,
                           PyObject **out);

/* Fill out[0 .. spec->nparams - 1] with the arguments (NULL: not given).
 * 0, or -1 with TypeError set.  Positional calls cost no function call. */
static inline int
fastmp_parse_args(const fastmp_argspec *spec, PyObject *const *args,
                  Py_ssize_t nargs, PyObject *kwnames, PyObject **out)
{
    if (kwnames == NULL && nargs <= spec->nparams && nargs >= spec->required) {
        for (int i = 0; i < spec->nparams; i++) {
            out[i] = i < nargs ? args[i] : NULL;
        }
        return 0;
    }
    return fastmp_parse_args_slow(spec, args, nargs, kwnames, out);
}

/* Py_TPFLAGS_IMMUTABLETYPE arrived in 3.10. */
#ifdef Py_TPFLAGS_IMMUTABLETYPE
#define FASTMP_TPFLAGS_IMMUTABLE Py_TPFLAGS_IMMUTABLETYPE
#else
#define FASTMP_TPFLAGS_IMMUTABLE 0
#endif

#endif /* FASTMP_H */
