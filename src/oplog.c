/*
 * oplog.c -- _OpLog: the shared operation log behind a manager container
 * served without a round trip (fastmp/_manager_fast.py).  The segments
 * are _ShmMappings (shm.c); the type is created by fastmp_shm_exec.
 *
 * A container has two named segments, both created by the manager's
 * server process (which alone unlinks them):
 *
 * The directory (OPLOG_DIR_BYTES, never resized):
 *
 *   magic (8)   written once by the server before the name is handed out
 *   owner (8)   the writer lock: the project's owner lock (owner.c)
 *   state (8)   the commit word: (generation << 40) | tail.  Written only
 *               by the holder of `owner`, with one release store (the
 *               commit point of an operation); read by anyone with an
 *               acquire load.
 *   word (4)    the Event and Semaphore containers (which have no log
 *               and do not use `owner`): the flag, or the value, changed
 *               by atomic stores / CAS by any process using it; a
 *               process dying anywhere leaves a valid value (a unit it
 *               took is lost with it, as with threading's semaphore).
 *   limit (4)   a BoundedSemaphore's bound: written by the server before
 *               the name is handed out, read-only afterwards.
 *   tid (8)     an RLock container: `owner` is the lock (its holder's
 *               process), `tid` the holding thread and `word` the
 *               recursion count, both written only by the holder (under
 *               its GIL: its process's other threads see them settled).
 *               A holder that dies is taken over: the new holder rewrites
 *               both.
 *   spare (24)
 *
 * The log (resized by the holder of `owner` only; every process maps it
 * again when the generation says it grew):
 *
 *   magic (8)   written by the server before the name is handed out
 *   spare (56)
 *   entries from OPLOG_LOG_START: u32 code, u32 a_len, u32 b_len, u32
 *   spare, a, b, padded to 8 (code: the operation, a: its pickled
 *   arguments, b: a pickled value).
 *
 * Entries in [OPLOG_LOG_START, tail) are immutable until the generation
 * changes.  The holder of `owner` writes entries past the tail and then
 * publishes the new tail (and, after a compaction that rewrote the log
 * from the start, a new generation) with one store to `state`; readers
 * replay entries only while holding `owner`, so a compaction rewriting
 * the log in place never races a reader.  A writer killed inside leaves
 * `owner` naming it and bytes past the tail that nobody reads: the next
 * locker takes the lock over (lock() returns True) and finds the log as
 * it was at the last commit.  Corrupt lengths raise ValueError, never
 * read outside the mapping.
 */
#include "shm_internal.h"

#include <limits.h>
#include <string.h>

#define OPLOG_DIR_MAGIC UINT64_C(0x666d706f706c6f67) /* "fmpoplog" */
#define OPLOG_LOG_MAGIC UINT64_C(0x666d706c6f677331) /* "fmplogs1" */
#define OPLOG_DIR_BYTES 64
#define OPLOG_LOG_START 64
#define OPLOG_ENTRY_HEAD 16
#define OPLOG_TAIL_MASK ((UINT64_C(1) << 40) - 1)

typedef struct {
    uint64_t magic;
    uint64_t owner;
    uint64_t state;
    uint32_t word;  /* an Event's flag, a Semaphore's value, an RLock's
                       count */
    uint32_t limit; /* a BoundedSemaphore's bound (0: none) */
    uint64_t tid;   /* an RLock holder's thread */
    uint64_t spare[3];
} oplog_dir;

_Static_assert(sizeof(oplog_dir) == OPLOG_DIR_BYTES, "directory size");

typedef struct {
    PyObject_HEAD
    MappingObject *dir; /* the directory */
    MappingObject *log; /* the log's current mapping; NULL until set */
} OpLogObject;

