/*
 * sharedctypes_internal.h -- sharedctypes internals, shared by
 * sharedctypes.c and atomics.c.  Not for other areas.
 */
#ifndef FASTMP_SHAREDCTYPES_INTERNAL_H
#define FASTMP_SHAREDCTYPES_INTERNAL_H

#include "fastmp.h"

/* What a wrapper wraps.  Built by __init__ and never changed afterwards: a
 * second __init__ builds a new one and swaps it in.  Every operation holds
 * a reference on the state it started with (sync_hold / sync_drop), so
 * Python code it calls on the way -- a value's __index__ or __float__, a
 * foreign lock's acquire, another thread while the GIL is released -- may
 * re-initialise the wrapper without freeing or moving what the operation
 * uses: the operation ends on the object and the lock it began with, as
 * the stdlib's wrapper does (it reads self._obj once per access).  Process
 * local; `refs` is protected by the GIL. */
typedef struct {
    Py_ssize_t refs;     /* the wrapper's own + one per operation */
    PyObject *obj;       /* the ctypes object */
    PyObject *block;     /* the fastmp Block holding obj's data, or NULL */
    PyObject *lock;      /* any object with acquire/release */
    PyObject *acquire_m; /* lock.acquire (slow path) */
    PyObject *release_m; /* lock.release (slow path) */
    PyObject *semlock;   /* fastmp SemLock inside `lock`, or NULL */
    const uint32_t *seq_word; /* its words for lock-free reads, or NULL */
    const uint32_t *seq_gen;
    /* obj's data when it is arena memory (`block` is set, and kept alive
     * here): that never moves.  NULL otherwise: memory a ctypes object
     * owns moves when ctypes.resize() grows it, so it is asked for at each
     * access (sync_mem). */
    char *ptr;
    Py_ssize_t nbytes;   /* bytes the fast paths touch */
    Py_ssize_t length;   /* elements (arrays), 1 for values */
    Py_ssize_t itemsize; /* fast element size, 0 when no fast path */
    int code;            /* fast element code ('i', 'd', ...) or 0 */
} sync_state;

typedef struct {
    PyObject_HEAD
    sync_state *st; /* NULL until __init__ has run */
    PyObject *weakreflist;
} SyncObject;

/* sharedctypes.c.  fastmp_int_from_bits: the Python int of an element
 * of integer code `code` from its zero-extended bits.  The rest are the
 * out-of-line halves of the inline helpers below. */
void fastmp_sync_free(sync_state *st);
char *fastmp_sync_mem_slow(sync_state *st, Py_buffer *view);
PyObject *fastmp_int_from_bits(int code, uint64_t bits);

/* Drop one reference on st; the last one frees it. */
static inline void
fastmp_sync_drop(sync_state *st)
{
    if (--st->refs <= 0) {
        fastmp_sync_free(st);
    }
}

/* The address of st's data, valid until fastmp_sync_mem_done(view) and
 * only while no Python code runs: call it after every conversion and
 * after taking the lock.  Arena memory is st->ptr; any other object is
 * asked for its buffer again, which *view holds.  NULL with an exception
 * set. */
static inline char *
fastmp_sync_mem(sync_state *st, Py_buffer *view)
{
    view->obj = NULL;
    if (st->ptr != NULL) {
        return st->ptr;
    }
    return fastmp_sync_mem_slow(st, view);
}

static inline void
fastmp_sync_mem_done(Py_buffer *view)
{
    if (view->obj != NULL) {
        PyBuffer_Release(view);
    }
}

/* Is `code` an integer element code? */
static inline int
fastmp_code_is_int(int code)
{
    switch (code) {
    case 'b':
    case 'B':
    case 'h':
    case 'H':
    case 'i':
    case 'I':
    case 'l':
    case 'L':
    case 'q':
    case 'Q':
        return 1;
    default:
        return 0;
    }
}

/* atomics.c: Synchronized's methods. */
extern PyMethodDef fastmp_atomic_methods[];

/* The one size dispatch for integer memory of 1, 2, 4 or 8 bytes (size
 * other than 1, 2, 4: 8), plain (memcpy: any alignment) or atomic
 * (sequentially consistent, aligned).  Returns: LOAD, ATOMIC_LOAD the
 * value, zero-extended; FETCH_ADD, XCHG the previous value (a: the
 * operand); CAS 1 when *p equalled a and now holds b, else 0; stores
 * (a: the value, truncated to the width) 0.  Always inlined: with a
 * constant op or size the compiler keeps only the case used. */
