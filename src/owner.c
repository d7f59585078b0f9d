/*
 * owner.c -- the one process-shared owner lock (see fastmp.h, "owner").
 *
 * Every lock in fastmp that a process holds while it changes shared state
 * (the arena's segment lock, SemLock's mutex mode, the ShareableList
 * writer lock, the queue ring's lock) is this lock, so there is one rule
 * for what happens when its holder dies:
 *
 *   - the holder's identity (pid and start token) is part of the word it
 *     takes with its one CAS: there is no moment at which the lock is held
 *     by a process nobody can name, so a stalled live holder is never
 *     judged dead;
 *   - a waiter that finds the named process dead takes over with a CAS
 *     from exactly the value it judged: two waiters cannot both take over,
 *     and a holder that came and went meanwhile is never robbed;
 *   - the caller learns that it took over (return value 1) and repairs
 *     what the lock protects before using it.
 */
#include "fastmp.h"

int fastmp_owner_stall_armed = 0;
static double stall_seconds = 0; /* < 0: SIGSTOP ourselves */

void
fastmp_owner_stall(void)
{
    /* Disarm first: the stall happens once, at the next acquisition. */
    fastmp_owner_stall_armed = 0;
    if (stall_seconds < 0) {
        fastmp_platform_stop_self();
    }
    else {
        fastmp_platform_sleep_ns((int64_t)(stall_seconds * 1e9));
    }
}

int
fastmp_owner_dead(uint64_t v)
{
    uint32_t pid = fastmp_owner_pid(v);
    if (pid == 0 || (uint32_t)(v >> 32) == 0) {
        return 1; /* names nobody, or no token: not a real holder */
    }
    return !fastmp_platform_pid_alive32(pid, (uint32_t)(v >> 32));
}

int
fastmp_owner_takeover(uint64_t *w, uint64_t seen)
{
    if (seen == 0 || !fastmp_owner_dead(seen)) {
        return 0;
    }
    uint64_t mine = fastmp_owner_self() | (seen & FASTMP_OWNER_WAITERS);
    return __atomic_compare_exchange_n(w, &seen, mine, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}

#define OWNER_SPINS 100

int
fastmp_owner_lock(uint64_t *w, const fastmp_deadline *d, int flags)
{
    static const fastmp_deadline forever = {1, {0, 0}};
    if (d == NULL) {
        d = &forever;
    }
    uint64_t self = fastmp_owner_self();
    /* Liveness is looked at once a slice: it costs system calls. */
    int64_t next_check;
    fastmp_slice_start(&next_check);
    /* Watch briefly (reads only) for a holder on another CPU to finish
     * (on one CPU it cannot run meanwhile: no spin). */
    int spins = fastmp_spin_ok() ? OWNER_SPINS : 0;
    for (int i = 0; i < spins; i++) {
        uint64_t v = __atomic_load_n(w, __ATOMIC_RELAXED);
        if (v == 0 && fastmp_owner_try(w)) {
            return 0;
        }
        fastmp_cpu_relax();
    }
    for (;;) {
        uint64_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
        if (v == 0) {
            /* Free: take it, marking waiters since others may sleep. */
            uint64_t expected = 0;
            if (__atomic_compare_exchange_n(
                    w, &expected, self | FASTMP_OWNER_WAITERS, 0,
                    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                if (fastmp_owner_stall_armed) {
                    fastmp_owner_stall();
                }
                return 0;
            }
            continue;
        }
        if ((v & ~(uint64_t)FASTMP_OWNER_WAITERS) == self) {
            if (flags & FASTMP_OWNER_SELF_IS_STALE) {
                /* Nothing of ours can be inside: take it back. */
                uint64_t mine = self | (v & FASTMP_OWNER_WAITERS);
                if (__atomic_compare_exchange_n(
                        w, &v, mine, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                    return 1;
                }
                continue;
            }
        }
        else if (fastmp_slice_due(&next_check)) {
            if (fastmp_owner_takeover(w, v)) {
                return 1;
            }
        }
        if (!(v & FASTMP_OWNER_WAITERS)) {
            uint64_t marked = v | FASTMP_OWNER_WAITERS;
            if (!__atomic_compare_exchange_n(
                    w, &v, marked, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                continue;
            }
            v = marked;
        }
        int r;
        if (flags & FASTMP_OWNER_INTERRUPTIBLE) {
            r = fastmp_wait_futex(fastmp_owner_futex(w), (uint32_t)v, d);
        }
        else {
            /* No exception may come out of here. */
            r = fastmp_wait_futex_quiet(fastmp_owner_futex(w), (uint32_t)v, d);
        }
        if (r != 0) {
            return r < 0 ? -1 : 2;
        }
    }
}

/* ---- test hook ---------------------------------------------------- */

static PyObject *
owner_stall_py(PyObject *module, PyObject *arg)
{
    FASTMP_UNUSED(module);
    double s = PyFloat_AsDouble(arg);
    if (s == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    stall_seconds = s;
    fastmp_owner_stall_armed = 1;
    Py_RETURN_NONE;
}

static PyMethodDef owner_functions[] = {
    {"_owner_stall", owner_stall_py, METH_O,
     "_owner_stall(seconds, /)\n--\n\n"
     "Tests only: the next owner-lock acquisition in this process stalls "
     "for `seconds` while holding the lock (a negative value: the process "
     "stops itself with SIGSTOP)."},
    {NULL, NULL, 0, NULL},
};

int
fastmp_owner_exec(PyObject *m)
{
    return PyModule_AddFunctions(m, owner_functions);
}
