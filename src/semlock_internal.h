/*
 * semlock_internal.h -- SemLock internals, shared by semlock.c (the
 * shared_sem core: mutex and counting acquire/release, dead-holder
 * recovery), semlock_types.c (the Python types), semlock_with.c (`with
 * lock:` descriptors) and event.c.  Not for other areas: they use the
 * semlock interface in fastmp.h.
 */
#ifndef FASTMP_SEMLOCK_INTERNAL_H
#define FASTMP_SEMLOCK_INTERNAL_H

#include "fastmp.h"

#define SEMLOCK_RECURSIVE_MUTEX 0
#define SEMLOCK_SEMAPHORE 1
#define FASTMP_SEM_VALUE_MAX INT_MAX
#define FASTMP_SEM_NOBODY UINT32_C(0xffffffff)
#define FASTMP_SEM_NSLOTS 12

/* One process's record of the units of a counting semaphore it holds.
 *
 *   pid: 0 when free; claimed with a CAS 0 -> pid by the process itself
 *       on its first tracked acquire; set back to 0 by that process
 *       (fastmp_sem_forget_slot: normal exit or dealloc) or by a waiter
 *       that found the process dead, after taking its units (CAS of the
 *       dead `start` to 0, then of the dead pid to 0).
 *   taken: written only by the owning process, under its GIL, with plain
 *       atomic stores (no read-modify-write, so no locked instruction;
 *       sub-interpreters with a GIL each would need a real atomic add):
 *       +1 for each tracked acquire, -1 when the owner pays a unit back
 *       itself.  Set equal to `paid` when the slot is claimed.
 *   paid: units paid back on the owner's behalf: CAS +1 by a release in
 *       another process (while taken - paid > 0), CAS up to `taken` by a
 *       waiter recovering a dead owner's units or by the owner forgetting
 *       its slot (after checking that pid and start still name it).
 *   start: written by the owner right after claiming (0 = not yet known:
 *       liveness is then decided by pid alone for that short window).
 *
 * The owner holds taken - paid units (mod 2^32).  An owner's release can
 * race another process paying the same unit; the difference then drops
 * below 0, which counts as 0: that unit is lost, never recovered twice.
 * A process that dies between taking a unit from `word` and recording it
 * here loses that unit (as the stdlib would), and `tracked` stays one
 * too high.  A slot naming a dead pid is freed by the next recovering
 * waiter. */
typedef struct {
    uint32_t pid;
    uint32_t taken;
    uint32_t paid;
    uint32_t unused_;
    uint64_t start;
} sem_slot;

/* The process-shared part of a SemLock (an arena block).
 *
 *   word, tracked: changed together, by 64-bit atomics on `pair` only.
 *       Mutex mode: the owner lock (owner.c): `word` the holder's pid,
 *       `tracked` its start token.  Taken by the acquirer's CAS 0 -> own
 *       value; released by a store of 0 (by any thread or process for a
 *       Lock or BoundedSemaphore(1), by the owning thread's outermost
 *       release for an RLock); taken over by a waiter's CAS from exactly
 *       the dead value.  Counting mode: `word` is the value, `tracked`
 *       the units recorded as held in slots, at most `init` (units that
 *       release() creates beyond the initial value are signals, never
 *       "held", so never recovered).  An acquire is one CAS (v -> v - 1
 *       when v > 0, t -> t + 1 while t < init; t undone when no slot is
 *       free), a release one CAS (v -> v + 1, refused at `maxvalue`;
 *       t -> t - 1 when it paid a slot); a recovering waiter adds a dead
 *       process's u units to `word` and takes u from `tracked`, as does
 *       a process forgetting its slot.
 *   nwaiters: atomic count of processes/threads inside a blocking wait.
 *       A process killed while waiting leaves it too high: releasers then
 *       make futex-wake calls nobody needed.
 *   init: counting mode: the initial value.
 *   kind, maxvalue and init are written once by the creator
 *       (fastmp_sem_create) before the lock can be shared; read-only
 *       afterwards (_rebuild checks kind and maxvalue).
 *   user: four ints exported through the buffer protocol (Barrier keeps
 *       its state there); written by Python code holding this lock.  A
 *       holder killed mid-write leaves what it wrote; the next holder
 *       gets AbandonedLockWarning.
 *   gen: mutex mode: bumped by the holder as it releases, before
 *       `word` goes back to 0.  Readers of data the mutex protects use it
 *       as a sequence count (fastmp_semlock_seq); a dead holder never
 *       bumps it and leaves `word` naming it, so those readers fall back
 *       to taking the lock.  Event: bit 0 is the flag, the bits above
 *       count the set() calls; waiters sleep on it (event.c).
 *
 * A process that dies holding the lock leaves `word` (mutex mode) or its
 * slot (counting mode) pointing at its pid: the next blocking waiter
 * recovers it (docs/dead-holders.md). */
