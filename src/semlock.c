/*
 * semlock.c -- SemLock: locks and semaphores on futex words in the arena.
 *
 * One SemLock is one arena block holding a `shared_sem` (below).  Two
 * modes share the layout:
 *
 *   mutex mode (kind RECURSIVE_MUTEX, or SEMAPHORE with maxvalue 1: Lock,
 *   RLock, BoundedSemaphore(1)): `pair` is the project's owner lock
 *   (owner.c): 0 when free, else the holder's pid in `word` and its start
 *   token in `tracked`, taken and named by one CAS (`word` is
 *   FASTMP_SEM_NOBODY, with no token, when the lock was created held by
 *   nobody in particular: value 0).
 *
 *   counting mode (every other semaphore): `word` is the semaphore's
 *   value; the holder table `slots` records, per process, how many units
 *   it holds, so that units of a dead process can be given back.
 *
 * Waiters sleep on `word` with fastmp_wait_futex (GIL released, 50 ms
 * slices, Ctrl-C checked); a releaser only calls futex wake when
 * `nwaiters` says someone may sleep.  Between slices a waiter checks
 * whether the holder(s) it waits on are still alive (pid + start token,
 * so pid reuse cannot fool it) and takes over what a dead one held,
 * emitting fastmp.AbandonedLockWarning.  See docs/dead-holders.md.
 */
#include "fastmp.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <structmember.h>

#define SEMLOCK_RECURSIVE_MUTEX 0
#define SEMLOCK_SEMAPHORE 1
#define SEM_VALUE_MAX_ INT_MAX
#define FASTMP_SEM_NOBODY UINT32_C(0xffffffff)
#define SEM_NSLOTS 12
#ifndef SPIN_TRIES
#  define SPIN_TRIES 64
#endif

/* One process's record of the units of a counting semaphore it holds.
 *
 *   pid: 0 when free; claimed with a CAS 0 -> pid by the process itself,
 *       set back to 0 by that process (forget_my_slot) or by a waiter that
 *       found the process dead (after taking its units).
 *   taken: written only by the owning process, under its GIL, with plain
 *       atomic stores (no read-modify-write, so no locked instruction;
 *       sub-interpreters with a GIL each would need a real atomic add):
 *       +1 for each tracked acquire, -1 when the owner pays a unit back
 *       itself.  Set equal to `paid` when the slot is claimed.
 *   paid: units paid back on the owner's behalf: CAS +1 by a release in
 *       another process, CAS up to `taken` by a waiter recovering a dead
 *       owner's units or by the owner forgetting its slot.
 *   start: written by the owner right after claiming (0 = not yet known:
 *       liveness is then decided by pid alone for that short window).
 *
 * The owner holds taken - paid units (mod 2^32).  An owner's release can
 * race another process paying the same unit; the difference then drops
 * below 0, which counts as 0: that unit is lost, never recovered twice.
 * A process that dies between taking a unit from `word` and recording it
 * here loses that unit (as the stdlib would). */
typedef struct {
    uint32_t pid;
    uint32_t taken;
    uint32_t paid;
    uint32_t unused_;
    uint64_t start;
} sem_slot;

/* The process-shared part of a SemLock (an arena block).
 *
 *   word: see the file comment.  Changed together with `tracked`, by
 *       64-bit atomics on `pair` only.
 *   tracked: mutex mode: the holder's start token (the owner lock's high
 *       half).  Counting mode: the units recorded as held in slots; at
 *       most `init` (units created by release() beyond the initial value
 *       are signals, never "held", so never recovered).
 *   nwaiters: atomic count of processes/threads inside a blocking wait.
 *   init: counting mode: the initial value.
 *   kind, maxvalue: written once at creation, read-only afterwards.
 *   user: four ints exported through the buffer protocol (Barrier keeps
 *       its state there); written by Python code holding this lock.
 *   gen: mutex mode: bumped by the holder as it releases, before
 *       `word` goes back to 0.  Readers of data the mutex protects use it
 *       as a sequence count (fastmp_semlock_seq).  Event: bumped (atomic
 *       add) by every set(); waiters sleep on it (see event_wait).
 *
 * A process that dies holding the lock leaves `word` (mutex mode) or its
 * slot (counting mode) pointing at its pid: the next waiter recovers it. */
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
    sem_slot slots[SEM_NSLOTS];
    int32_t user[4];
    uint32_t gen;
} shared_sem;

/* `pair` from and to (word, tracked). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#  define PAIR(w, t) \
    ((uint64_t)(uint32_t)(w) | ((uint64_t)(uint32_t)(t) << 32))
#  define PAIR_WORD(p) ((uint32_t)(p))
#  define PAIR_TRACKED(p) ((uint32_t)((p) >> 32))
#else
#  define PAIR(w, t) \
    ((uint64_t)(uint32_t)(t) | ((uint64_t)(uint32_t)(w) << 32))
#  define PAIR_WORD(p) ((uint32_t)((p) >> 32))
#  define PAIR_TRACKED(p) ((uint32_t)(p))
#endif

typedef struct SemLockObject {
    PyObject_HEAD
    fastmp_block blk;
    shared_sem *sem;
    int kind;
    int maxvalue;
    int mutex;                  /* mutex mode */
    int count;                  /* process-local recursion/acquire count */
    unsigned long last_tid;
    uint32_t slot_pid;          /* slot cache: valid when == our pid */
    int slot_idx;
    uint32_t count_pid;         /* process `count` belongs to */
    fastmp_spin spin;           /* how long blocking waits lasted */
    PyObject *name;
    PyObject *weakreflist;
    PyObject *dict;             /* instance attributes (subtypes) */
    /* Process-local list of objects whose process holds a slot, so that
     * a normal exit can clear them (see forget_my_slot). */
    struct SemLockObject *held_prev, *held_next;
    int in_held;
} SemLockObject;

static SemLockObject *held_head = NULL;

static void
held_add(SemLockObject *o)
{
    if (o->in_held) {
        return;
    }
    o->in_held = 1;
    o->held_prev = NULL;
    o->held_next = held_head;
    if (held_head != NULL) {
        held_head->held_prev = o;
    }
    held_head = o;
}

static void
held_remove(SemLockObject *o)
{
    if (!o->in_held) {
        return;
    }
    if (o->held_prev != NULL) {
        o->held_prev->held_next = o->held_next;
    }
    else {
        held_head = o->held_next;
    }
    if (o->held_next != NULL) {
        o->held_next->held_prev = o->held_prev;
    }
    o->held_prev = o->held_next = NULL;
    o->in_held = 0;
}

/* `count` is per process: a fork child starts at 0 (the stdlib resets it
 * from an after-fork hook; a pid check does the same without one). */
static inline void
fork_check(SemLockObject *o)
{
    uint32_t me = fastmp_platform_getpid();
    if (o->count_pid != me) {
        o->count_pid = me;
        o->count = 0;
    }
}

/* Does the calling thread hold this lock (count > 0, taken by it)? */
static inline int
is_mine(SemLockObject *o)
{
    fork_check(o);
    return o->count > 0 && PyThread_get_thread_ident() == o->last_tid;
}

static PyObject *
module_warning(void)
{
    fastmp_state *st = fastmp_get_state();
    return st != NULL ? st->semlock.AbandonedLockWarning : NULL;
}

/* ---- mutex mode -------------------------------------------------- */

static inline int
mutex_try(SemLockObject *self)
{
    return fastmp_owner_try(&self->sem->pair);
}

static inline void
mutex_release(SemLockObject *self)
{
    shared_sem *s = self->sem;
    __atomic_store_n(&s->gen, s->gen + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->pair, 0, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->nwaiters, __ATOMIC_SEQ_CST) != 0) {
        (void)fastmp_platform_futex_wake(&s->word, 1);
    }
}

