/*
 * semlock.c -- SemLock's core: locks and semaphores on futex words in the
 * arena (the shared_sem structures are in semlock_internal.h;
 * the Python types in semlock_types.c, semlock_with.c and event.c).
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
#include "semlock_internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#ifndef SPIN_TRIES
#define SPIN_TRIES 64
#endif

/* `pair` from and to (word, tracked). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define PAIR(w, t) ((uint64_t)(uint32_t)(w) | ((uint64_t)(uint32_t)(t) << 32))
#define PAIR_WORD(p) ((uint32_t)(p))
#define PAIR_TRACKED(p) ((uint32_t)((p) >> 32))
#else
#define PAIR(w, t) ((uint64_t)(uint32_t)(t) | ((uint64_t)(uint32_t)(w) << 32))
#define PAIR_WORD(p) ((uint32_t)((p) >> 32))
#define PAIR_TRACKED(p) ((uint32_t)(p))
#endif

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

void
fastmp_sem_held_remove(SemLockObject *o)
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
    for (int i = 0; i < FASTMP_SEM_NSLOTS; i++) {
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
    for (int i = 0; i < FASTMP_SEM_NSLOTS; i++) {
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
                             __atomic_load_n(&sl->taken, __ATOMIC_RELAXED) - 1,
                             __ATOMIC_RELEASE);
            *own = 1;
            return mine;
        }
    }
    for (int i = 0; i < FASTMP_SEM_NSLOTS; i++) {
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
                                          __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
}

/* Give back the units of dead processes.  Returns the number of units
 * recovered. */
static uint32_t
count_recover(SemLockObject *self)
{
    shared_sem *s = self->sem;
    uint32_t total = 0;
    for (int i = 0; i < FASTMP_SEM_NSLOTS; i++) {
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
            (void)__atomic_compare_exchange_n(
                &sl->pid, &pid, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
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
int
fastmp_sem_acquire(SemLockObject *self, int blocking, PyObject *timeout)
{
    fastmp_sem_fork_check(self);
    if (self->kind == SEMLOCK_RECURSIVE_MUTEX && fastmp_sem_is_mine(self)) {
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
    int tries = fastmp_spin_ok() ? SPIN_TRIES : 0;
    for (int i = 0; i < tries; i++) {
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
int
fastmp_sem_release(SemLockObject *self)
{
    shared_sem *s = self->sem;
    fastmp_sem_fork_check(self);
    if (self->kind == SEMLOCK_RECURSIVE_MUTEX) {
        if (!fastmp_sem_is_mine(self)) {
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
                            self->maxvalue == FASTMP_SEM_VALUE_MAX
                                ? "semaphore value overflow"
                                : "semaphore or lock released too many "
                                  "times");
            return -1;
        }
        np = PAIR(v + 1, (paid >= 0 && t > 0) ? t - 1 : t);
    } while (!__atomic_compare_exchange_n(&s->pair, &p, np, 1,
                                          __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    if (__atomic_load_n(&s->nwaiters, __ATOMIC_SEQ_CST) != 0) {
        (void)fastmp_platform_futex_wake(&s->word, 1);
    }
    self->count--;
    return 0;
}

/* Forget this process's units on the way out (counting mode): units a
 * process still holds when it lets go of the lock normally are lost, as
 * with the stdlib, never recovered later as phantom units. */
void
fastmp_sem_forget_slot(SemLockObject *self)
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

void
fastmp_sem_forget_all(void)
{
    for (SemLockObject *o = held_head; o != NULL; o = o->held_next) {
        if (o->sem != NULL) {
            fastmp_sem_forget_slot(o);
        }
    }
}

/* ---- the C interface other areas use (fastmp.h, area: semlock) ----- */

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
    int r = fastmp_sem_acquire((SemLockObject *)semlock, 1, NULL);
    return r < 0 ? -1 : 0;
}

int
fastmp_semlock_exit(PyObject *semlock)
{
    return fastmp_sem_release((SemLockObject *)semlock);
}

int
fastmp_semlock_held_by_me(PyObject *semlock)
{
    SemLockObject *self = (SemLockObject *)semlock;
    return self->kind == SEMLOCK_RECURSIVE_MUTEX && fastmp_sem_is_mine(self);
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
