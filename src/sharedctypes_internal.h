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

/* Integer memory of 1, 2, 4 or 8 bytes.  One helper per operation, each
 * one dispatch on the size (a size other than 1, 2 or 4 means 8).  Plain
 * loads and stores copy with memcpy (any alignment); the atomic
 * operations are sequentially consistent __atomic builtins on aligned
 * memory, so a process dying mid-operation leaves the value whole.
 * Values come back zero-extended; operands are truncated to the width.
 * Always inlined: with a constant size the compiler keeps only the case
 * used. */
#define FASTMP_SC __ATOMIC_SEQ_CST

/* Plain load. */
static inline __attribute__((always_inline)) uint64_t
fastmp_int_load(const void *p, Py_ssize_t size)
{
    uint8_t x1;
    uint16_t x2;
    uint32_t x4;
    uint64_t x8;
    switch (size) {
    case 1:
        memcpy(&x1, p, 1);
        return x1;
    case 2:
        memcpy(&x2, p, 2);
        return x2;
    case 4:
        memcpy(&x4, p, 4);
        return x4;
    default:
        memcpy(&x8, p, 8);
        return x8;
    }
}

/* Plain store of a. */
static inline __attribute__((always_inline)) void
fastmp_int_store(void *p, Py_ssize_t size, uint64_t a)
{
    uint8_t x1 = (uint8_t)a;
    uint16_t x2 = (uint16_t)a;
    uint32_t x4 = (uint32_t)a;
    switch (size) {
    case 1:
        memcpy(p, &x1, 1);
        break;
    case 2:
        memcpy(p, &x2, 2);
        break;
    case 4:
        memcpy(p, &x4, 4);
        break;
    default:
        memcpy(p, &a, 8);
        break;
    }
}

/* Atomic load. */
static inline __attribute__((always_inline)) uint64_t
fastmp_int_atomic_load(void *p, Py_ssize_t size)
{
    switch (size) {
    case 1:
        return __atomic_load_n((uint8_t *)p, FASTMP_SC);
    case 2:
        return __atomic_load_n((uint16_t *)p, FASTMP_SC);
    case 4:
        return __atomic_load_n((uint32_t *)p, FASTMP_SC);
    default:
        return __atomic_load_n((uint64_t *)p, FASTMP_SC);
    }
}

/* Atomic store of a. */
static inline __attribute__((always_inline)) void
fastmp_int_atomic_store(void *p, Py_ssize_t size, uint64_t a)
{
    switch (size) {
    case 1:
        __atomic_store_n((uint8_t *)p, (uint8_t)a, FASTMP_SC);
        break;
    case 2:
        __atomic_store_n((uint16_t *)p, (uint16_t)a, FASTMP_SC);
        break;
    case 4:
        __atomic_store_n((uint32_t *)p, (uint32_t)a, FASTMP_SC);
        break;
    default:
        __atomic_store_n((uint64_t *)p, a, FASTMP_SC);
        break;
    }
}

/* Atomic add (add != 0) or exchange of a: the previous value. */
static inline __attribute__((always_inline)) uint64_t
fastmp_int_swap_or_add(void *p, Py_ssize_t size, int add, uint64_t a)
{
    switch (size) {
    case 1:
        return add ? __atomic_fetch_add((uint8_t *)p, (uint8_t)a, FASTMP_SC)
                   : __atomic_exchange_n((uint8_t *)p, (uint8_t)a, FASTMP_SC);
    case 2:
        return add ? __atomic_fetch_add((uint16_t *)p, (uint16_t)a, FASTMP_SC)
                   : __atomic_exchange_n((uint16_t *)p, (uint16_t)a,
                                         FASTMP_SC);
    case 4:
        return add ? __atomic_fetch_add((uint32_t *)p, (uint32_t)a, FASTMP_SC)
                   : __atomic_exchange_n((uint32_t *)p, (uint32_t)a,
                                         FASTMP_SC);
    default:
        return add ? __atomic_fetch_add((uint64_t *)p, a, FASTMP_SC)
                   : __atomic_exchange_n((uint64_t *)p, a, FASTMP_SC);
    }
}

/* Atomic compare-and-swap: 1 when the value equalled a and now is b, else
 * 0. */
static inline __attribute__((always_inline)) int
fastmp_int_cas(void *p, Py_ssize_t size, uint64_t a, uint64_t b)
{
    uint8_t e1 = (uint8_t)a;
    uint16_t e2 = (uint16_t)a;
    uint32_t e4 = (uint32_t)a;
    switch (size) {
    case 1:
        return __atomic_compare_exchange_n((uint8_t *)p, &e1, (uint8_t)b, 0,
                                           FASTMP_SC, FASTMP_SC);
    case 2:
        return __atomic_compare_exchange_n((uint16_t *)p, &e2, (uint16_t)b, 0,
                                           FASTMP_SC, FASTMP_SC);
    case 4:
        return __atomic_compare_exchange_n((uint32_t *)p, &e4, (uint32_t)b, 0,
                                           FASTMP_SC, FASTMP_SC);
    default:
        return __atomic_compare_exchange_n((uint64_t *)p, &a, b, 0, FASTMP_SC,
                                           FASTMP_SC);
    }
}