/* Take the mutex from a dead holder (the owner lock's takeover: a CAS
 * from exactly the value judged dead).  1 if taken, 0 otherwise. */
static int
mutex_recover(SemLockObject *self)
{
    shared_sem *s = self->sem;
    uint64_t v = __atomic_load_n(&s->pair, __ATOMIC_ACQUIRE);
    if (v == 0 || PAIR_WORD(v) == FASTMP_SEM_NOBODY
        || (v & ~(uint64_t)FASTMP_OWNER_WAITERS) == fastmp_owner_self()) {
        return 0;
    }
    return fastmp_owner_takeover(&s->pair, v);
}

/* ---- counting mode ----------------------------------------------- */

/* Take a unit from `word`, counting it in `tracked` while that stays
 * within `init`.  0 none free, 1 taken, 2 taken and tracked. */
static inline int
count_take(shared_sem *s)
{
    uint64_t p = __atomic_load_n(&s->pair, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t v = PAIR_WORD(p), t = PAIR_TRACKED(p);
        if (v == 0) {
            return 0;
        }
        int track = t < s->init;
        if (__atomic_compare_exchange_n(&s->pair, &p,
                                        PAIR(v - 1, t + (uint32_t)track), 1,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            return 1 + track;
        }
    }
}

/* Units slot `sl` holds (0 when the difference is negative). */
static inline uint32_t
slot_held(sem_slot *sl)
{
    int32_t d = (int32_t)(__atomic_load_n(&sl->taken, __ATOMIC_ACQUIRE)
                          - __atomic_load_n(&sl->paid, __ATOMIC_ACQUIRE));
    return d > 0 ? (uint32_t)d : 0;
}

/* Our slot's index, claiming one if needed; -1 when the table is full. */
static int
my_slot(SemLockObject *self, int claim)
{
    shared_sem *s = self->sem;
    uint32_t me = fastmp_platform_getpid();
    uint64_t start = fastmp_platform_self_start();
    if (self->slot_pid == me
        && __atomic_load_n(&s->slots[self->slot_idx].pid, __ATOMIC_ACQUIRE)
           == me) {
        /* (Re-checked: another object on the same block in this process
         * may have cleared the slot when it was deallocated.) */
        return self->slot_idx;
    }
    for (int i = 0; i < SEM_NSLOTS; i++) {
        if (__atomic_load_n(&s->slots[i].pid, __ATOMIC_ACQUIRE) == me
            && __atomic_load_n(&s->slots[i].start, __ATOMIC_ACQUIRE)
               == start) {
            self->slot_pid = me;
            self->slot_idx = i;
            held_add(self);
            return i;
        }
    }
    if (!claim) {
        return -1;
    }
    for (int i = 0; i < SEM_NSLOTS; i++) {
        sem_slot *sl = &s->slots[i];
        uint32_t expected = 0;
        if (__atomic_compare_exchange_n(&sl->pid, &expected, me, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            __atomic_store_n(&sl->taken,
                             __atomic_load_n(&sl->paid, __ATOMIC_ACQUIRE),
                             __ATOMIC_RELEASE);
            __atomic_store_n(&sl->start, start, __ATOMIC_RELEASE);
            self->slot_pid = me;
            self->slot_idx = i;
            held_add(self);
            return i;
        }
    }
    return -1;
}

/* Record a tracked unit (count_take returned 2) in our slot. */
static void
count_track(SemLockObject *self)
{
    shared_sem *s = self->sem;
    int i = my_slot(self, 1);
    if (i < 0) {
        /* No slot free: the unit is not tracked after all. */
        __atomic_fetch_sub(&s->pair, PAIR(0, 1), __ATOMIC_ACQ_REL);
        return;
    }
    sem_slot *sl = &s->slots[i];
    __atomic_store_n(&sl->taken,
                     __atomic_load_n(&sl->taken, __ATOMIC_RELAXED) + 1,
                     __ATOMIC_RELEASE);
}

/* A unit is coming back: pay it off our own slot, else anyone's.  Returns
 * the slot paid (*own tells whose), or -1 when none was (nothing tracked,
 * or no slot holds anything).  count_unpay undoes it. */
static int
count_pay(SemLockObject *self, int *own)
{
    shared_sem *s = self->sem;
    *own = 0;
    if (__atomic_load_n(&s->tracked, __ATOMIC_ACQUIRE) == 0) {
        return -1;
    }
    int mine = my_slot(self, 0);
    if (mine >= 0) {
        sem_slot *sl = &s->slots[mine];
        if (slot_held(sl) > 0) {
            __atomic_store_n(&sl->taken,
                             __atomic_load_n(&sl->taken, __ATOMIC_RELAXED)
                                 - 1,
                             __ATOMIC_RELEASE);
            *own = 1;
            return mine;
        }
    }
    for (int i = 0; i < SEM_NSLOTS; i++) {
        sem_slot *sl = &s->slots[i];
        if (i == mine) {
            continue;
        }
        uint32_t pd = __atomic_load_n(&sl->paid, __ATOMIC_ACQUIRE);
        while ((int32_t)(__atomic_load_n(&sl->taken, __ATOMIC_ACQUIRE) - pd)
               > 0) {
            if (__atomic_compare_exchange_n(&sl->paid, &pd, pd + 1, 1,
                                            __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                return i;
            }
        }
    }
    return -1;
}

static void
count_unpay(shared_sem *s, int i, int own)
{
    sem_slot *sl = &s->slots[i];
    if (own) {
        __atomic_store_n(&sl->taken,
                         __atomic_load_n(&sl->taken, __ATOMIC_RELAXED) + 1,
                         __ATOMIC_RELEASE);
    }
    else {
        __atomic_fetch_sub(&sl->paid, 1, __ATOMIC_ACQ_REL);
    }
}

/* Pay off everything slot `sl` holds, as long as it still belongs to
 * (pid, start).  Returns the units taken off it. */
static uint32_t
slot_settle(sem_slot *sl, uint32_t pid, uint64_t start)
{
    uint32_t pd = __atomic_load_n(&sl->paid, __ATOMIC_ACQUIRE);
    for (;;) {
        uint32_t tk = __atomic_load_n(&sl->taken, __ATOMIC_ACQUIRE);
        /* The slot may have been freed and claimed again meanwhile: then
         * `taken` is its new owner's, not to be touched. */
        if (__atomic_load_n(&sl->pid, __ATOMIC_ACQUIRE) != pid
            || __atomic_load_n(&sl->start, __ATOMIC_ACQUIRE) != start
            || (int32_t)(tk - pd) <= 0) {
            return 0;
        }
        if (__atomic_compare_exchange_n(&sl->paid, &pd, tk, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            return tk - pd;
        }
    }
}

/* Take u units off `tracked`, and give them back to `word` when
 * `to_word` (a dead holder's units; a normal exit's are lost). */
static void
count_settle(shared_sem *s, uint32_t u, int to_word)
{
    uint64_t p = __atomic_load_n(&s->pair, __ATOMIC_RELAXED);
    uint64_t np;
    do {
        uint32_t t = PAIR_TRACKED(p);
        np = PAIR(PAIR_WORD(p) + (to_word ? u : 0), t > u ? t - u : 0);
    } while (!__atomic_compare_exchange_n(&s->pair, &p, np, 1,
                                          __ATOMIC_SEQ_CST,
                                          __ATOMIC_RELAXED));
}

/* Give back the units of dead processes.  Returns the number of units
 * recovered. */
static uint32_t
count_recover(SemLockObject *self)
{
    shared_sem *s = self->sem;
    uint32_t total = 0;
    for (int i = 0; i < SEM_NSLOTS; i++) {
        sem_slot *sl = &s->slots[i];
        uint32_t pid = __atomic_load_n(&sl->pid, __ATOMIC_ACQUIRE);
        if (pid == 0) {
            continue;
        }
        uint64_t start = __atomic_load_n(&sl->start, __ATOMIC_ACQUIRE);
        if (fastmp_platform_pid_alive(pid, start)) {
            continue;
        }
        uint32_t u = slot_settle(sl, pid, start);
        if (u != 0) {
            count_settle(s, u, 1);
            total += u;
        }
        /* Free it, unless it was freed (and maybe claimed) meanwhile. */
        uint64_t st = start;
        if (__atomic_compare_exchange_n(&sl->start, &st, 0, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            (void)__atomic_compare_exchange_n(&sl->pid, &pid, 0, 0,
                                              __ATOMIC_ACQ_REL,
                                              __ATOMIC_RELAXED);
        }
    }
    if (total > 1) {
        (void)fastmp_platform_futex_wake(&s->word, (int)total - 1);
    }
    return total;
}

/* Try once with the GIL held.  1 acquired, 0 not. */
static inline int
try_once(SemLockObject *self)
{
    if (self->mutex) {
        return mutex_try(self);
    }
    int r = count_take(self->sem);
    if (r == 2) {
        count_track(self);
    }
    return r != 0;
}

/* ---- acquire/release core ---------------------------------------- */

static int
warn_abandoned(SemLockObject *self)
{
    PyObject *cat = module_warning();
    return PyErr_WarnFormat(cat != NULL ? cat : PyExc_RuntimeWarning, 1,
                            "%s was held by a process that died; the "
                            "state it protects may be inconsistent",
                            self->mutex ? "lock" : "semaphore");
}

/* Returns 1 acquired, 0 timed out, -1 exception. */
static int
acquire_slow(SemLockObject *self, const fastmp_deadline *d)
{
    shared_sem *s = self->sem;
    int result = -1;
    int64_t next_check;
    int64_t t0 = fastmp_now_ns();
    /* While recent waits were short, watch `word` first, before counting
     * ourselves in `nwaiters` (which makes every release pay for a futex
     * wake-up call). */
    for (;;) {
        uint32_t v = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
        int free_now = self->mutex ? (v == 0) : (v != 0);
        if (!free_now && !fastmp_spin_watch(&s->word, v, &self->spin, t0)) {
            break;
        }
        if (try_once(self)) {
            fastmp_spin_learn(&self->spin, fastmp_now_ns() - t0, 1);
            return 1;
        }
    }
    if (PyErr_CheckSignals() < 0) {
        return -1;
    }
    fastmp_slice_start(&next_check);
    __atomic_add_fetch(&s->nwaiters, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        uint32_t v = __atomic_load_n(&s->word, __ATOMIC_SEQ_CST);
        int free_now = self->mutex ? (v == 0) : (v != 0);
        if (free_now) {
            if (try_once(self)) {
                result = 1;
                break;
            }
            continue;
        }
        int r = fastmp_wait_futex(&s->word, v, d);
        if (r < 0) {
            break;
        }
        if (try_once(self)) {
            result = 1;
            break;
        }
        /* The holder may be dead.  Looking costs syscalls, so do it at
         * most once per wait slice, however often we are woken. */
        if (r == 0 && !fastmp_slice_due(&next_check)) {
            continue;
        }
        if (self->mutex) {
            if (mutex_recover(self)) {
                if (warn_abandoned(self) < 0) {
                    mutex_release(self);
                    break;
                }
                result = 1;
                break;
            }
        }
        else if (count_recover(self) != 0) {
            if (warn_abandoned(self) < 0) {
                break;
            }
            if (try_once(self)) {
                result = 1;
                break;
            }
        }
        if (r == 1) {
            result = 0;
            break;
        }
    }
    __atomic_sub_fetch(&s->nwaiters, 1, __ATOMIC_SEQ_CST);
    if (result == 1) {
        fastmp_spin_learn(&self->spin, fastmp_now_ns() - t0, 0);
    }
    return result;
}

static inline void
note_acquired(SemLockObject *self)
{
    self->count++;
    self->last_tid = PyThread_get_thread_ident();
}

/* Returns 1 acquired, 0 not, -1 exception. */
static int
do_acquire(SemLockObject *self, int blocking, PyObject *timeout)
{
    fork_check(self);
    if (self->kind == SEMLOCK_RECURSIVE_MUTEX && is_mine(self)) {
        self->count++;
        return 1;
    }
    fastmp_deadline d;
    int nan_timeout = 0;
    d.forever = 1;
    if (blocking && timeout != NULL && timeout != Py_None) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        /* As the stdlib: a free lock is taken whatever the timeout. */
        nan_timeout = isnan(t);
        if (!nan_timeout) {
            fastmp_deadline_from_seconds(t < 0 ? 0 : t, &d);
        }
    }
    if (try_once(self)) {
        note_acquired(self);
        return 1;
    }
    if (!blocking) {
        return 0;
    }
    if (nan_timeout) {
        /* The stdlib hands sem_timedwait the deadline NaN makes, which
         * it rejects. */
        errno = EINVAL;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* A brief spin: a holder on the other core may be about to leave.
     * Only reads until the lock looks free, so that the holder keeps the
     * cache line meanwhile (a failed CAS takes it away too). */
    for (int i = 0; i < SPIN_TRIES; i++) {
        fastmp_cpu_relax();
        uint32_t v = __atomic_load_n(&self->sem->word, __ATOMIC_RELAXED);
        if ((self->mutex ? v == 0 : v != 0) && try_once(self)) {
            note_acquired(self);
            return 1;
        }
    }
    int r = acquire_slow(self, &d);
    if (r == 1) {
        note_acquired(self);
    }
    return r;
}

/* Returns 0 or -1 with an exception set. */
static int
do_release(SemLockObject *self)
{
    shared_sem *s = self->sem;
    fork_check(self);
    if (self->kind == SEMLOCK_RECURSIVE_MUTEX) {
        if (!is_mine(self)) {
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned "
                            "by thread");
            return -1;
        }
        if (self->count > 1) {
            self->count--;
            return 0;
        }
        self->count--;
        mutex_release(self);
        return 0;
    }
    if (self->mutex) {
        if (__atomic_load_n(&s->word, __ATOMIC_ACQUIRE) == 0) {
            PyErr_SetString(PyExc_ValueError,
                            "semaphore or lock released too many times");
            return -1;
        }
        mutex_release(self);
        self->count--;
        return 0;
    }
    int own;
    int paid = count_pay(self, &own);
    uint64_t p = __atomic_load_n(&s->pair, __ATOMIC_RELAXED);
    uint64_t np;
    do {
        uint32_t v = PAIR_WORD(p), t = PAIR_TRACKED(p);
        if ((int64_t)v >= (int64_t)self->maxvalue) {
            if (paid >= 0) {
                count_unpay(s, paid, own);
            }
            PyErr_SetString(PyExc_ValueError,
                            self->maxvalue == SEM_VALUE_MAX_
                                ? "semaphore value overflow"
                                : "semaphore or lock released too many "
                                  "times");
            return -1;
        }
        np = PAIR(v + 1, (paid >= 0 && t > 0) ? t - 1 : t);
    } while (!__atomic_compare_exchange_n(&s->pair, &p, np, 1,
                                          __ATOMIC_SEQ_CST,
                                          __ATOMIC_RELAXED));
    if (__atomic_load_n(&s->nwaiters, __ATOMIC_SEQ_CST) != 0) {
        (void)fastmp_platform_futex_wake(&s->word, 1);
    }
    self->count--;
    return 0;
}

/* ---- the Python type --------------------------------------------- */

static SemLockObject *
semlock_alloc(PyTypeObject *type, int kind, int maxvalue, PyObject *name)
{
    SemLockObject *self = (SemLockObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->kind = kind;
    self->maxvalue = maxvalue;
    self->mutex = (kind == SEMLOCK_RECURSIVE_MUTEX || maxvalue == 1);
    self->name = Py_NewRef(name);
    self->slot_idx = -1;
    fastmp_spin_init(&self->spin);
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    /* 3.11 specializes `lock.acquire()` on an object with an instance
     * dict only once that dict exists (3.12 copes with a missing one);
     * without it every call pays a full method lookup. */
    self->dict = PyDict_New();
    if (self->dict == NULL) {
        Py_DECREF(self);
        return NULL;
    }
#endif
    return self;
}

static PyObject *semlock_create(PyTypeObject *type, int kind, int value,
                                int maxvalue, PyObject *name);

static PyObject *
semlock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "value", "maxvalue", "name", "unlink",
                             NULL};
    int kind, value, maxvalue, unlink;
    PyObject *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiOp:SemLock", kwlist,
                                     &kind, &value, &maxvalue, &name,
                                     &unlink)) {
        return NULL;
    }
    if (kind != SEMLOCK_RECURSIVE_MUTEX && kind != SEMLOCK_SEMAPHORE) {
        PyErr_SetString(PyExc_ValueError, "unrecognized kind");
        return NULL;
    }
    return semlock_create(type, kind, value, maxvalue, name);
}

/* A new SemLock of `type` with a fresh shared block. */
static PyObject *
semlock_create(PyTypeObject *type, int kind, int value, int maxvalue,
               PyObject *name)
{
    if (value < 0 || maxvalue < 0 || value > maxvalue) {
        errno = EINVAL;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (name != Py_None && !PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "name must be a str or None");
        return NULL;
    }
    SemLockObject *self = semlock_alloc(type, kind, maxvalue, name);
    if (self == NULL) {
        return NULL;
    }
    if (fastmp_block_alloc(sizeof(shared_sem), &self->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    shared_sem *s = self->sem = (shared_sem *)self->blk.ptr;
    s->kind = (uint32_t)kind;
    s->maxvalue = (uint32_t)maxvalue;
    s->init = (uint32_t)value;
    if (self->mutex) {
        s->word = value > 0 ? 0 : FASTMP_SEM_NOBODY;
    }
    else {
        s->word = (uint32_t)value;
    }
    return (PyObject *)self;
}

static PyObject *
semlock_rebuild(PyObject *cls, PyObject *args)
{
    PyObject *seg, *name;
    unsigned long long offset;
    int kind, maxvalue;
    if (!PyArg_ParseTuple(args, "OKiiO:_rebuild", &seg, &offset, &kind,
                          &maxvalue, &name)) {
        return NULL;
    }
    if ((kind != SEMLOCK_RECURSIVE_MUTEX && kind != SEMLOCK_SEMAPHORE)
        || maxvalue < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid SemLock state");
        return NULL;
    }
    SemLockObject *self = semlock_alloc((PyTypeObject *)cls, kind, maxvalue,
                                        name);
    if (self == NULL) {
        return NULL;
    }
    if (fastmp_block_attach(seg, offset, sizeof(shared_sem), &self->blk)
        < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->sem = (shared_sem *)self->blk.ptr;
    if (self->sem->kind != (uint32_t)kind
        || self->sem->maxvalue != (uint32_t)maxvalue) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "invalid SemLock state");
        return NULL;
    }
    return (PyObject *)self;
}

/* Forget this process's units on the way out (counting mode): units a
 * process still holds when it lets go of the lock normally are lost, as
 * with the stdlib, never recovered later as phantom units. */
static void
forget_my_slot(SemLockObject *self)
{
    if (self->sem == NULL || self->mutex) {
        return;
    }
    int i = my_slot(self, 0);
    if (i < 0) {
        return;
    }
    sem_slot *sl = &self->sem->slots[i];
    uint32_t u = slot_settle(sl, fastmp_platform_getpid(),
                             __atomic_load_n(&sl->start, __ATOMIC_ACQUIRE));
    if (u != 0) {
        count_settle(self->sem, u, 0);
    }
    __atomic_store_n(&sl->start, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&sl->pid, 0, __ATOMIC_RELEASE);
    self->slot_pid = 0;
}

static void
semlock_dealloc(SemLockObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->in_held) {
        if (self->sem != NULL && self->blk.seg != NULL) {
            forget_my_slot(self);
        }
        held_remove(self);
    }
    self->sem = NULL;
    fastmp_block_release(&self->blk);
    Py_CLEAR(self->name);
    Py_CLEAR(self->dict);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int
semlock_traverse(SemLockObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->name);
    Py_VISIT(self->dict);
    return 0;
}

static int
semlock_clear(SemLockObject *self)
{
    Py_CLEAR(self->dict);
    return 0;
}

/* acquire()'s `block`, read as the running Python's stdlib reads it: by
 * its truth value from 3.12 on (an Argument Clinic `bool`), as a C int
 * before (`bool(accept={int})`: a list or a float is a TypeError there).
 * Returns 0 with *out set, or -1 with an exception set. */
static int
parse_block(PyObject *block, int *out)
{
#if PY_VERSION_HEX >= 0x030C0000
    int b = PyObject_IsTrue(block);
    if (b < 0) {
        return -1;
    }
    *out = b;
    return 0;
#else
#  if PY_VERSION_HEX < 0x030A0000
    /* 3.9's PyLong_AsLong would still take a float's __int__. */
    if (PyFloat_Check(block)) {
        PyErr_SetString(PyExc_TypeError,
                        "integer argument expected, got float");
        return -1;
    }
#  endif
    long v = PyLong_AsLong(block);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v > INT_MAX || v < INT_MIN) {
        PyErr_SetString(PyExc_OverflowError,
                        "Python int too large to convert to C int");
        return -1;
    }
    *out = v != 0;
    return 0;
#endif
}