static int
oplog_traverse(PyObject *op, visitproc visit, void *arg)
{
    OpLogObject *self = (OpLogObject *)op;
    Py_VISIT(self->dir);
    Py_VISIT(self->log);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static int
oplog_clear(PyObject *op)
{
    OpLogObject *self = (OpLogObject *)op;
    Py_CLEAR(self->dir);
    Py_CLEAR(self->log);
    return 0;
}

static void
oplog_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)oplog_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* The mapping in args[i], mapped, of at least `min` bytes: 0, or -1 with
 * TypeError / ValueError / OSError set. */
static int
oplog_mapping_arg(PyObject *arg, Py_ssize_t min)
{
    fastmp_state *st = fastmp_get_state();
    if (!PyObject_TypeCheck(arg, st->shm.MappingType)) {
        PyErr_SetString(PyExc_TypeError, "expected a _ShmMapping");
        return -1;
    }
    MappingObject *m = (MappingObject *)arg;
    if (fastmp_shm_mapping_ensure(m) < 0) {
        return -1;
    }
    if (m->size < min || ((uintptr_t)m->addr & 7) != 0) {
        PyErr_SetString(PyExc_ValueError, "manager log segment too small");
        return -1;
    }
    /* Mapped: the fd is no longer needed (a process using many containers
     * would otherwise hold two fds for each).  The mapping stays until
     * the object goes. */
    if (m->fd >= 0) {
        (void)fastmp_platform_close(m->fd);
        m->fd = -1;
    }
    return 0;
}

/* _OpLog(dir, create): bind the directory; create: write its header (the
 * server, before the name is handed out), else check it. */
static PyObject *
oplog_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *dir;
    int create;
    if (!PyArg_ParseTuple(args, "Op:_OpLog", &dir, &create)) {
        return NULL;
    }
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "_OpLog takes no keywords");
        return NULL;
    }
    if (oplog_mapping_arg(dir, OPLOG_DIR_BYTES) < 0) {
        return NULL;
    }
    oplog_dir *h = (oplog_dir *)((MappingObject *)dir)->addr;
    if (create) {
        memset(h, 0, sizeof(*h));
        __atomic_store_n(&h->magic, OPLOG_DIR_MAGIC, __ATOMIC_RELEASE);
    }
    else if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != OPLOG_DIR_MAGIC) {
        PyErr_SetString(PyExc_ValueError, "not a fastmp manager directory");
        return NULL;
    }
    OpLogObject *self = (OpLogObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->dir = (MappingObject *)Py_NewRef(dir);
    self->log = NULL;
    return (PyObject *)self;
}

static oplog_dir *
oplog_header(OpLogObject *self)
{
    return (oplog_dir *)self->dir->addr;
}

uint64_t *
fastmp_oplog_cells(PyObject *op, Py_ssize_t *n)
{
    MappingObject *dir = ((OpLogObject *)op)->dir;
    *n = (dir->size - OPLOG_DIR_BYTES) / (Py_ssize_t)sizeof(uint64_t);
    return (uint64_t *)(dir->addr + OPLOG_DIR_BYTES);
}

/* set_log(mapping, create): use `mapping` as the log from now on; create:
 * write its header (the server), else check it. */
static PyObject *
oplog_set_log(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    OpLogObject *self = (OpLogObject *)op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_log(mapping, create)");
        return NULL;
    }
    if (oplog_mapping_arg(args[0], OPLOG_LOG_START + 8) < 0) {
        return NULL;
    }
    int create = PyObject_IsTrue(args[1]);
    if (create < 0) {
        return NULL;
    }
    uint64_t *magic = (uint64_t *)((MappingObject *)args[0])->addr;
    if (create) {
        __atomic_store_n(magic, OPLOG_LOG_MAGIC, __ATOMIC_RELEASE);
    }
    else if (__atomic_load_n(magic, __ATOMIC_ACQUIRE) != OPLOG_LOG_MAGIC) {
        PyErr_SetString(PyExc_ValueError, "not a fastmp manager log");
        return NULL;
    }
    Py_XSETREF(self->log, (MappingObject *)Py_NewRef(args[0]));
    Py_RETURN_NONE;
}

/* lock(): take the writer lock (GIL released while waiting, signals
 * checked).  True when it was taken over from a dead holder. */
