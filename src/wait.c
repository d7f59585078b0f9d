/*
 * wait.c -- blocking the fastmp way: one absolute CLOCK_MONOTONIC deadline,
 * the GIL released while asleep, sleeps sliced so that signal handlers
 * (Ctrl-C) run promptly and callers can look for dead peers between
 * slices.
 */
#include "fastmp.h"

#include <errno.h>
#include <math.h>

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