static PyObject *
semlock_acquire(SemLockObject *self, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *block = NULL, *timeout = NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "acquire() takes at most 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (nargs >= 1) {
        block = args[0];
    }
    if (nargs == 2) {
        timeout = args[1];
    }
    if (kwnames != NULL) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            PyObject *v = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(k, "block") == 0
                && block == NULL) {
                block = v;
            }
            else if (PyUnicode_CompareWithASCIIString(k, "timeout") == 0
                     && timeout == NULL) {
                timeout = v;
            }
            else {
                PyErr_Format(PyExc_TypeError,
                             "acquire() got an unexpected or repeated "
                             "keyword argument '%U'", k);
                return NULL;
            }
        }
    }
    int blocking = 1;
    if (block != NULL && parse_block(block, &blocking) < 0) {
        return NULL;
    }
    if (timeout != NULL && timeout != Py_None && !blocking) {
        /* Validate the type like the stdlib does, then ignore it. */
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
    }
    int r = do_acquire(self, blocking, timeout);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
semlock_release(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (do_release(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
semlock_enter(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    int r = do_acquire(self, 1, NULL);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
semlock_exit(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs)
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
    if (do_release(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- `with lock:` without two new method objects per statement ------
 *
 * Up to 3.13 the `with` statement looks __enter__ and __exit__ up on the
 * type and binds each to the lock: for C methods that is two new
 * bound-method objects per statement, allocated, tracked by the GC and
 * freed again, which costs more than the locking itself.  So the types'
 * __enter__ and __exit__ are descriptors of our own (SpecialDescr).
 * Looked up on the class they behave like method descriptors (callable
 * with the lock as first argument); bound to a lock they give a
 * BoundSpecial that holds the lock (a strong reference, as a bound
 * method does), comes from a small free list and calls do_acquire /
 * do_release directly. */

#define BOUND_FREE_MAX 8

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *lock;
    int is_exit;
} BoundSpecial;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *owner;        /* the type whose dict holds it */
    int is_exit;
} SpecialDescr;

static PyTypeObject *bound_type;    /* set once by fastmp_semlock_exec */
static BoundSpecial *bound_free[BOUND_FREE_MAX];
static int bound_nfree;

static const char *
special_name(int is_exit)
{
    return is_exit ? "__exit__" : "__enter__";
}

static PyObject *
special_call(PyObject *lock, int is_exit, PyObject *const *args,
             Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments",
                     special_name(is_exit));
        return NULL;
    }
    if (is_exit) {
        return semlock_exit((SemLockObject *)lock, args, nargs);
    }
    if (nargs != 0) {
        PyErr_Format(PyExc_TypeError,
                     "__enter__() takes no arguments (%zd given)", nargs);
        return NULL;
    }
    return semlock_enter((SemLockObject *)lock, NULL);
}

static PyObject *
bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    BoundSpecial *b = (BoundSpecial *)callable;
    if (b->lock == NULL) {
        /* Only after the GC broke a cycle through this object. */
        PyErr_SetString(PyExc_ReferenceError, "the lock is gone");
        return NULL;
    }
    return special_call(b->lock, b->is_exit, args,
                        PyVectorcall_NARGS(nargsf), kwnames);
}

static int
bound_traverse(BoundSpecial *b, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(b));
    Py_VISIT(b->lock);
    return 0;
}