static PyObject *
oplog_lock(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    OpLogObject *self = (OpLogObject *)op;
    uint64_t *w = &oplog_header(self)->owner;
    if (fastmp_owner_try(w)) {
        Py_RETURN_FALSE;
    }
    int r = fastmp_owner_lock(w, NULL, FASTMP_OWNER_INTERRUPTIBLE);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r == 1);
}

static PyObject *
oplog_unlock(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    OpLogObject *self = (OpLogObject *)op;
    fastmp_owner_unlock(&oplog_header(self)->owner);
    Py_RETURN_NONE;
}

/* state(): the commit word (an acquire load). */
static PyObject *
oplog_state(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    OpLogObject *self = (OpLogObject *)op;
    return PyLong_FromUnsignedLongLong(
        __atomic_load_n(&oplog_header(self)->state, __ATOMIC_ACQUIRE));
}

/* publish(state): the commit point (a release store); lock holder only. */
static PyObject *
oplog_publish(PyObject *op, PyObject *arg)
{
    OpLogObject *self = (OpLogObject *)op;
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    __atomic_store_n(&oplog_header(self)->state, (uint64_t)v,
                     __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* The (blocking, timeout) arguments of a Lock or RLock container's
 * acquire: 0, or -1 with TypeError set. */
static int
lock_args(PyObject *const *args, Py_ssize_t nargs, const char *name,
          int *blocking, double *timeout)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s(blocking, timeout)", name);
        return -1;
    }
    *blocking = PyObject_IsTrue(args[0]);
    if (*blocking < 0) {
        return -1;
    }
    *timeout = PyFloat_AsDouble(args[1]);
    return *timeout == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* Take owner word w for a Lock or RLock container (timeout < 0:
 * forever): 1 taken (AbandonedLockWarning first when taken over from a
 * dead holder), 0 not, -1 with an exception set. */
static int
owner_take(uint64_t *w, int blocking, double timeout)
{
    if (fastmp_owner_try(w)) {
        return 1;
    }
    if (!blocking) {
        return 0;
    }
    fastmp_deadline d = {1, {0, 0}};
    if (timeout >= 0) {
        fastmp_deadline_from_seconds(timeout, &d);
    }
    int r = fastmp_owner_lock(w, &d, FASTMP_OWNER_INTERRUPTIBLE);
    if (r < 0) {
        return -1;
    }
    if (r == 2) {
        return 0;
    }
    if (r == 1) {
        fastmp_state *st = fastmp_get_state();
        PyObject *cat = st->semlock.AbandonedLockWarning;
        if (PyErr_WarnEx(cat != NULL ? cat : PyExc_RuntimeWarning,
                         "lock was held by a process that died; the state "
                         "it protects may be inconsistent",
                         1)
            < 0) {
            fastmp_owner_unlock(w);
            return -1;
        }
    }
    return 1;
}

/* acquire(blocking, timeout): a manager Lock on the directory's owner
 * word (the lock of a Lock container: it has no log).  timeout < 0:
 * forever.  True acquired (AbandonedLockWarning first when taken over
 * from a dead holder), False not. */
static PyObject *
oplog_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    OpLogObject *self = (OpLogObject *)op;
    int blocking;
    double timeout;
    if (lock_args(args, nargs, "acquire", &blocking, &timeout) < 0) {
        return NULL;
    }
    int r = owner_take(&oplog_header(self)->owner, blocking, timeout);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

/* release_any(): free the Lock whoever holds it (a manager Lock is a
 * threading.Lock: any thread or process may release it).  RuntimeError
 * when it is not held. */
static PyObject *
oplog_release_any(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    OpLogObject *self = (OpLogObject *)op;
    uint64_t *w = &oplog_header(self)->owner;
    uint64_t old = __atomic_exchange_n(w, 0, __ATOMIC_RELEASE);
    if (old == 0) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    if (old & FASTMP_OWNER_WAITERS) {
        (void)fastmp_platform_futex_wake(fastmp_owner_futex(w), 1);
    }
    Py_RETURN_NONE;
}

/* locked(): is the directory's owner word held? */
static PyObject *
oplog_locked(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    OpLogObject *self = (OpLogObject *)op;
    return PyBool_FromLong(
        __atomic_load_n(&oplog_header(self)->owner, __ATOMIC_ACQUIRE) != 0);
}

/* event_set(), event_clear(), event_is_set(), event_wait(timeout):
 * an Event container on `word` (timeout None: forever). */
static PyObject *
oplog_event_set(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    uint32_t *w = &oplog_header((OpLogObject *)op)->word;
    if (__atomic_exchange_n(w, 1, __ATOMIC_SEQ_CST) == 0) {
        (void)fastmp_platform_futex_wake(w, INT_MAX);
    }
    Py_RETURN_NONE;
}

static PyObject *
oplog_event_clear(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    __atomic_store_n(&oplog_header((OpLogObject *)op)->word, 0,
                     __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
oplog_event_is_set(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(
        __atomic_load_n(&oplog_header((OpLogObject *)op)->word,
                        __ATOMIC_ACQUIRE)
        != 0);
}

static PyObject *
oplog_event_wait(PyObject *op, PyObject *timeout)
{
    uint32_t *w = &oplog_header((OpLogObject *)op)->word;
    fastmp_deadline d;
    if (fastmp_deadline_from_object(timeout, &d) < 0) {
        return NULL;
    }
    for (;;) {
        if (__atomic_load_n(w, __ATOMIC_ACQUIRE) != 0) {
            Py_RETURN_TRUE;
        }
        int r = fastmp_wait_futex(w, 0, &d);
        if (r < 0) {
            return NULL;
        }
        if (r == 1) {
            return PyBool_FromLong(__atomic_load_n(w, __ATOMIC_ACQUIRE) != 0);
        }
    }
}

/* sem_init(value, limit): the server, before the name is handed out. */
static PyObject *
oplog_sem_init(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    oplog_dir *h = oplog_header((OpLogObject *)op);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sem_init(value, limit)");
        return NULL;
    }
    unsigned long v = PyLong_AsUnsignedLong(args[0]);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long lim = PyLong_AsUnsignedLong(args[1]);
    if (lim == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (v > INT32_MAX || lim > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "semaphore value too large");
        return NULL;
    }
    h->limit = (uint32_t)lim;
    __atomic_store_n(&h->word, (uint32_t)v, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* sem_acquire(blocking, timeout): a Semaphore container on `word`
 * (timeout None: forever).  True acquired, False not. */
static PyObject *
oplog_sem_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t *w = &oplog_header((OpLogObject *)op)->word;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sem_acquire(blocking, timeout)");
        return NULL;
    }
    int blocking = PyObject_IsTrue(args[0]);
    if (blocking < 0) {
        return NULL;
    }
    fastmp_deadline d;
    if (blocking && fastmp_deadline_from_object(args[1], &d) < 0) {
        return NULL;
    }
    for (;;) {
        uint32_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
        while (v > 0) {
            if (__atomic_compare_exchange_n(w, &v, v - 1, 0, __ATOMIC_ACQUIRE,
                                            __ATOMIC_RELAXED)) {
                Py_RETURN_TRUE;
            }
        }
        if (!blocking) {
            Py_RETURN_FALSE;
        }
        int r = fastmp_wait_futex(w, 0, &d);
        if (r < 0) {
            return NULL;
        }
        if (r == 1 && __atomic_load_n(w, __ATOMIC_ACQUIRE) == 0) {
            Py_RETURN_FALSE;
        }
    }
}

/* sem_release(): one unit back; ValueError past a BoundedSemaphore's
 * bound (threading's message). */
static PyObject *
oplog_sem_release(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    oplog_dir *h = oplog_header((OpLogObject *)op);
    uint32_t lim = h->limit;
    uint32_t v = __atomic_load_n(&h->word, __ATOMIC_RELAXED);
    do {
        if ((lim != 0 && v >= lim) || v >= INT32_MAX) {
            PyErr_SetString(PyExc_ValueError,
                            "Semaphore released too many times");
            return NULL;
        }
    } while (!__atomic_compare_exchange_n(&h->word, &v, v + 1, 0,
                                          __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    (void)fastmp_platform_futex_wake(&h->word, 1);
    Py_RETURN_NONE;
}

/* rlock_acquire(blocking, timeout): an RLock container (timeout < 0:
 * forever).  True acquired (again, by its holder: the count goes up). */
static PyObject *
oplog_rlock_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    oplog_dir *h = oplog_header((OpLogObject *)op);
    uint64_t *w = &h->owner;
    int blocking;
    double timeout;
    if (lock_args(args, nargs, "rlock_acquire", &blocking, &timeout) < 0) {
        return NULL;
    }
    uint64_t tid = (uint64_t)PyThread_get_thread_ident();
    uint64_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
    if ((v & ~(uint64_t)FASTMP_OWNER_WAITERS) == fastmp_owner_self()
        && h->tid == tid && h->word > 0) {
        if (h->word == UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError,
                            "Internal lock count overflowed");
            return NULL;
        }
        h->word++;
        Py_RETURN_TRUE;
    }
    int r = owner_take(w, blocking, timeout);
    if (r < 0) {
        return NULL;
    }
    if (r == 0) {
        Py_RETURN_FALSE;
    }
    h->tid = tid;
    h->word = 1;
    Py_RETURN_TRUE;
}

/* rlock_release(): RuntimeError unless the calling thread holds it. */
static PyObject *
oplog_rlock_release(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    oplog_dir *h = oplog_header((OpLogObject *)op);
    uint64_t *w = &h->owner;
    uint64_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
    if ((v & ~(uint64_t)FASTMP_OWNER_WAITERS) != fastmp_owner_self()
        || h->tid != (uint64_t)PyThread_get_thread_ident() || h->word == 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    if (--h->word == 0) {
        h->tid = 0;
        fastmp_owner_unlock(w);
    }
    Py_RETURN_NONE;
}

/* rlock_state(): (held, count, is the calling thread the holder). */
static PyObject *
oplog_rlock_state(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    oplog_dir *h = oplog_header((OpLogObject *)op);
    uint64_t v = __atomic_load_n(&h->owner, __ATOMIC_ACQUIRE);
    int mine = (v & ~(uint64_t)FASTMP_OWNER_WAITERS) == fastmp_owner_self()
               && h->tid == (uint64_t)PyThread_get_thread_ident();
    return Py_BuildValue("(OkO)", v != 0 ? Py_True : Py_False,
                         (unsigned long)(v != 0 ? h->word : 0),
                         mine ? Py_True : Py_False);
}

static PyObject *
oplog_sem_bound(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(oplog_header((OpLogObject *)op)->limit);
}

static PyObject *
oplog_sem_value(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(__atomic_load_n(
        &oplog_header((OpLogObject *)op)->word, __ATOMIC_ACQUIRE));
}

static MappingObject *
oplog_log(OpLogObject *self)
{
    if (self->log == NULL || self->log->closed) {
        PyErr_SetString(PyExc_ValueError, "manager log not attached");
        return NULL;
    }
    return self->log;
}

/* Write entry (code, a, b) at pos of m.  Returns the position after it,
 * -1 when it does not fit (nothing written), -2 with ValueError set for a
 * bad position. */
static Py_ssize_t
oplog_write(MappingObject *m, Py_ssize_t pos, uint32_t code, PyObject *a,
            PyObject *b)
{
    Py_ssize_t na = PyBytes_GET_SIZE(a);
    Py_ssize_t nb = PyBytes_GET_SIZE(b);
    if (pos < OPLOG_LOG_START || (pos & 7) != 0 || pos > m->size) {
        PyErr_SetString(PyExc_ValueError, "corrupt manager log position");
        return -2;
    }
    if (na > UINT32_MAX || nb > UINT32_MAX) {
        return -1;
    }
    Py_ssize_t need = (OPLOG_ENTRY_HEAD + na + nb + 7) & ~(Py_ssize_t)7;
    if (need > m->size - pos) {
        return -1;
    }
    char *p = m->addr + pos;
    uint32_t head[4] = {code, (uint32_t)na, (uint32_t)nb, 0};
    memcpy(p, head, OPLOG_ENTRY_HEAD);
    memcpy(p + OPLOG_ENTRY_HEAD, PyBytes_AS_STRING(a), (size_t)na);
    memcpy(p + OPLOG_ENTRY_HEAD + na, PyBytes_AS_STRING(b), (size_t)nb);
    return pos + need;
}

/* Parse (pos, code, a: bytes, b: bytes) of append/commit: 0, or -1 with
 * TypeError / OverflowError set. */
static int
oplog_entry_args(PyObject *const *args, Py_ssize_t nargs, const char *usage,
                 unsigned long long *pos, uint32_t *code)
{
    if (nargs != 4 || !PyBytes_Check(args[2]) || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *pos = PyLong_AsUnsignedLongLong(args[0]);
    if (*pos == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    unsigned long c = PyLong_AsUnsignedLong(args[1]);
    if (c == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (c > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "operation code too large");
        return -1;
    }
    *code = (uint32_t)c;
    return 0;
}

/* append(pos, code, a, b): write the entry at pos.  Returns the position
 * after it, or -1 when it does not fit (nothing written).  Not published:
 * the caller publishes. */
static PyObject *
oplog_append(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    OpLogObject *self = (OpLogObject *)op;
    unsigned long long pos;
    uint32_t code;
    if (oplog_entry_args(args, nargs, "append(pos, code, a: bytes, b: bytes)",
                         &pos, &code)
        < 0) {
        return NULL;
    }
    MappingObject *m = oplog_log(self);
    if (m == NULL) {
        return NULL;
    }
    if (pos > (unsigned long long)PY_SSIZE_T_MAX) {
        pos = 0; /* rejected as a bad position */
    }
    Py_ssize_t r = oplog_write(m, (Py_ssize_t)pos, code, args[2], args[3]);
    if (r == -2) {
        return NULL;
    }
    return PyLong_FromSsize_t(r);
}

/* commit(state, code, a, b): the whole of a small operation's commit
 * (lock held): write the entry at state's tail and publish the state
 * with the new tail.  Returns that state, or -1 when the entry does not
 * fit (nothing written or published). */
static PyObject *
oplog_commit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    OpLogObject *self = (OpLogObject *)op;
    unsigned long long st;
    uint32_t code;
    if (oplog_entry_args(args, nargs,
                         "commit(state, code, a: bytes, b: bytes)", &st, &code)
        < 0) {
        return NULL;
    }
    MappingObject *m = oplog_log(self);
    if (m == NULL) {
        return NULL;
    }
    Py_ssize_t r = oplog_write(m, (Py_ssize_t)(st & OPLOG_TAIL_MASK), code,
                               args[2], args[3]);
    if (r == -2) {
        return NULL;
    }
    if (r == -1) {
        return PyLong_FromLong(-1);
    }
    uint64_t next = ((uint64_t)st & ~OPLOG_TAIL_MASK) | (uint64_t)r;
    __atomic_store_n(&oplog_header(self)->state, next, __ATOMIC_RELEASE);
    return PyLong_FromUnsignedLongLong(next);
}

/* read(pos, end): the entry at pos, as (code, a, b, next); ValueError when
 * the entry does not lie within [pos, end) of the mapping. */
static PyObject *
oplog_read(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    OpLogObject *self = (OpLogObject *)op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read(pos, end)");
        return NULL;
    }
    MappingObject *m = oplog_log(self);
    if (m == NULL) {
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[0]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[1]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (pos < OPLOG_LOG_START || (pos & 7) != 0 || end > m->size
        || end - pos < OPLOG_ENTRY_HEAD) {
        goto corrupt;
    }
    uint32_t head[4];
    memcpy(head, m->addr + pos, OPLOG_ENTRY_HEAD);
    Py_ssize_t need =
        (OPLOG_ENTRY_HEAD + (Py_ssize_t)head[1] + (Py_ssize_t)head[2] + 7)
        & ~(Py_ssize_t)7;
    if (need > end - pos) {
        goto corrupt;
    }
    const char *p = m->addr + pos + OPLOG_ENTRY_HEAD;
    return Py_BuildValue("(ky#y#n)", (unsigned long)head[0], p,
                         (Py_ssize_t)head[1], p + head[1], (Py_ssize_t)head[2],
                         pos + need);

corrupt:
    PyErr_SetString(PyExc_ValueError, "corrupt manager log entry");
    return NULL;
}

static PyObject *
oplog_get_log_size(PyObject *op, void *Py_UNUSED(closure))
{
    OpLogObject *self = (OpLogObject *)op;
    MappingObject *m = oplog_log(self);
    if (m == NULL) {
        return NULL;
    }
    return PyLong_FromSsize_t(m->size);
}

static PyMethodDef oplog_methods[] = {
    {"lock", oplog_lock, METH_NOARGS,
     "lock($self, /)\n--\n\nTake the writer lock; True if taken over from "
     "a dead holder."},
    {"acquire", (PyCFunction)(void (*)(void))oplog_acquire, METH_FASTCALL,
     "acquire($self, blocking, timeout, /)\n--\n\nA Lock container's "
     "acquire (timeout < 0: forever)."},
    {"release_any", oplog_release_any, METH_NOARGS,
     "release_any($self, /)\n--\n\nA Lock container's release: "
     "RuntimeError when not held."},
    {"locked", oplog_locked, METH_NOARGS,
     "locked($self, /)\n--\n\nIs the lock word held?"},
    {"event_set", oplog_event_set, METH_NOARGS,
     "event_set($self, /)\n--\n\nAn Event container's set()."},
    {"event_clear", oplog_event_clear, METH_NOARGS,
     "event_clear($self, /)\n--\n\nAn Event container's clear()."},
    {"event_is_set", oplog_event_is_set, METH_NOARGS,
     "event_is_set($self, /)\n--\n\nAn Event container's is_set()."},
    {"event_wait", oplog_event_wait, METH_O,
     "event_wait($self, timeout, /)\n--\n\nAn Event container's wait()."},
    {"sem_init", (PyCFunction)(void (*)(void))oplog_sem_init, METH_FASTCALL,
     "sem_init($self, value, limit, /)\n--\n\nA Semaphore container's "
     "initial value and bound (0: none)."},
    {"sem_acquire", (PyCFunction)(void (*)(void))oplog_sem_acquire,
     METH_FASTCALL,
     "sem_acquire($self, blocking, timeout, /)\n--\n\nA Semaphore "
     "container's acquire (timeout None: forever)."},
    {"sem_release", oplog_sem_release, METH_NOARGS,
     "sem_release($self, /)\n--\n\nA Semaphore container's release()."},
    {"rlock_acquire", (PyCFunction)(void (*)(void))oplog_rlock_acquire,
     METH_FASTCALL,
     "rlock_acquire($self, blocking, timeout, /)\n--\n\nAn RLock "
     "container's acquire (timeout < 0: forever)."},
    {"rlock_release", oplog_rlock_release, METH_NOARGS,
     "rlock_release($self, /)\n--\n\nAn RLock container's release()."},
    {"rlock_state", oplog_rlock_state, METH_NOARGS,
     "rlock_state($self, /)\n--\n\n(held, count, held by the calling "
     "thread)."},
    {"sem_bound", oplog_sem_bound, METH_NOARGS,
     "sem_bound($self, /)\n--\n\nA BoundedSemaphore container's bound "
     "(0: a Semaphore)."},
    {"sem_value", oplog_sem_value, METH_NOARGS,
     "sem_value($self, /)\n--\n\nA Semaphore container's value."},
    {"cell", fastmp_oplog_cell, METH_O,
     "cell($self, i, /)\n--\n\nThe value of cell i (oplog_cells.c)."},
    {"cell_set", (PyCFunction)(void (*)(void))fastmp_oplog_cell_set,
     METH_FASTCALL, "cell_set($self, i, value, /)\n--\n\nStore into cell i."},
    {"cell_cas", (PyCFunction)(void (*)(void))fastmp_oplog_cell_cas,
     METH_FASTCALL,
     "cell_cas($self, i, expected, new, /)\n--\n\nCompare and swap cell "
     "i."},
    {"cell_add", (PyCFunction)(void (*)(void))fastmp_oplog_cell_add,
     METH_FASTCALL,
     "cell_add($self, i, n, /)\n--\n\nAdd n to cell i; the new value."},
    {"cell_wait", (PyCFunction)(void (*)(void))fastmp_oplog_cell_wait,
     METH_FASTCALL,
     "cell_wait($self, i, expected, timeout, /)\n--\n\nSleep one slice "
     "at most while cell i's futex half equals expected; False when the "
     "timeout has passed."},
    {"cell_wake", (PyCFunction)(void (*)(void))fastmp_oplog_cell_wake,
     METH_FASTCALL,
     "cell_wake($self, i, n, /)\n--\n\nWake n sleepers of cell i (n < 0: "
     "all)."},
    {"owner_self", fastmp_oplog_owner_self, METH_NOARGS,
     "owner_self($self, /)\n--\n\nThis process's owner value."},
    {"owner_dead", fastmp_oplog_owner_dead, METH_O,
     "owner_dead($self, value, /)\n--\n\nIs the process named by an owner "
     "value dead?"},
    {"unlock", oplog_unlock, METH_NOARGS,
     "unlock($self, /)\n--\n\nFree the writer lock."},
    {"state", oplog_state, METH_NOARGS,
     "state($self, /)\n--\n\nThe commit word: (generation << 40) | tail."},
    {"publish", oplog_publish, METH_O,
     "publish($self, state, /)\n--\n\nStore the commit word (lock holder "
     "only)."},
    {"set_log", (PyCFunction)(void (*)(void))oplog_set_log, METH_FASTCALL,
     "set_log($self, mapping, create, /)\n--\n\nUse mapping as the log."},
    {"append", (PyCFunction)(void (*)(void))oplog_append, METH_FASTCALL,
     "append($self, pos, code, a, b, /)\n--\n\nWrite an entry at pos; the "
     "next "
     "position, or -1 if it does not fit."},
    {"commit", (PyCFunction)(void (*)(void))oplog_commit, METH_FASTCALL,
     "commit($self, state, code, a, b, /)\n--\n\nAppend an entry at "
     "state's tail and publish; the new state, or -1 if it does not fit."},
    {"read", (PyCFunction)(void (*)(void))oplog_read, METH_FASTCALL,
     "read($self, pos, end, /)\n--\n\nThe entry at pos: (code, a, b, "
     "next)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef oplog_getset[] = {
    {"log_size", oplog_get_log_size, NULL, "Bytes in the log's mapping.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot oplog_slots[] = {
    {Py_tp_new, oplog_new},
    {Py_tp_dealloc, oplog_dealloc},
    {Py_tp_traverse, oplog_traverse},
    {Py_tp_clear, oplog_clear},
    {Py_tp_methods, oplog_methods},
    {Py_tp_getset, oplog_getset},
    {Py_tp_doc, "_OpLog(dir, create, /)\n--\n\nThe shared operation log of a "
                "manager container."},
    {0, NULL},
};

PyType_Spec fastmp_oplog_spec = {
    .name = "fastmp._fastmp._OpLog",
    .basicsize = sizeof(OpLogObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = oplog_slots,
};