enum {
    FASTMP_INT_LOAD,
    FASTMP_INT_STORE,
    FASTMP_INT_ATOMIC_LOAD,
    FASTMP_INT_ATOMIC_STORE,
    FASTMP_INT_FETCH_ADD,
    FASTMP_INT_XCHG,
    FASTMP_INT_CAS,
};

#define FASTMP_SC __ATOMIC_SEQ_CST

static inline __attribute__((always_inline)) uint64_t
fastmp_int_mem(void *p, Py_ssize_t size, int op, uint64_t a, uint64_t b)
{
    switch (size) {
    case 1: {
        uint8_t *q = (uint8_t *)p, x = (uint8_t)a;
        switch (op) {
        case FASTMP_INT_LOAD:
            memcpy(&x, q, 1);
            return x;
        case FASTMP_INT_STORE:
            memcpy(q, &x, 1);
            return 0;
        case FASTMP_INT_ATOMIC_LOAD:
            return __atomic_load_n(q, FASTMP_SC);
        case FASTMP_INT_ATOMIC_STORE:
            __atomic_store_n(q, x, FASTMP_SC);
            return 0;
        case FASTMP_INT_FETCH_ADD:
            return __atomic_fetch_add(q, x, FASTMP_SC);
        case FASTMP_INT_XCHG:
            return __atomic_exchange_n(q, x, FASTMP_SC);
        default:
            return __atomic_compare_exchange_n(q, &x, (uint8_t)b, 0, FASTMP_SC,
                                               FASTMP_SC);
        }
    }
    case 2: {
        uint16_t *q = (uint16_t *)p, x = (uint16_t)a;
        switch (op) {
        case FASTMP_INT_LOAD:
            memcpy(&x, q, 2);
            return x;
        case FASTMP_INT_STORE:
            memcpy(q, &x, 2);
            return 0;
        case FASTMP_INT_ATOMIC_LOAD:
            return __atomic_load_n(q, FASTMP_SC);
        case FASTMP_INT_ATOMIC_STORE:
            __atomic_store_n(q, x, FASTMP_SC);
            return 0;
        case FASTMP_INT_FETCH_ADD:
            return __atomic_fetch_add(q, x, FASTMP_SC);
        case FASTMP_INT_XCHG:
            return __atomic_exchange_n(q, x, FASTMP_SC);
        default:
            return __atomic_compare_exchange_n(q, &x, (uint16_t)b, 0,
                                               FASTMP_SC, FASTMP_SC);
        }
    }
    case 4: {
        uint32_t *q = (uint32_t *)p, x = (uint32_t)a;
        switch (op) {
        case FASTMP_INT_LOAD:
            memcpy(&x, q, 4);
            return x;
        case FASTMP_INT_STORE:
            memcpy(q, &x, 4);
            return 0;
        case FASTMP_INT_ATOMIC_LOAD:
            return __atomic_load_n(q, FASTMP_SC);
        case FASTMP_INT_ATOMIC_STORE:
            __atomic_store_n(q, x, FASTMP_SC);
            return 0;
        case FASTMP_INT_FETCH_ADD:
            return __atomic_fetch_add(q, x, FASTMP_SC);
        case FASTMP_INT_XCHG:
            return __atomic_exchange_n(q, x, FASTMP_SC);
        default:
            return __atomic_compare_exchange_n(q, &x, (uint32_t)b, 0,
                                               FASTMP_SC, FASTMP_SC);
        }
    }
    default: {
        uint64_t *q = (uint64_t *)p, x = a;
        switch (op) {
        case FASTMP_INT_LOAD:
            memcpy(&x, q, 8);
            return x;
        case FASTMP_INT_STORE:
            memcpy(q, &x, 8);
            return 0;
        case FASTMP_INT_ATOMIC_LOAD:
            return __atomic_load_n(q, FASTMP_SC);
        case FASTMP_INT_ATOMIC_STORE:
            __atomic_store_n(q, x, FASTMP_SC);
            return 0;
        case FASTMP_INT_FETCH_ADD:
            return __atomic_fetch_add(q, x, FASTMP_SC);
        case FASTMP_INT_XCHG:
            return __atomic_exchange_n(q, x, FASTMP_SC);
        default:
            return __atomic_compare_exchange_n(q, &x, b, 0, FASTMP_SC,
                                               FASTMP_SC);
        }
    }
    }
}

#undef FASTMP_SC

#endif /* FASTMP_SHAREDCTYPES_INTERNAL_H */