static int
bound_clear(BoundSpecial *b)
{
    Py_CLEAR(b->lock);
    return 0;
}

static void
bound_dealloc(BoundSpecial *b)
{
    PyTypeObject *tp = Py_TYPE(b);
    PyObject_GC_UnTrack(b);
    Py_CLEAR(b->lock);
    if (bound_nfree < BOUND_FREE_MAX) {
        bound_free[bound_nfree++] = b;
    }
    else {
        PyObject_GC_Del(b);
    }
    Py_DECREF(tp);
}

static PyObject *
bound_new(PyObject *lock, int is_exit)
{
    BoundSpecial *b;
    if (bound_nfree > 0) {
        b = bound_free[--bound_nfree];
        (void)PyObject_Init((PyObject *)b, bound_type);
    }
    else {
        b = PyObject_GC_New(BoundSpecial, bound_type);
        if (b == NULL) {
            return NULL;
        }
    }
    b->vectorcall = bound_vectorcall;
    b->lock = Py_NewRef(lock);
    b->is_exit = is_exit;
    PyObject_GC_Track(b);
    return (PyObject *)b;
}

static PyObject *
bound_repr(BoundSpecial *b)
{
    return PyUnicode_FromFormat("<built-in method %s of %s object at %p>",
                                special_name(b->is_exit),
                                Py_TYPE(b->lock)->tp_name, b->lock);
}