typedef struct {
    union {
        struct {
            uint32_t word;
            uint32_t tracked;
        };
        uint64_t pair;
    };
    uint32_t nwaiters;
    uint32_t kind;
    uint32_t maxvalue;
    uint32_t init;
    sem_slot slots[FASTMP_SEM_NSLOTS];
    int32_t user[4];
    uint32_t gen;
} shared_sem;

typedef struct SemLockObject {
    PyObject_HEAD
    fastmp_block blk;
    shared_sem *sem;
    int kind;
    int maxvalue;
    int mutex; /* mutex mode */
    int count; /* process-local recursion/acquire count */
    unsigned long last_tid;
    uint32_t slot_pid; /* slot cache: valid when == our pid */
    int slot_idx;
    uint32_t count_pid; /* process `count` belongs to */
    fastmp_spin spin;   /* how long blocking waits lasted */
    PyObject *name;
    PyObject *weakreflist;
    PyObject *dict; /* instance attributes (subtypes) */
    /* Process-local list of objects whose process holds a slot, so that
     * a normal exit can clear them (see fastmp_sem_forget_slot). */
    struct SemLockObject *held_prev, *held_next;
    int in_held;
} SemLockObject;

/* `count` is per process: a fork child starts at 0 (the stdlib resets it
 * from an after-fork hook; a pid check does the same without one). */
static inline void
fastmp_sem_fork_check(SemLockObject *o)
{
    uint32_t me = fastmp_platform_getpid();
    if (o->count_pid != me) {
        o->count_pid = me;
        o->count = 0;
    }
}

/* Does the calling thread hold this lock (count > 0, taken by it)? */
static inline int
fastmp_sem_is_mine(SemLockObject *o)
{
    fastmp_sem_fork_check(o);
    return o->count > 0 && PyThread_get_thread_ident() == o->last_tid;
}

/* semlock.c.  fastmp_sem_acquire: 1 acquired, 0 not (non-blocking or
 * timed out), -1 with an exception set.  timeout NULL or None: forever.
 * fastmp_sem_release: 0, or -1 with an exception set. */
int fastmp_sem_acquire(SemLockObject *self, int blocking, PyObject *timeout);
int fastmp_sem_release(SemLockObject *self);
/* Give back this process's units of a counting semaphore (normal exit or
 * dealloc); drop o from the list of objects holding a slot. */
void fastmp_sem_forget_slot(SemLockObject *self);
void fastmp_sem_held_remove(SemLockObject *o);
/* fastmp_sem_forget_slot for every object of this process. */
void fastmp_sem_forget_all(void);

/* `with lock:` -- __enter__ and __exit__ of every SemLock type. */
static inline PyObject *
fastmp_sem_py_enter(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    int r = fastmp_sem_acquire(self, 1, NULL);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static inline PyObject *
fastmp_sem_py_exit(SemLockObject *self, PyObject *const *args,
                   Py_ssize_t nargs)
{
    FASTMP_UNUSED(args);
#if PY_VERSION_HEX >= 0x030A0000
    /* The stdlib's takes any number of arguments up to 3.9. */
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "__exit__ expected at most 3 arguments, got %zd", nargs);
        return NULL;
    }
#else
    FASTMP_UNUSED(nargs);
#endif
    if (fastmp_sem_release(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* semlock_types.c: pieces of the SemLock type that Event shares. */
#define FASTMP_SEM_SUB_FLAGS                                                  \
    (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC)
PyObject *fastmp_sem_create(PyTypeObject *type, int kind, int value,
                            int maxvalue, PyObject *name);
void fastmp_sem_dealloc(SemLockObject *self);
int fastmp_sem_traverse(SemLockObject *self, visitproc visit, void *arg);
int fastmp_sem_tp_clear(SemLockObject *self);
PyObject *fastmp_sem_repr(PyObject *self);
PyObject *fastmp_sem_state(SemLockObject *self, PyObject *ignored);
PyObject *fastmp_sem_rebuild(PyObject *cls, PyObject *args);
PyObject *fastmp_sem_reduce(PyObject *self, PyObject *ignored);
extern PyMemberDef fastmp_sem_sub_members[];

/* semlock_with.c.  A new reference to the descriptor type of __enter__ /
 * __exit__ (creating the bound-object type the first time), or NULL with
 * an exception set; install both descriptors on t: 0 or -1. */
PyTypeObject *fastmp_sem_with_init(PyObject *m);
int fastmp_sem_install_specials(PyTypeObject *descr_type, PyTypeObject *t);

/* event.c: add the Event type to m.  0, or -1 with an exception set. */
int fastmp_event_exec(PyObject *m);

#endif /* FASTMP_SEMLOCK_INTERNAL_H */