#undef FASTMP_SC

/* Helpers of the wrappers, inline: they are on every access. */

/* Size of a fast element code, 0 for a code without a fast path. */
static inline Py_ssize_t
code_size(int code)
{
    switch (code) {
    case '?':
        return sizeof(_Bool);
    case 'c':
    case 'b':
    case 'B':
        return 1;
    case 'h':
    case 'H':
        return sizeof(short);
    case 'i':
    case 'I':
        return sizeof(int);
    case 'l':
    case 'L':
        return sizeof(long);
    case 'q':
    case 'Q':
        return sizeof(long long);
    case 'f':
        return sizeof(float);
    case 'd':
        return sizeof(double);
    default:
        return 0;
    }
}

/* Bits of an integer element, zero-extended. */
static inline uint64_t
int_bits_load(const char *p, Py_ssize_t size)
{
    return fastmp_int_load(p, size);
}

/* The wrapper's state, with a reference the caller drops (sync_drop) when
 * its operation is over.  NULL with ValueError set before __init__. */
static inline sync_state *
sync_hold(SyncObject *self)
{
    sync_state *st = self->st;
    if (st == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "synchronized wrapper not initialised");
        return NULL;
    }
    st->refs++;
    return st;
}

/* Take the lock.  Returns 0 when taken, 1 when this thread already held
 * it (a fastmp RLock: nothing to take or give back), -1 with an exception
 * set.  Pass the result to sync_unlock. */
static inline int
sync_lock(sync_state *s)
{
    if (s->semlock != NULL) {
        if (fastmp_semlock_held_by_me(s->semlock)) {
            return 1;
        }
        return fastmp_semlock_enter(s->semlock);
    }
    PyObject *r = PyObject_CallNoArgs(s->acquire_m);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Release the lock.  Keeps a pending exception (from the operation done
 * under the lock) in place; returns -1 if releasing failed or an exception
 * was already pending. */
static inline int
sync_unlock(sync_state *s, int held)
{
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    int pending = PyErr_Occurred() != NULL;
    int r;
    if (held == 1) {
        return pending ? -1 : 0;
    }
    if (pending) {
        PyErr_Fetch(&et, &ev, &tb);
    }
    if (s->semlock != NULL) {
        r = fastmp_semlock_exit(s->semlock);
    }
    else {
        PyObject *res = PyObject_CallNoArgs(s->release_m);
        r = res == NULL ? -1 : 0;
        Py_XDECREF(res);
    }
    if (pending) {
        if (r < 0) {
            /* The release error is the one reported: the lock may still
             * be held, which matters more than the operation's error. */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        }
        else {
            PyErr_Restore(et, ev, tb);
        }
        return -1;
    }
    return r;
}

/* sharedctypes.c, for sharedctypes_array.c: element conversion, the
 * copies in and out of the shared data, getattr/setattr on the ctypes
 * object under the lock, and SynchronizedBase's slots that the subclasses
 * repeat.  fastmp_elem_unpack: the element at p (a private copy) as a
 * Python object, or NULL with an exception set.  fastmp_elem_pack: v into
 * the element bytes at out, as ctypes would store it; 0 done, 1 "not a
 * simple case: let the ctypes object do it", -1 with an exception set.
 * fastmp_sync_gather, fastmp_sync_scatter: 0, or -1 with an exception
 * set (see sharedctypes.c). */
PyObject *fastmp_elem_unpack(int code, const char *p);
int fastmp_elem_pack(int code, PyObject *v, char *out);
int fastmp_sync_gather(sync_state *s, char *dst, Py_ssize_t off, Py_ssize_t n,
                       Py_ssize_t sz, Py_ssize_t stride);
int fastmp_sync_scatter(sync_state *s, Py_ssize_t off, Py_ssize_t stride,
                        const char *src, Py_ssize_t n, Py_ssize_t sz);
PyObject *fastmp_sync_locked_getattr(sync_state *st, const char *name);
int fastmp_sync_locked_setattr(sync_state *st, const char *name, PyObject *v);
int fastmp_sync_traverse(SyncObject *self, visitproc visit, void *arg);
int fastmp_sync_clear(SyncObject *self);
void fastmp_sync_dealloc(SyncObject *self);

/* sharedctypes_block.c: the Block type and the module functions that make
 * Blocks; fastmp_block_holds: 1 when `w` is a live Block whose memory holds
 * [p, p + len), else 0. */
extern PyType_Spec fastmp_block_spec;
extern PyMethodDef fastmp_block_functions[];
int fastmp_block_holds(PyObject *w, const char *p, Py_ssize_t len);

/* sharedctypes_array.c: the SynchronizedArray and SynchronizedString
 * types. */
extern PyType_Spec fastmp_array_spec;
extern PyType_Spec fastmp_string_spec;

#endif /* FASTMP_SHAREDCTYPES_INTERNAL_H */