static PyObject *
bound_richcompare(PyObject *a, PyObject *o, int op)
{
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(o) != Py_TYPE(a)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    BoundSpecial *x = (BoundSpecial *)a, *y = (BoundSpecial *)o;
    int eq = x->lock == y->lock && x->is_exit == y->is_exit;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static Py_hash_t
bound_hash(BoundSpecial *b)
{
    Py_hash_t h = PyObject_Hash(b->lock);
    if (h == -1) {
        return -1;
    }
    h ^= b->is_exit ? 0x5bd1e995 : 0x27d4eb2d;
    return h == -1 ? -2 : h;
}

static PyObject *
bound_get_name(BoundSpecial *b, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(special_name(b->is_exit));
}

static PyObject *
bound_get_self(BoundSpecial *b, void *Py_UNUSED(c))
{
    return Py_NewRef(b->lock);
}

static PyGetSetDef bound_getset[] = {
    {"__name__", (getter)bound_get_name, NULL, NULL, NULL},
    {"__self__", (getter)bound_get_self, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef special_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(BoundSpecial, vectorcall),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot bound_slots[] = {
    {Py_tp_dealloc, bound_dealloc},
    {Py_tp_traverse, bound_traverse},
    {Py_tp_clear, bound_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, bound_repr},
    {Py_tp_richcompare, bound_richcompare},
    {Py_tp_hash, bound_hash},
    {Py_tp_getset, bound_getset},
    {Py_tp_members, special_members},
    {0, NULL},
};

static PyType_Spec bound_spec = {
    .name = "fastmp._fastmp.lock_method",
    .basicsize = sizeof(BoundSpecial),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_HAVE_VECTORCALL | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = bound_slots,
};

static int
descr_check(SpecialDescr *d, PyObject *obj)
{
    if (PyObject_TypeCheck(obj, d->owner)) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError,
                 "descriptor '%s' for '%s' objects doesn't apply to a "
                 "'%s' object", special_name(d->is_exit), d->owner->tp_name,
                 Py_TYPE(obj)->tp_name);
    return -1;
}

static PyObject *
descr_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    SpecialDescr *d = (SpecialDescr *)callable;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 1) {
        PyErr_Format(PyExc_TypeError,
                     "unbound method %s() needs an argument",
                     special_name(d->is_exit));
        return NULL;
    }
    if (descr_check(d, args[0]) < 0) {
        return NULL;
    }
    return special_call(args[0], d->is_exit, args + 1, n - 1, kwnames);
}

static PyObject *
descr_get(SpecialDescr *d, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL) {
        return Py_NewRef(d);
    }
    if (descr_check(d, obj) < 0) {
        return NULL;
    }
    return bound_new(obj, d->is_exit);
}

static int
descr_traverse(SpecialDescr *d, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(d));
    return 0;
}

static void
descr_dealloc(SpecialDescr *d)
{
    PyTypeObject *tp = Py_TYPE(d);
    PyObject_GC_UnTrack(d);
    PyObject_GC_Del(d);
    Py_DECREF(tp);
}

static PyObject *
descr_repr(SpecialDescr *d)
{
    return PyUnicode_FromFormat("<method '%s' of '%s' objects>",
                                special_name(d->is_exit), d->owner->tp_name);
}

static PyObject *
descr_get_name(SpecialDescr *d, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(special_name(d->is_exit));
}

static PyObject *
descr_get_qualname(SpecialDescr *d, void *Py_UNUSED(c))
{
    return PyUnicode_FromFormat("%s.%s", d->owner->tp_name,
                                special_name(d->is_exit));
}

static PyObject *
descr_get_objclass(SpecialDescr *d, void *Py_UNUSED(c))
{
    return Py_NewRef(d->owner);
}

