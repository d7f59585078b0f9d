/*
 * wait.c -- blocking the fastmp way: one absolute CLOCK_MONOTONIC deadline,
 * the GIL released while asleep, sleeps sliced so that signal handlers
 * (Ctrl-C) run promptly and callers can look for dead peers between
 * slices.
 */
#include "fastmp.h"

#include <errno.h>
#include <math.h>
#include <sched.h>

static void
now_monotonic(struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
}

static int
ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec
           || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void
ts_add_ns(struct timespec *ts, int64_t ns)
{
    ts->tv_sec += (time_t)(ns / 1000000000);
    ts->tv_nsec += (long)(ns % 1000000000);
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000;
    }
}

void
fastmp_deadline_from_seconds(double seconds, fastmp_deadline *d)
{
    if (seconds < 0 || isnan(seconds)) {
        d->forever = 1;
        return;
    }
    d->forever = 0;
    now_monotonic(&d->at);
    /* Cap at ~30 years so the arithmetic cannot overflow time_t. */
    if (seconds > 1e9) {
        seconds = 1e9;
    }
    double whole = floor(seconds);
    d->at.tv_sec += (time_t)whole;
    ts_add_ns(&d->at, (int64_t)((seconds - whole) * 1e9));
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
    now_monotonic(&now);
    return !ts_before(&now, &d->at);
}

double
fastmp_deadline_remaining(const fastmp_deadline *d)
{
    if (d->forever) {
        return -1.0;
    }
    struct timespec now;
    now_monotonic(&now);
    double r = (double)(d->at.tv_sec - now.tv_sec)
               + (double)(d->at.tv_nsec - now.tv_nsec) / 1e9;
    return r > 0 ? r : 0.0;
}

int
fastmp_wait_futex(uint32_t *word, uint32_t expected,
                  const fastmp_deadline *d)
{
    struct timespec until;
    now_monotonic(&until);
    ts_add_ns(&until, FASTMP_WAIT_SLICE_NS);
    int final_slice = 0;
    if (!d->forever) {
        if (!ts_before(&until, &d->at)) {
            until = d->at;
            final_slice = 1;
        }
    }
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = fastmp_platform_futex_wait(word, expected, &until);
    Py_END_ALLOW_THREADS
    if (r != 0 && r != ETIMEDOUT) {
        errno = r;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (PyErr_CheckSignals() < 0) {
        return -1;
    }
    if (r == ETIMEDOUT && final_slice) {
        return 1;
    }
    if (!d->forever && fastmp_deadline_expired(d)) {
        return 1;
    }
    return 0;
}

/* ---- spinning before sleeping ---------------------------------------- */

static int spin_cpus_ok = -1;   /* more than one CPU to run on */

void
fastmp_spin_init(fastmp_spin *sp)
{
    if (spin_cpus_ok < 0) {
        cpu_set_t set;
        int n = 0;
        if (sched_getaffinity(0, sizeof(set), &set) == 0) {
            n = CPU_COUNT(&set);
        }
        spin_cpus_ok = n > 1;
    }
    sp->budget_ns = spin_cpus_ok ? FASTMP_SPIN_CAP_NS : 0;
}

int64_t
fastmp_now_ns(void)
{
    struct timespec ts;
    now_monotonic(&ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void
fastmp_spin_learn(fastmp_spin *sp, int64_t waited, int spun)
{
    uint32_t budget = sp->budget_ns;
    if (spin_cpus_ok != 1) {
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
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != expected) {
            changed = 1;
            break;
        }
    } while (fastmp_now_ns() - t0 < budget);
    Py_END_ALLOW_THREADS
    return changed;
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
