/*
 * wait.c -- blocking the fastmp way: one absolute CLOCK_MONOTONIC deadline,
 * the GIL released while asleep, sleeps sliced so that signal handlers
 * (Ctrl-C) run promptly and callers can look for dead peers between
 * slices.
 */
#include "fastmp.h"

#include <errno.h>
#include <math.h>

void
fastmp_deadline_from_seconds(double seconds, fastmp_deadline *d)
{
    if (seconds < 0 || isnan(seconds)) {
        d->forever = 1;
        return;
    }
    d->forever = 0;
    fastmp_platform_now(&d->at);
    /* Cap at ~30 years so the arithmetic cannot overflow time_t. */
    if (seconds > 1e9) {
        seconds = 1e9;
    }
    double whole = floor(seconds);
    d->at.tv_sec += (time_t)whole;
    fastmp_ts_add_ns(&d->at, (int64_t)((seconds - whole) * 1e9));
}

int
fastmp_deadline_from_object(PyObject *timeout, fastmp_deadline *d)
{
    if (timeout == NULL || timeout == Py_None) {
        d->forever = 1;
        return 0;
    }
    double s = PyFloat_AsDouble(timeout);
    if (s == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(s)) {
        PyErr_SetString(PyExc_ValueError, "Invalid value NaN (not a number)");
        return -1;
    }
    if (s < 0) {
        s = 0;
    }
    fastmp_deadline_from_seconds(s, d);
    return 0;
}

int
fastmp_deadline_expired(const fastmp_deadline *d)
{
    if (d->forever) {
        return 0;
    }
    struct timespec now;
    fastmp_platform_now(&now);
    return !fastmp_ts_before(&now, &d->at);
}

double
fastmp_deadline_remaining(const fastmp_deadline *d)
{
    if (d->forever) {
        return -1.0;
    }
    struct timespec now;
    fastmp_platform_now(&now);
    double r = (double)(d->at.tv_sec - now.tv_sec)
               + (double)(d->at.tv_nsec - now.tv_nsec) / 1e9;
    return r > 0 ? r : 0.0;
}

/* Sleep on word (GIL released) for at most one slice, never past d.
 * Returns 1 when this slice ended at the deadline, 0 to re-check, or
 * -errno when the futex call failed. */
static int
futex_slice(uint32_t *word, uint32_t expected, const fastmp_deadline *d)
{
    struct timespec until;
    fastmp_platform_now(&until);
    fastmp_ts_add_ns(&until, FASTMP_WAIT_SLICE_NS);
    int final_slice = 0;
    if (!d->forever && !fastmp_ts_before(&until, &d->at)) {
        until = d->at;
        final_slice = 1;
    }
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = fastmp_platform_futex_wait(word, expected, &until);
    Py_END_ALLOW_THREADS
    if (r == ETIMEDOUT) {
        return final_slice;
    }
    return r == 0 ? 0 : -r;
}

int
fastmp_wait_futex(uint32_t *word, uint32_t expected, const fastmp_deadline *d)
{
    int r = futex_slice(word, expected, d);
    if (r < 0) {
        errno = -r;
        fastmp_oserror_syscall("futex");
        return -1;
    }
    if (PyErr_CheckSignals() < 0) {
        return -1;
    }
    if (r == 1) {
        return 1;
    }
    if (!d->forever && fastmp_deadline_expired(d)) {
        return 1;
    }
    return 0;
}

int
fastmp_wait_futex_quiet(uint32_t *word, uint32_t expected,
                        const fastmp_deadline *d)
{
    int r = futex_slice(word, expected, d);
    if (r == 1) {
        return 1;
    }
    return !d->forever && fastmp_deadline_expired(d);
}

/* ---- waiting for input on a file descriptor ------------------------ */

int
fastmp_wait_readable(int fd, const fastmp_deadline *d)
{
    int r, err;

    /* First look without releasing the GIL. */
    r = fastmp_platform_poll_in(fd, 0);
    if (r > 0) {
        return 1;
    }
    if (r < 0 && errno != EINTR) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (;;) {
        double left = fastmp_deadline_remaining(d);
        int ms;

        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (left == 0.0) {
            return 0;
        }
        ms = (int)(FASTMP_WAIT_SLICE_NS / 1000000);
        if (left > 0 && left * 1000.0 < ms) {
            ms = (int)(left * 1000.0) + 1;
        }
        Py_BEGIN_ALLOW_THREADS
        r = fastmp_platform_poll_in(fd, ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (r > 0) {
            return 1;
        }
        if (r < 0 && err != EINTR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
}

/* ---- spinning before sleeping ---------------------------------------- */

int fastmp_spin_cpus_ok = -1;

int
fastmp_spin_ok_slow(void)
{
    if (fastmp_spin_cpus_ok < 0) {
        fastmp_spin_cpus_ok = fastmp_platform_ncpus() > 1;
    }
    return fastmp_spin_cpus_ok;
}

void
fastmp_spin_init(fastmp_spin *sp)
{
    sp->budget_ns = fastmp_spin_ok() ? FASTMP_SPIN_CAP_NS : 0;
}

void
fastmp_spin_learn(fastmp_spin *sp, int64_t waited, int spun)
{
    uint32_t budget = sp->budget_ns;
    if (fastmp_spin_cpus_ok != 1) {
        return;
    }
    if (waited < FASTMP_SPIN_CAP_NS) {
        uint32_t want = (uint32_t)(2 * (waited > 0 ? waited : 0));
        if (want > FASTMP_SPIN_CAP_NS) {
            want = FASTMP_SPIN_CAP_NS;
        }
        if (!spun || want > budget) {
            budget = want;
        }
    }
    else if (!spun) {
        budget /= 2;
    }
    sp->budget_ns = budget;
}

int
fastmp_spin_watch(uint32_t *word, uint32_t expected, fastmp_spin *sp,
                  int64_t t0)
{
    int64_t budget = sp->budget_ns;
    if (budget == 0 || fastmp_now_ns() - t0 >= budget) {
        return 0;
    }
    int changed = 0;
    Py_BEGIN_ALLOW_THREADS
    do {
        fastmp_cpu_relax();
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != expected) {
            changed = 1;
            break;
        }
    } while (fastmp_now_ns() - t0 < budget);
    Py_END_ALLOW_THREADS
    return changed;
}

int
fastmp_spin_poll(fastmp_spin *sp, int64_t t0, int (*look)(void *arg),
                 void *arg)
{
    int64_t budget = sp->budget_ns;
    int r = 0;
    if (budget == 0 || fastmp_now_ns() - t0 >= budget) {
        return 0;
    }
    Py_BEGIN_ALLOW_THREADS
    do {
        fastmp_cpu_relax();
        r = look(arg);
    } while (r == 0 && fastmp_now_ns() - t0 < budget);
    Py_END_ALLOW_THREADS
    return r;
}

int
fastmp_wait_futex_spin(uint32_t *word, uint32_t expected,
                       const fastmp_deadline *d, fastmp_spin *sp)
{
    int64_t t0 = fastmp_now_ns();
    if (fastmp_spin_watch(word, expected, sp, t0)) {
        fastmp_spin_learn(sp, fastmp_now_ns() - t0, 1);
        return PyErr_CheckSignals() < 0 ? -1 : 0;
    }
    int r = fastmp_wait_futex(word, expected, d);
    if (r == 0) {
        int changed = __atomic_load_n(word, __ATOMIC_ACQUIRE) != expected;
        fastmp_spin_learn(sp, changed ? fastmp_now_ns() - t0 : INT64_MAX, 0);
    }
    return r;
}