static PyGetSetDef descr_getset[] = {
    {"__name__", (getter)descr_get_name, NULL, NULL, NULL},
    {"__qualname__", (getter)descr_get_qualname, NULL, NULL, NULL},
    {"__objclass__", (getter)descr_get_objclass, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef descr_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(SpecialDescr, vectorcall),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot descr_slots[] = {
    {Py_tp_dealloc, descr_dealloc},
    {Py_tp_traverse, descr_traverse},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, descr_get},
    {Py_tp_repr, descr_repr},
    {Py_tp_getset, descr_getset},
    {Py_tp_members, descr_members},
    {0, NULL},
};

static PyType_Spec descr_spec = {
    .name = "fastmp._fastmp.lock_method_descriptor",
    .basicsize = sizeof(SpecialDescr),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_HAVE_VECTORCALL | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = descr_slots,
};

/* Put fresh __enter__/__exit__ descriptors into type t's dict. */
static int
install_specials(PyTypeObject *descr_type, PyTypeObject *t)
{
    for (int is_exit = 0; is_exit < 2; is_exit++) {
        SpecialDescr *d = PyObject_GC_New(SpecialDescr, descr_type);
        if (d == NULL) {
            return -1;
        }
        d->vectorcall = descr_vectorcall;
        d->owner = t;           /* borrowed: t's dict holds d */
        d->is_exit = is_exit;
        PyObject_GC_Track(d);
        int r = PyDict_SetItemString(t->tp_dict, special_name(is_exit),
                                     (PyObject *)d);
        Py_DECREF(d);
        if (r < 0) {
            return -1;
        }
    }
    PyType_Modified(t);
    return 0;
}

static PyObject *
semlock_count(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    fork_check(self);
    return PyLong_FromLong((long)self->count);
}

static PyObject *
semlock_is_mine(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(is_mine(self));
}

static long
get_value(SemLockObject *self)
{
    uint32_t v = __atomic_load_n(&self->sem->word, __ATOMIC_ACQUIRE);
    if (self->mutex) {
        return v == 0 ? 1 : 0;
    }
    return (long)v;
}

static PyObject *
semlock_get_value(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(get_value(self));
}

static PyObject *
semlock_is_zero(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(get_value(self) == 0);
}

static PyObject *
semlock_after_fork(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    self->count = 0;
    self->slot_pid = 0;
    Py_RETURN_NONE;
}

static PyObject *
semlock_state(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *seg = fastmp_block_segment(&self->blk);
    if (seg == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NKiiO)", seg, (unsigned long long)self->blk.offset,
                         self->kind, self->maxvalue, self->name);
}

static PyObject *
semlock_get_kind(SemLockObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->kind);
}

static PyObject *
semlock_get_maxvalue(SemLockObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->maxvalue);
}

static PyObject *
semlock_get_handle(SemLockObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong((unsigned long long)self->blk.offset);
}

static PyObject *
semlock_get_self(SemLockObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef((PyObject *)self);
}

static PyObject *
semlock_get_name(SemLockObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->name);
}

static int
semlock_getbuffer(SemLockObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->sem->user,
                             (Py_ssize_t)sizeof(self->sem->user), 0, flags);
}

static void
semlock_releasebuffer(SemLockObject *self, Py_buffer *view)
{
    FASTMP_UNUSED(self);
    FASTMP_UNUSED(view);
}

#define SEMLOCK_METHODS \
    {"acquire", (PyCFunction)(void (*)(void))semlock_acquire, \
     METH_FASTCALL | METH_KEYWORDS, \
     "acquire($self, /, block=True, timeout=None)\n--\n\n" \
     "Acquire the semaphore/lock."}, \
    {"release", (PyCFunction)semlock_release, METH_NOARGS, \
     "release($self, /)\n--\n\nRelease the semaphore/lock."}, \
    {"__enter__", (PyCFunction)semlock_enter, METH_NOARGS, \
     "__enter__($self, /)\n--\n\nEnter the semaphore/lock."}, \
    {"__exit__", (PyCFunction)(void (*)(void))semlock_exit, METH_FASTCALL, \
     "__exit__($self, *args, /)\n--\n\nExit the semaphore/lock."}, \
    {"_count", (PyCFunction)semlock_count, METH_NOARGS, \
     "_count($self, /)\n--\n\nNum of `acquire()`s minus num of " \
     "`release()`s for this process."}, \
    {"_is_mine", (PyCFunction)semlock_is_mine, METH_NOARGS, \
     "_is_mine($self, /)\n--\n\nWhether the lock is owned by this " \
     "thread."}, \
    {"_get_value", (PyCFunction)semlock_get_value, METH_NOARGS, \
     "_get_value($self, /)\n--\n\nGet the value of the semaphore."}, \
    {"_is_zero", (PyCFunction)semlock_is_zero, METH_NOARGS, \
     "_is_zero($self, /)\n--\n\nReturn whether semaphore has value zero."}, \
    {"_after_fork", (PyCFunction)semlock_after_fork, METH_NOARGS, \
     "_after_fork($self, /)\n--\n\nRezero the net acquisition count after " \
     "fork()."}, \
    {"_state", (PyCFunction)semlock_state, METH_NOARGS, \
     "_state($self, /)\n--\n\n(segment, offset, kind, maxvalue, name): " \
     "what _rebuild takes; pickle only while spawning a child."}, \
    {"_rebuild", (PyCFunction)semlock_rebuild, METH_VARARGS | METH_CLASS, \
     "_rebuild(segment, offset, kind, maxvalue, name, /)\n--\n\n" \
     "Attach to an existing SemLock (in a child process)."},

/* For the stdlib-named subtypes: helpers kept in fastmp/synchronize.py
 * (cold paths: repr and pickling). */
static PyObject *
call_sync_helper(const char *helper, PyObject *self)
{
    PyObject *mod = PyImport_ImportModule("fastmp.synchronize");
    if (mod == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_CallMethod(mod, helper, "O", self);
    Py_DECREF(mod);
    return r;
}

static PyObject *
semlock_repr_helper(PyObject *self)
{
    return call_sync_helper("_repr", self);
}

static PyObject *
semlock_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return call_sync_helper("_reduce", self);
}

#define SEMLOCK_SUB_METHODS \
    {"locked", (PyCFunction)semlock_is_zero, METH_NOARGS, \
     "locked($self, /)\n--\n\nReturn True if it cannot be acquired now."}, \
    {"__reduce__", (PyCFunction)semlock_reduce, METH_NOARGS, \
     "__reduce__($self, /)\n--\n\nPickle (only while spawning a child)."},

static PyMethodDef semlock_methods[] = {
    SEMLOCK_METHODS
    {NULL, NULL, 0, NULL},
};

static PyMethodDef lock_methods[] = {
    SEMLOCK_METHODS
    SEMLOCK_SUB_METHODS
    {NULL, NULL, 0, NULL},
};

static PyMethodDef sem_methods[] = {
    SEMLOCK_METHODS
    SEMLOCK_SUB_METHODS
    {"get_value", (PyCFunction)semlock_get_value, METH_NOARGS,
     "get_value($self, /)\n--\n\nThe semaphore's current value."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef semlock_getset[] = {
    {"kind", (getter)semlock_get_kind, NULL, "the kind", NULL},
    {"maxvalue", (getter)semlock_get_maxvalue, NULL, "the maximum value",
     NULL},
    {"handle", (getter)semlock_get_handle, NULL,
     "an integer naming the lock (its arena offset)", NULL},
    {"name", (getter)semlock_get_name, NULL, "the name (or None)", NULL},
    {"_semlock", (getter)semlock_get_self, NULL,
     "the object itself (the stdlib wraps a separate SemLock)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef semlock_members[] = {
    {"__weaklistoffset__", T_PYSSIZET,
     offsetof(SemLockObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef sub_members[] = {
    {"__weaklistoffset__", T_PYSSIZET,
     offsetof(SemLockObject, weakreflist), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(SemLockObject, dict), READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot semlock_slots[] = {
    {Py_tp_new, semlock_new},
    {Py_tp_dealloc, semlock_dealloc},
    {Py_tp_traverse, semlock_traverse},
    {Py_tp_clear, semlock_clear},
    {Py_tp_methods, semlock_methods},
    {Py_tp_getset, semlock_getset},
    {Py_tp_members, semlock_members},
    {Py_bf_getbuffer, semlock_getbuffer},
    {Py_bf_releasebuffer, semlock_releasebuffer},
    {Py_tp_doc, "SemLock(kind, value, maxvalue, name, unlink)\n--\n\n"
                "Semaphore/Mutex type on a futex word in shared memory."},
    {0, NULL},
};

static PyType_Spec semlock_spec = {
    .name = "fastmp._fastmp.SemLock",
    .basicsize = sizeof(SemLockObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
             | FASTMP_TPFLAGS_IMMUTABLE,
    .slots = semlock_slots,
};

/* ---- the stdlib-named types: Lock, RLock, Semaphore, BoundedSemaphore.
 * C subtypes (not Python subclasses) so that method calls on them get the
 * interpreter's fast paths for C methods; `ctx` is accepted and unused. */

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:Lock", kwlist, &ctx)) {
        return NULL;
    }
    return semlock_create(type, SEMLOCK_SEMAPHORE, 1, 1, Py_None);
}

static PyObject *
rlock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:RLock", kwlist,
                                     &ctx)) {
        return NULL;
    }
    return semlock_create(type, SEMLOCK_RECURSIVE_MUTEX, 1, 1, Py_None);
}

static PyObject *
semaphore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "ctx", NULL};
    PyObject *ctx = NULL;
    int value = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i$O:Semaphore", kwlist,
                                     &value, &ctx)) {
        return NULL;
    }
    return semlock_create(type, SEMLOCK_SEMAPHORE, value, SEM_VALUE_MAX_,
                          Py_None);
}

static PyObject *
bounded_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "ctx", NULL};
    PyObject *ctx = NULL;
    int value = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i$O:BoundedSemaphore",
                                     kwlist, &value, &ctx)) {
        return NULL;
    }
    return semlock_create(type, SEMLOCK_SEMAPHORE, value, value, Py_None);
}

#define SUB_SLOTS(newfunc, methods, doc) \
    {Py_tp_new, newfunc}, \
    {Py_tp_traverse, semlock_traverse}, \
    {Py_tp_clear, semlock_clear}, \
    {Py_tp_repr, semlock_repr_helper}, \
    {Py_tp_methods, methods}, \
    {Py_tp_members, sub_members}, \
    {Py_tp_doc, doc}, \
    {0, NULL},

static PyType_Slot lock_slots[] = {
    SUB_SLOTS(lock_new, lock_methods,
              "Lock(*, ctx=None)\n--\n\nA non-recursive lock shared by "
              "processes.")
};
static PyType_Slot rlock_slots[] = {
    SUB_SLOTS(rlock_new, lock_methods,
              "RLock(*, ctx=None)\n--\n\nA recursive lock shared by "
              "processes.")
};
static PyType_Slot semaphore_slots[] = {
    SUB_SLOTS(semaphore_new, sem_methods,
              "Semaphore(value=1, *, ctx=None)\n--\n\nA semaphore shared "
              "by processes.")
};
static PyType_Slot bounded_slots[] = {
    SUB_SLOTS(bounded_new, sem_methods,
              "BoundedSemaphore(value=1, *, ctx=None)\n--\n\nA bounded "
              "semaphore shared by processes.")
};

#define SUB_FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE \
                   | Py_TPFLAGS_HAVE_GC)

static PyType_Spec sub_specs[] = {
    {"fastmp.synchronize.Lock", sizeof(SemLockObject), 0, SUB_FLAGS,
     lock_slots},
    {"fastmp.synchronize.RLock", sizeof(SemLockObject), 0, SUB_FLAGS,
     rlock_slots},
    {"fastmp.synchronize.Semaphore", sizeof(SemLockObject), 0, SUB_FLAGS,
     semaphore_slots},
    {"fastmp.synchronize.BoundedSemaphore", sizeof(SemLockObject), 0,
     SUB_FLAGS, bounded_slots},
};

/* ---- Event: a flag and a generation count on futex words ----------
 *
 * The same shared block as a SemLock (so pickling is shared), created as
 * a counting semaphore with maxvalue 0: `word` is the flag (0 unset,
 * 1 set; plain atomic stores), `gen` counts set() calls (atomic add, after
 * the flag is stored) and is the word waiters sleep on, `nwaiters` counts
 * sleepers so that set() only wakes when someone sleeps.  A waiter returns
 * True once `gen` moved past what it read on entry, even if clear()
 * followed at once, as threading.Event's waiters do: it was waiting when
 * the flag was set.  Nobody holds anything, so a process dying inside any
 * method leaves nothing to recover. */

static PyObject *
event_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:Event", kwlist,
                                     &ctx)) {
        return NULL;
    }
    return semlock_create(type, SEMLOCK_SEMAPHORE, 0, 0, Py_None);
}

static PyObject *
event_is_set(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(
        __atomic_load_n(&self->sem->word, __ATOMIC_ACQUIRE) != 0);
}

static PyObject *
event_set(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    shared_sem *s = self->sem;
    __atomic_store_n(&s->word, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&s->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->nwaiters, __ATOMIC_SEQ_CST) != 0) {
        if (fastmp_platform_futex_wake(&s->gen, INT32_MAX) < 0) {
            return fastmp_oserror_syscall("futex");
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
event_clear(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    __atomic_store_n(&self->sem->word, 0, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
event_wait(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames)
{
    shared_sem *s = self->sem;
    PyObject *timeout = nargs >= 1 ? args[0] : NULL;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError,
                     "wait() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (kwnames != NULL) {
        if (PyTuple_GET_SIZE(kwnames) != 1 || timeout != NULL
            || PyUnicode_CompareWithASCIIString(
                   PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0) {
            PyErr_SetString(PyExc_TypeError,
                            "wait() got an unexpected keyword argument");
            return NULL;
        }
        timeout = args[nargs];
    }
    fastmp_deadline d;
    if (fastmp_deadline_from_object(timeout, &d) < 0) {
        return NULL;
    }
    /* The generation first: a set() after this read moves it, whether or
     * not the flag is still set when we look. */
    uint32_t g = __atomic_load_n(&s->gen, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->word, __ATOMIC_SEQ_CST) != 0) {
        Py_RETURN_TRUE;
    }
    __atomic_add_fetch(&s->nwaiters, 1, __ATOMIC_SEQ_CST);
    int r = 0;
    while (__atomic_load_n(&s->gen, __ATOMIC_SEQ_CST) == g) {
        r = fastmp_wait_futex_spin(&s->gen, g, &d, &self->spin);
        if (r != 0) {
            break;
        }
    }
    __atomic_sub_fetch(&s->nwaiters, 1, __ATOMIC_SEQ_CST);
    if (r < 0) {
        return NULL;
    }
    if (__atomic_load_n(&s->gen, __ATOMIC_SEQ_CST) != g) {
        Py_RETURN_TRUE;
    }
    /* Timed out: the flag as it is now. */
    return PyBool_FromLong(__atomic_load_n(&s->word, __ATOMIC_ACQUIRE) != 0);
}

static PyMethodDef event_methods[] = {
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS,
     "is_set($self, /)\n--\n\nReturn True if the flag is set."},
    {"set", (PyCFunction)event_set, METH_NOARGS,
     "set($self, /)\n--\n\nSet the flag and wake every waiter."},
    {"clear", (PyCFunction)event_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nReset the flag."},
    {"wait", (PyCFunction)(void (*)(void))event_wait,
     METH_FASTCALL | METH_KEYWORDS,
     "wait($self, /, timeout=None)\n--\n\nBlock until the flag is set "
     "or the timeout passes; return the flag."},
    {"_state", (PyCFunction)semlock_state, METH_NOARGS,
     "_state($self, /)\n--\n\nWhat _rebuild takes."},
    {"_rebuild", (PyCFunction)semlock_rebuild, METH_VARARGS | METH_CLASS,
     "_rebuild(segment, offset, kind, maxvalue, name, /)\n--\n\n"
     "Attach to an existing Event (in a child process)."},
    {"__reduce__", (PyCFunction)semlock_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickle (only while spawning a child)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot event_slots[] = {
    {Py_tp_new, event_new},
    {Py_tp_dealloc, semlock_dealloc},
    {Py_tp_traverse, semlock_traverse},
    {Py_tp_clear, semlock_clear},
    {Py_tp_repr, semlock_repr_helper},
    {Py_tp_methods, event_methods},
    {Py_tp_members, sub_members},
    {Py_tp_doc, "Event(*, ctx=None)\n--\n\nAn event shared by processes."},
    {0, NULL},
};

static PyType_Spec event_spec = {
    "fastmp.synchronize.Event", sizeof(SemLockObject), 0, SUB_FLAGS,
    event_slots,
};

/* Clear this process's holder slots in every counting semaphore it used:
 * run when a process ends normally, so its units are not recovered as
 * phantom units after it is gone. */
static PyObject *
semlock_forget_all(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    FASTMP_UNUSED(module);
    for (SemLockObject *o = held_head; o != NULL; o = o->held_next) {
        if (o->sem != NULL) {
            forget_my_slot(o);
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef semlock_functions[] = {
    {"_semlock_forget_all", semlock_forget_all, METH_NOARGS,
     "_semlock_forget_all($module, /)\n--\n\n"
     "Forget the semaphore units this process holds (normal exit)."},
    {NULL, NULL, 0, NULL},
};

int
fastmp_semlock_exec(PyObject *m, fastmp_state *st)
{
    if (PyModule_AddFunctions(m, semlock_functions) < 0) {
        return -1;
    }
    PyObject *t = PyType_FromModuleAndSpec(m, &semlock_spec, NULL);
    if (t == NULL) {
        return -1;
    }
    st->semlock.SemLockType = (PyTypeObject *)t;
    if (bound_type == NULL) {
        /* Kept for the life of the process, like its free list. */
        bound_type = (PyTypeObject *)PyType_FromModuleAndSpec(
            m, &bound_spec, NULL);
        if (bound_type == NULL) {
            return -1;
        }
    }
    PyTypeObject *descr_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &descr_spec, NULL);
    if (descr_type == NULL) {
        return -1;
    }
    if (install_specials(descr_type, (PyTypeObject *)t) < 0) {
        Py_DECREF(descr_type);
        return -1;
    }
    PyObject *d = ((PyTypeObject *)t)->tp_dict;
    PyObject *v = PyLong_FromLong(SEM_VALUE_MAX_);
    if (v == NULL || PyDict_SetItemString(d, "SEM_VALUE_MAX", v) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    PyType_Modified((PyTypeObject *)t);
    if (PyModule_AddObject(m, "SemLock", Py_NewRef(t)) < 0) {
        Py_DECREF(t);
        return -1;
    }
    PyObject *ev = PyType_FromModuleAndSpec(m, &event_spec, NULL);
    if (ev == NULL) {
        return -1;
    }
    if (PyModule_AddObject(m, "Event", ev) < 0) {
        Py_DECREF(ev);
        return -1;
    }
    PyObject *sembase = NULL;
    for (size_t i = 0; i < sizeof(sub_specs) / sizeof(sub_specs[0]); i++) {
        /* BoundedSemaphore derives from Semaphore, as in the stdlib. */
        PyObject *base = (i == 3 && sembase != NULL) ? sembase : t;
        /* A tuple: 3.9 accepts no bare type here. */
        PyObject *bases = PyTuple_Pack(1, base);
        if (bases == NULL) {
            return -1;
        }
        PyObject *sub = PyType_FromModuleAndSpec(m, &sub_specs[i], bases);
        Py_DECREF(bases);
        if (sub == NULL || install_specials(descr_type,
                                            (PyTypeObject *)sub) < 0) {
            Py_XDECREF(sub);
            Py_DECREF(descr_type);
            return -1;
        }
        const char *short_name = strrchr(sub_specs[i].name, '.') + 1;
        if (i == 2) {
            sembase = sub;
        }
        if (PyModule_AddObject(m, short_name, sub) < 0) {
            Py_DECREF(sub);
            Py_DECREF(descr_type);
            return -1;
        }
    }
    Py_DECREF(descr_type);      /* its instances hold it */
    st->semlock.AbandonedLockWarning = PyErr_NewExceptionWithDoc(
        "fastmp.AbandonedLockWarning",
        "A lock or semaphore was taken over from a process that died while "
        "holding it; the state it protects may be inconsistent.",
        PyExc_RuntimeWarning, NULL);
    if (st->semlock.AbandonedLockWarning == NULL) {
        return -1;
    }
    if (PyModule_AddObject(m, "AbandonedLockWarning",
                           Py_NewRef(st->semlock.AbandonedLockWarning)) < 0) {
        Py_DECREF(st->semlock.AbandonedLockWarning);
        return -1;
    }
    if (PyModule_AddIntConstant(m, "RECURSIVE_MUTEX",
                                SEMLOCK_RECURSIVE_MUTEX) < 0
        || PyModule_AddIntConstant(m, "SEMAPHORE", SEMLOCK_SEMAPHORE) < 0
        || PyModule_AddIntConstant(m, "SEM_VALUE_MAX", SEM_VALUE_MAX_) < 0) {
        return -1;
    }
    return 0;
}

int
fastmp_semlock_traverse(fastmp_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->semlock.SemLockType);
    Py_VISIT(st->semlock.AbandonedLockWarning);
    return 0;
}

void
fastmp_semlock_clear(fastmp_state *st)
{
    Py_CLEAR(st->semlock.SemLockType);
    Py_CLEAR(st->semlock.AbandonedLockWarning);
}

PyObject *
fastmp_semlock_unwrap(PyObject *lock)
{
    fastmp_state *st = fastmp_get_state();
    if (st == NULL || st->semlock.SemLockType == NULL || lock == NULL) {
        return NULL;
    }
    if (PyObject_TypeCheck(lock, st->semlock.SemLockType)) {
        return Py_NewRef(lock);
    }
    PyObject *inner = PyObject_GetAttrString(lock, "_semlock");
    if (inner == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyObject_TypeCheck(inner, st->semlock.SemLockType)) {
        Py_DECREF(inner);
        return NULL;
    }
    /* Only the lock's own SemLock will do.  An attribute computed afresh
     * at each access (a property returning a new lock) names no lock in
     * particular: taking the one we got would lock what nobody else
     * locks, so such a lock is used through acquire/release instead. */
    PyObject *again = PyObject_GetAttrString(lock, "_semlock");
    if (again == NULL) {
        PyErr_Clear();
        Py_DECREF(inner);
        return NULL;
    }
    int same = again == inner;
    Py_DECREF(again);
    if (!same) {
        Py_DECREF(inner);
        return NULL;
    }
    return inner;
}

int
fastmp_semlock_enter(PyObject *semlock)
{
    int r = do_acquire((SemLockObject *)semlock, 1, NULL);
    return r < 0 ? -1 : 0;
}

int
fastmp_semlock_exit(PyObject *semlock)
{
    return do_release((SemLockObject *)semlock);
}

int
fastmp_semlock_held_by_me(PyObject *semlock)
{
    SemLockObject *self = (SemLockObject *)semlock;
    return self->kind == SEMLOCK_RECURSIVE_MUTEX && is_mine(self);
}

/* The words a lock-free reader of data this mutex protects checks (see
 * fastmp_semlock_seq in fastmp.h).  0 when this is not a mutex. */
int
fastmp_semlock_seq(PyObject *semlock, const uint32_t **word,
                   const uint32_t **gen)
{
    SemLockObject *self = (SemLockObject *)semlock;
    if (!self->mutex) {
        return 0;
    }
    *word = &self->sem->word;
    *gen = &self->sem->gen;
    return 1;
}
