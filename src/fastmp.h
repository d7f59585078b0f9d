/*
 * fastmp.h -- the one header every fastmp C file includes.
 *
 * It holds the module state, the shared-arena interface (arena.c), the
 * platform interface (platform_linux.c: memfd, futex, process identity),
 * the blocking-wait helper (wait.c), pickling (pickling.c) and the small C
 * interface that one area offers another (SemLock for the synchronized
 * Value/Array wrappers).
 *
 * Each area owns a section below, fenced by "area:" comments, and its own
 * state struct; keep edits inside your own section.
 */
#ifndef FASTMP_H
#define FASTMP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#if PY_VERSION_HEX < 0x03090000
#error "fastmp needs CPython 3.9 or newer"
#endif

#define FASTMP_UNUSED(x) ((void)(x))

/* ---------------------------------------------------------------------
 * platform: platform_linux.c.  A port to another OS replaces that file.
 * ------------------------------------------------------------------- */

/* Every system call fastmp makes is behind a fastmp_platform_* function
 * declared here (or a static inline one below).  They never touch the
 * Python API: they return a status and keep errno; the caller raises,
 * with fastmp_oserror_syscall() naming the call. */

/* Spin-wait hint: `pause` on x86, `yield` on aarch64, nothing elsewhere. */
static inline void
fastmp_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* timespec arithmetic (CLOCK_MONOTONIC values; tv_nsec in [0, 1e9)). */
#define FASTMP_NS_PER_SEC 1000000000

static inline int64_t
fastmp_ts_to_ns(const struct timespec *ts)
{
    return (int64_t)ts->tv_sec * FASTMP_NS_PER_SEC + ts->tv_nsec;
}

static inline struct timespec
fastmp_ts_from_ns(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / FASTMP_NS_PER_SEC);
    ts.tv_nsec = (long)(ns % FASTMP_NS_PER_SEC);
    return ts;
}

/* Add ns (>= 0) to *ts. */
static inline void
fastmp_ts_add_ns(struct timespec *ts, int64_t ns)
{
    ts->tv_sec += (time_t)(ns / FASTMP_NS_PER_SEC);
    ts->tv_nsec += (long)(ns % FASTMP_NS_PER_SEC);
    if (ts->tv_nsec >= FASTMP_NS_PER_SEC) {
        ts->tv_sec += 1;
        ts->tv_nsec -= FASTMP_NS_PER_SEC;
    }
}

/* 1 when a is earlier than b. */
static inline int
fastmp_ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec
           || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* The CLOCK_MONOTONIC time now. */
static inline void
fastmp_platform_now(struct timespec *ts)
{
    (void)clock_gettime(CLOCK_MONOTONIC, ts);
}

/* The same in nanoseconds. */
static inline int64_t
fastmp_now_ns(void)
{
    struct timespec ts;
    fastmp_platform_now(&ts);
    return fastmp_ts_to_ns(&ts);
}

/* Sleep `ns` nanoseconds, resuming after signals (tests only). */
void fastmp_platform_sleep_ns(int64_t ns);

/* Stop this process with SIGSTOP (tests only). */
void fastmp_platform_stop_self(void);

/* How many CPUs this process may run on (its affinity mask); 0 when
 * unknown. */
int fastmp_platform_ncpus(void);

/* close(2).  Linux frees the descriptor even when it reports EINTR, so
 * that is not an error here.  0, or -1 with errno set. */
int fastmp_platform_close(int fd);

/* Create an anonymous shared-memory file of `size` bytes (sparse).
 * Returns an fd (close-on-exec) or -1 with errno set.  Uses memfd_create,
 * falling back to an immediately unlinked shm_open segment. */
int fastmp_platform_shm_anon(const char *tag, uint64_t size);

/* Set the size of a file from fastmp_platform_shm_anon (pages past a
 * smaller size are freed).  Returns 0, or -1 with errno set (ENOMEM,
 * ENOSPC, EFBIG when memory or a limit is exhausted). */
int fastmp_platform_shm_resize(int fd, uint64_t size);

/* The current size of such a file in *size.  0, or -1 with errno set. */
int fastmp_platform_shm_size(int fd, uint64_t *size);

/* Map `size` bytes of fd from `offset` (page aligned), shared, read and
 * write.  Returns the address, or NULL with errno set. */
void *fastmp_platform_shm_map(int fd, uint64_t offset, uint64_t size);

/* Resize a mapping made by fastmp_platform_shm_map; it may move.  Returns
 * the new address, or NULL with errno set and the old mapping intact. */
void *fastmp_platform_shm_remap(void *addr, uint64_t old_size,
                                uint64_t new_size);

/* Undo fastmp_platform_shm_map (NULL: nothing). */
void fastmp_platform_shm_unmap(void *addr, uint64_t size);

/* Free the pages of [offset, offset + len) of a shared-memory file; they
 * read back as zeros.  Best effort: 0, or -1 with errno set. */
int fastmp_platform_shm_punch(int fd, uint64_t offset, uint64_t len);

/* Identity and resident size of an open file: device and inode, and the
 * bytes it holds in memory.  0, or -1 with errno set. */
int fastmp_platform_file_id(int fd, uint64_t *dev, uint64_t *ino,
                            uint64_t *size);
int fastmp_platform_file_resident(int fd, uint64_t *bytes);

/* Named POSIX shared memory (shm_open / shm_unlink).  open returns an fd
 * (create: O_CREAT | O_EXCL with `mode`) or -1 with errno set. */
int fastmp_platform_shm_open_named(const char *name, int create, int mode);
int fastmp_platform_shm_unlink_named(const char *name);

/* Pipe and socket I/O for connection.c, inline: they are its hot path
 * (one call fewer per message).  No retry on EINTR: the caller
 * checks signals and retries.  read/writev/recv return like the
 * syscalls; poll_in waits up to `ms` (0: a look) for fd to be readable
 * and returns 1, 0, or -1 with errno set. */
static inline ssize_t
fastmp_platform_read(int fd, void *buf, size_t n)
{
    return read(fd, buf, n);
}

static inline ssize_t
fastmp_platform_writev(int fd, const struct iovec *iov, int iovcnt)
{
    return writev(fd, iov, iovcnt);
}

static inline ssize_t
fastmp_platform_recv_nowait(int fd, void *buf, size_t n)
{
    return recv(fd, buf, n, MSG_DONTWAIT);
}

static inline int
fastmp_platform_poll_in(int fd, int ms)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    int r = poll(&pfd, 1, ms);
    return r > 0 ? 1 : r;
}

/* The machine's physical memory in bytes (cached; 0 when unknown). */
uint64_t fastmp_platform_phys_bytes(void);

/* Block while *word == expected, at most until the absolute CLOCK_MONOTONIC
 * time `until` (NULL: no limit).  Must be called WITHOUT the GIL; never
 * touches the Python API.  Returns 0 (woken, value differed, or a signal
 * arrived: the caller re-checks) or ETIMEDOUT; any other value is an errno
 * from the futex call. */
int fastmp_platform_futex_wait(uint32_t *word, uint32_t expected,
                               const struct timespec *until);

/* Wake up to n waiters blocked on word (INT32_MAX: all).  Returns the
 * number woken or -1 with errno set. */
int fastmp_platform_futex_wake(uint32_t *word, int n);

/* This process's identity token: its start time in clock ticks since boot
 * (from /proc/self/stat), cached; re-read after fork.  Never 0. */
extern uint64_t fastmp_platform_cached_start;
uint64_t fastmp_platform_self_start_slow(void);
static inline uint64_t
fastmp_platform_self_start(void)
{
    uint64_t s = fastmp_platform_cached_start;
    return s != 0 ? s : fastmp_platform_self_start_slow();
}

/* Is the process (pid, start) alive?  start is the token that process's
 * fastmp_platform_self_start() returned (0: unknown, pid alone decides).
 * Returns 1 alive, 0 dead (or pid reused by another process). */
int fastmp_platform_pid_alive(uint32_t pid, uint64_t start);

/* As fastmp_platform_pid_alive, with a token from fastmp_owner_token. */
int fastmp_platform_pid_alive32(uint32_t pid, uint32_t token);

/* Cached getpid(), refreshed after fork. */
extern uint32_t fastmp_platform_cached_pid;
uint32_t fastmp_platform_getpid_slow(void);
static inline uint32_t
fastmp_platform_getpid(void)
{
    uint32_t p = fastmp_platform_cached_pid;
    return p != 0 ? p : fastmp_platform_getpid_slow();
}

/* Called in a fork child (from the module's after-fork hook). */
void fastmp_platform_after_fork_child(void);

/* ---------------------------------------------------------------------
 * wait: wait.c -- blocking with the GIL released, a monotonic deadline,
 * prompt Ctrl-C.
 * ------------------------------------------------------------------- */

/* Longest single futex sleep; between slices signals are checked and the
 * caller may look for a dead peer. */
#define FASTMP_WAIT_SLICE_NS (50 * 1000 * 1000)

typedef struct {
    int forever;        /* 1: no deadline */
    struct timespec at; /* absolute CLOCK_MONOTONIC */
} fastmp_deadline;

/* Fill *d from a Python timeout: Py_None or NULL means forever; a number is
 * seconds (negative means 0, as the stdlib's SemLock treats it).  Returns 0,
 * or -1 with TypeError/ValueError/OverflowError set. */
int fastmp_deadline_from_object(PyObject *timeout, fastmp_deadline *d);

/* Fill *d from seconds (< 0: forever). */
void fastmp_deadline_from_seconds(double seconds, fastmp_deadline *d);

/* 1 if the deadline has passed. */
int fastmp_deadline_expired(const fastmp_deadline *d);

/* Seconds left (>= 0), or -1.0 when forever. */
double fastmp_deadline_remaining(const fastmp_deadline *d);

/* Called WITH the GIL.  Sleeps on the futex `word` while it equals
 * `expected`, releasing the GIL, for at most one slice and never past the
 * deadline, then runs PyErr_CheckSignals().  Returns 0 when the caller
 * should re-check its condition (woken, changed, slice over), 1 when the
 * deadline has passed, -1 with an exception set (KeyboardInterrupt from a
 * signal handler, or OSError). */
int fastmp_wait_futex(uint32_t *word, uint32_t expected,
                      const fastmp_deadline *d);

/* As fastmp_wait_futex for waits that no exception may come out of (a
 * lock protecting a critical section that must be entered): signal
 * handlers are not run.  Returns 0 (re-check) or 1 (deadline passed). */
int fastmp_wait_futex_quiet(uint32_t *word, uint32_t expected,
                            const fastmp_deadline *d);

/* Called WITH the GIL.  Wait until fd is readable (or at EOF or in
 * error), at most until d, in slices with the GIL released and signals
 * checked.  Returns 1 ready, 0 timed out, -1 with an exception set. */
int fastmp_wait_readable(int fd, const fastmp_deadline *d);

/* A monotonic "every slice" timer: *next is when the next look is due.
 * fastmp_slice_due returns 1 (and moves *next one slice on) when it has
 * come.  For looks that cost system calls (is a holder dead?), done at
 * most once a slice however often the waiter is woken. */
static inline void
fastmp_slice_start(int64_t *next)
{
    *next = fastmp_now_ns() + FASTMP_WAIT_SLICE_NS;
}

static inline int
fastmp_slice_due(int64_t *next)
{
    int64_t now = fastmp_now_ns();
    if (now < *next) {
        return 0;
    }
    *next = now + FASTMP_WAIT_SLICE_NS;
    return 1;
}

/* Spinning before sleeping.  A wait that ends within microseconds (a peer
 * on another CPU answering) costs far less if the waiter watches for the
 * change than if it sleeps and is woken.  A fastmp_spin is process-local
 * memory of one object's recent waits: the budget is twice the last wait
 * when that was shorter than FASTMP_SPIN_CAP_NS, halved after a spin that
 * saw nothing, and always 0 when the process can run on one CPU only. */
#define FASTMP_SPIN_CAP_NS 50000

typedef struct {
    uint32_t budget_ns;
} fastmp_spin;

/* 1 when spinning can pay at all: this process may run on more than one
 * CPU (checked once).  A brief fixed spin (a few dozen pause
 * instructions before the real wait) asks this too. */
extern int fastmp_spin_cpus_ok; /* -1 until known */
int fastmp_spin_ok_slow(void);
static inline int
fastmp_spin_ok(void)
{
    int ok = fastmp_spin_cpus_ok;
    return ok >= 0 ? ok : fastmp_spin_ok_slow();
}

void fastmp_spin_init(fastmp_spin *sp);
/* Record a wait of `waited` ns; `spun` says whether spinning saw it end. */
void fastmp_spin_learn(fastmp_spin *sp, int64_t waited, int spun);

/* Watch `word` without sleeping (GIL released) until it differs from
 * `expected` (1) or sp's budget, counted from t0, is spent (0). */
int fastmp_spin_watch(uint32_t *word, uint32_t expected, fastmp_spin *sp,
                      int64_t t0);

/* Spin on a condition that is not a futex word (input on an fd): call
 * look(arg) without the GIL (so it must not touch the Python API) until
 * it returns non-zero or sp's budget, counted from t0, is spent.  Returns
 * look's last result (0: the budget ran out first, or there was none). */
int fastmp_spin_poll(fastmp_spin *sp, int64_t t0, int (*look)(void *arg),
                     void *arg);

/* fastmp_wait_futex, first watching `word` for a change without sleeping
 * (GIL released) for at most sp's budget.  Returns like
 * fastmp_wait_futex. */
int fastmp_wait_futex_spin(uint32_t *word, uint32_t expected,
                           const fastmp_deadline *d, fastmp_spin *sp);

/* ---------------------------------------------------------------------
 * owner: owner.c -- the one process-shared owner lock.
 *
 * A 64-bit word, 0 when free.  Held, its low half (the futex word) is the
 * holder's pid, with FASTMP_OWNER_WAITERS set when someone may sleep on
 * it; its high half is the holder's start token (fastmp_owner_token).
 * One CAS 0 -> (pid, token) takes the lock and publishes who holds it, so
 * a live holder is identified exactly from its first instant, however
 * long it is stalled (preempted, SIGSTOP, a page fault).  A waiter that
 * finds the (pid, token) it saw dead takes the lock over with a CAS from
 * exactly that value: of several waiters one wins, and a holder that took
 * the lock in the meantime is never robbed.  docs/dead-holders.md.
 * ------------------------------------------------------------------- */

#define FASTMP_OWNER_WAITERS UINT32_C(0x80000000)

/* The 32-bit start token stored in owner words: never 0. */
static inline uint32_t
fastmp_owner_token(uint64_t start)
{
    uint32_t t = (uint32_t)start;
    return t != 0 ? t : 1;
}

static inline uint64_t
fastmp_owner_make(uint32_t pid, uint32_t token)
{
    return (uint64_t)pid | ((uint64_t)token << 32);
}

static inline uint32_t
fastmp_owner_pid(uint64_t v)
{
    return (uint32_t)v & ~FASTMP_OWNER_WAITERS;
}

/* This process's owner value (pid, token). */
static inline uint64_t
fastmp_owner_self(void)
{
    return fastmp_owner_make(fastmp_platform_getpid(),
                             fastmp_owner_token(fastmp_platform_self_start()));
}

/* The futex half of an owner word. */
static inline uint32_t *
fastmp_owner_futex(uint64_t *w)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (uint32_t *)w;
#else
    return (uint32_t *)w + 1;
#endif
}

/* Test hook (tests only, off unless _fastmp._owner_stall() was called in
 * this process): after every acquisition the holder stalls. */
extern int fastmp_owner_stall_armed;
void fastmp_owner_stall(void);

/* Take the lock if it is free.  1 taken, 0 not. */
static inline int
fastmp_owner_try(uint64_t *w)
{
    uint64_t expected = 0;
    if (__atomic_compare_exchange_n(w, &expected, fastmp_owner_self(), 0,
                                    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        if (fastmp_owner_stall_armed) {
            fastmp_owner_stall();
        }
        return 1;
    }
    return 0;
}

/* Is the holder named by owner value v dead (or v names nobody)? */
int fastmp_owner_dead(uint64_t v);

/* If `seen` (a value read from *w) names a dead holder, take the lock
 * over: CAS seen -> self, keeping the waiters bit.  1 taken over. */
int fastmp_owner_takeover(uint64_t *w, uint64_t seen);

/* Flags of fastmp_owner_lock. */
#define FASTMP_OWNER_INTERRUPTIBLE                                            \
    1 /* check signals between slices                                         \
          (may fail with an exception) */
#define FASTMP_OWNER_SELF_IS_STALE                                            \
    2 /* critical sections never release                                      \
          the GIL: finding this process as                                    \
          the holder means it died there                                      \
          (or the word is corrupt) */

/* Blocking acquire.  Called WITH the GIL, which is released while
 * sleeping.  Returns 0 taken, 1 taken over from a dead holder (the caller
 * repairs what it protects), 2 the deadline passed (d may be NULL:
 * forever), -1 with an exception set (only with INTERRUPTIBLE). */
int fastmp_owner_lock(uint64_t *w, const fastmp_deadline *d, int flags);

/* Release: the word returns to 0; a sleeper, if any, is woken. */
static inline void
fastmp_owner_unlock(uint64_t *w)
{
    uint64_t old = __atomic_exchange_n(w, 0, __ATOMIC_RELEASE);
    if (old & FASTMP_OWNER_WAITERS) {
        (void)fastmp_platform_futex_wake(fastmp_owner_futex(w), 1);
    }
}

/* ---------------------------------------------------------------------
 * arena: arena.c -- process-shared memory carved into blocks.
 *
 * Segments are memfd files mapped MAP_SHARED.  A block is (segment,
 * offset).  A pool block records, per holder slot, which processes hold it
 * (a slot names a process by pid and start token); a dead holder's
 * references are recovered without its help.  A large block is a segment
 * of its own, freed by the kernel with its last mapping.  See arena.c.
 * ------------------------------------------------------------------- */

typedef struct fastmp_segment_object fastmp_segment_object;

/* A process-local handle on one block.  Embed it in any Python object that
 * owns arena memory; fastmp_block_alloc/attach register it so that a fork
 * child takes its own reference. */
typedef struct fastmp_block {
    fastmp_segment_object *seg;       /* strong ref (a Python object) */
    uint64_t offset;                  /* of the user data within the segment */
    void *ptr;                        /* seg base + offset */
    size_t size;                      /* usable bytes */
    int released;                     /* this process's reference is gone */
    int how;                          /* how this process holds it (arena.c) */
    struct fastmp_block *prev, *next; /* tracking list (process-local) */
    /* Other handles of this process on the same block (a ring). */
    struct fastmp_block *sib_prev, *sib_next;
} fastmp_block;

/* Blocks are aligned to this (enough for long double and SIMD loads). */
#define FASTMP_BLOCK_ALIGN 16

/* Allocate `size` zeroed bytes of shared memory.  On success fills *b
 * (held by this process, tracked) and returns 0; on failure returns -1 with
 * MemoryError/OSError set.  Needs the GIL. */
int fastmp_block_alloc(size_t size, fastmp_block *b);

/* Take a new handle on the block at (seg, offset) -- used when an
 * object is rebuilt in a spawned child.  Validates offset/size against the
 * segment; returns 0, or -1 with ValueError set.  Tracks *b. */
int fastmp_block_attach(PyObject *seg, uint64_t offset, size_t size,
                        fastmp_block *b);

/* Drop this handle (idempotent) and untrack.  Frees the block when it
 * was the last reference anywhere.  Needs the GIL. */
void fastmp_block_release(fastmp_block *b);

/* The Segment object that holds b, as a new reference (for pickling). */
PyObject *fastmp_block_segment(const fastmp_block *b);

/* Check a Python object is a Segment. */
int fastmp_segment_check(PyObject *o);

/* ---------------------------------------------------------------------
 * area: semlock (semlock.c)
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *SemLockType;
    PyObject *AbandonedLockWarning;
    /* fastmp.synchronize's _reduce and _repr, looked up on first use. */
    PyObject *sync_reduce;
    PyObject *sync_repr;
} fastmp_semlock_state;

/* For other areas (the synchronized Value/Array wrappers): if `lock` is a
 * fastmp SemLock, or an object whose `_semlock` attribute is one (the same
 * object at every access), return that C object as a new reference, which
 * the caller keeps for as long as it uses the lock; else NULL without an
 * exception. */
PyObject *fastmp_semlock_unwrap(PyObject *lock);

/* Acquire (blocking, no timeout) / release a SemLock returned by
 * fastmp_semlock_unwrap.  0 on success, -1 with an exception set. */
int fastmp_semlock_enter(PyObject *semlock);
int fastmp_semlock_exit(PyObject *semlock);
/* 1 when the calling thread holds this SemLock and it is recursive (an
 * RLock): what it protects may then be used without taking it again. */
int fastmp_semlock_held_by_me(PyObject *semlock);
/* Lock-free reads of data a mutex (Lock, RLock) protects.  `word` is 0
 * while the mutex is free; `gen` grows by one at every release, before
 * `word` goes back to 0.  A reader loads gen, then word (0, or it must
 * lock), copies the data, issues an acquire fence, and keeps the copy if
 * word is still 0 and gen unchanged: no critical section overlapped it.
 * Returns 0 (pointers unset) for a counting semaphore.  The pointers stay
 * valid while the SemLock object lives. */
int fastmp_semlock_seq(PyObject *semlock, const uint32_t **word,
                       const uint32_t **gen);

/* end area: semlock */

/* ---------------------------------------------------------------------
 * semlock internals: shared by semlock.c (the shared_sem core: mutex and
 * counting acquire/release, dead-holder recovery), semlock_types.c (the
 * Python types), semlock_with.c (`with lock:` descriptors) and event.c.
 * Not for other areas: they use the interface above.
 * ------------------------------------------------------------------- */

#define SEMLOCK_RECURSIVE_MUTEX 0
#define SEMLOCK_SEMAPHORE 1
#define FASTMP_SEM_VALUE_MAX INT_MAX
#define FASTMP_SEM_NOBODY UINT32_C(0xffffffff)
#define FASTMP_SEM_NSLOTS 12

/* One process's record of the units of a counting semaphore it holds.
 *
 *   pid: 0 when free; claimed with a CAS 0 -> pid by the process itself,
 *       set back to 0 by that process (fastmp_sem_forget_slot) or by a waiter
 * that found the process dead (after taking its units). taken: written only by
 * the owning process, under its GIL, with plain atomic stores (no
 * read-modify-write, so no locked instruction; sub-interpreters with a GIL
 * each would need a real atomic add): +1 for each tracked acquire, -1 when the
 * owner pays a unit back itself.  Set equal to `paid` when the slot is
 * claimed. paid: units paid back on the owner's behalf: CAS +1 by a release in
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

/* end semlock internals */

/* ---------------------------------------------------------------------
 * area: sharedctypes (sharedctypes.c)
 * ------------------------------------------------------------------- */

#define FASTMP_SMALL_INT_MIN (-5)
#define FASTMP_SMALL_INT_MAX 256

typedef struct {
    PyTypeObject *BlockType;      /* a Block of arena memory */
    PyTypeObject *SyncBaseType;   /* SynchronizedBase */
    PyTypeObject *SyncType;       /* Synchronized (values, atomics) */
    PyTypeObject *SyncArrayType;  /* SynchronizedArray */
    PyTypeObject *SyncStringType; /* SynchronizedString (char arrays) */
    /* The interpreter's cached ints -5..256, held here so that building
     * a list from an array of small values needs no call per element. */
    PyObject *small_ints[FASTMP_SMALL_INT_MAX - FASTMP_SMALL_INT_MIN + 1];
} fastmp_sharedctypes_state;

/* end area: sharedctypes */

/* ---------------------------------------------------------------------
 * sharedctypes internals: shared by sharedctypes.c and atomics.c.
 * ------------------------------------------------------------------- */

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

/* end sharedctypes internals */

/* ---------------------------------------------------------------------
 * area: shm (shm.c) -- SharedMemory, ShareableList
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *MappingType;  /* _ShmMapping: one mmap of a segment */
    PyTypeObject *ListCoreType; /* _ShareableListCore */
    PyObject *struct_error;     /* struct.error */
} fastmp_shm_state;

/* end area: shm */

/* ---------------------------------------------------------------------
 * area: pickling (pickling.c) -- the one way fastmp pickles: exactly
 * multiprocessing.reduction.ForkingPickler.dumps / .loads, with one
 * reusable pickler whose dispatch table reads ForkingPickler's reducers
 * live.  Connection.send/recv and Queue.put/get use it.
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *TableType; /* the dispatch table's type */
    PyObject *table;         /* its one instance */
    /* Filled on first use (importing multiprocessing.reduction at module
     * exec would slow down `import fastmp`). */
    PyObject *extra_reducers; /* ForkingPickler._extra_reducers */
    PyObject *copyreg_table;  /* ForkingPickler._copyreg_dispatch_table */
    PyObject *loads;          /* ForkingPickler.loads */
    PyObject *pickler;        /* the reusable pickle.Pickler (NULL after a
                                 failed dump: made again) */
    PyObject *out;            /* the list its writes are appended to */
    int busy;                 /* `pickler` is dumping: a nested dump (a
                                 reducer that pickles, another thread)
                                 uses a fresh one */
    PyObject *str_dump, *str_clear_memo; /* interned names */
} fastmp_pickling_state;

/* Pickle obj as ForkingPickler.dumps(obj) does: the same bytes, the same
 * reducers (copyreg's table and ForkingPickler's, including reducers
 * registered or replaced since the last call).  Returns a new bytes
 * object, or NULL with the exception the pickling raised (PicklingError,
 * TypeError, a reducer's own exception...).  Reentrant. */
PyObject *fastmp_dumps(PyObject *obj);

/* ForkingPickler.loads(data) for a bytes-like `data`.  Returns a new
 * reference, or NULL with an exception set. */
PyObject *fastmp_loads(PyObject *data);

/* end area: pickling */

/* ---------------------------------------------------------------------
 * area: connection (connection.c)
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *ConnectionType;
    /* multiprocessing.BufferTooShort, filled on first use. */
    PyObject *BufferTooShort;
} fastmp_connection_state;

/* end area: connection */

/* ---------------------------------------------------------------------
 * area: ring (ring.c) -- the Queue ring buffer
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *RingType; /* _Ring, base of fastmp.queues.Queue */
    PyObject *Empty;        /* queue.Empty, filled on first use */
    PyObject *Full;         /* queue.Full, filled on first use */
} fastmp_ring_state;

/* end area: ring */

/* ---------------------------------------------------------------------
 * module state (module.c)
 * ------------------------------------------------------------------- */

typedef struct {
    PyTypeObject *SegmentType;
    PyObject *alloc_segment; /* arena.c: the pool segment to carve */
    fastmp_semlock_state semlock;
    fastmp_sharedctypes_state sharedctypes;
    fastmp_shm_state shm;
    fastmp_connection_state connection;
    fastmp_ring_state ring;
    fastmp_pickling_state pickling;
} fastmp_state;

/* Reaching the module state -- one convention for all code: call
 * fastmp_get_state().  fastmp supports one interpreter per process
 * (Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED; shared memory is per
 * process anyway), so the state is one global pointer, set by the exec
 * slot and reset to NULL by m_free: a load, cheaper than
 * PyModule_GetState or PyType_GetModuleState, and the same from module
 * functions, methods, dealloc and helpers.  It is NULL before exec and
 * after the module is freed: code that can run then (dealloc, type
 * checks, fastmp_semlock_unwrap) tests for NULL.  A method of a live
 * fastmp object may assume non-NULL: its heap type holds the module. */
extern fastmp_state *fastmp_current_state;

static inline fastmp_state *
fastmp_get_state(void)
{
    return fastmp_current_state;
}

/* Per-area exec hooks: create types, add them and the area's module-level
 * functions (PyModule_AddFunctions) to the module.  Return 0, or -1 with
 * an exception set.  traverse/clear visit the area's state. */
int fastmp_arena_exec(PyObject *m, fastmp_state *st);
int fastmp_semlock_exec(PyObject *m, fastmp_state *st);
int fastmp_sharedctypes_exec(PyObject *m, fastmp_state *st);
int fastmp_shm_exec(PyObject *m, fastmp_state *st);
int fastmp_connection_exec(PyObject *m, fastmp_state *st);
int fastmp_ring_exec(PyObject *m, fastmp_state *st);
int fastmp_pickling_exec(PyObject *m, fastmp_state *st);

int fastmp_semlock_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_sharedctypes_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_shm_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_connection_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_ring_traverse(fastmp_state *st, visitproc visit, void *arg);
int fastmp_pickling_traverse(fastmp_state *st, visitproc visit, void *arg);
void fastmp_semlock_clear(fastmp_state *st);
void fastmp_sharedctypes_clear(fastmp_state *st);
void fastmp_shm_clear(fastmp_state *st);
void fastmp_connection_clear(fastmp_state *st);
void fastmp_ring_clear(fastmp_state *st);
void fastmp_pickling_clear(fastmp_state *st);

/* The owner lock's test hook functions. */
int fastmp_owner_exec(PyObject *m);

/* ---------------------------------------------------------------------
 * small helpers
 * ------------------------------------------------------------------- */

/* Compatibility for 3.9 (Py_NewRef arrived in 3.10). */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
fastmp_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#define Py_NewRef(o) fastmp_newref((PyObject *)(o))
#endif

/* Raise OSError from errno for a failed system call, naming it: the
 * exception is the errno's OSError subclass (as PyErr_SetFromErrno picks
 * it) with filename "(originated from <syscall>)".  Returns NULL.  For
 * errors the stdlib raises too (a connection's read/write, shm_open's
 * FileExistsError), the stdlib's own form is kept instead. */
PyObject *fastmp_oserror_syscall(const char *syscall);

/* Argument parsing for METH_FASTCALL | METH_KEYWORDS methods whose
 * parameters are all positional-or-keyword (block, timeout, obj ...):
 * the one place that words argument errors, as the stdlib does for the
 * function fastmp stands in for.  `fname` is that function's name in
 * messages: for FASTMP_ARGS_C an Argument Clinic function of the stdlib's
 * C code ("acquire"), for FASTMP_ARGS_PY a method written in Python in the
 * stdlib, by qualified name ("Queue.put"; the class part is dropped on
 * 3.9, as 3.9 words it). */
enum { FASTMP_ARGS_C, FASTMP_ARGS_PY };

typedef struct {
    const char *fname;
    int style;    /* FASTMP_ARGS_C or FASTMP_ARGS_PY */
    int nparams;  /* at most 4, self not counted */
    int required; /* the first `required` must be given */
    const char *names[4];
} fastmp_argspec;

int fastmp_parse_args_slow(const fastmp_argspec *spec, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames,
                           PyObject **out);

/* Fill out[0 .. spec->nparams - 1] with the arguments (NULL: not given).
 * 0, or -1 with TypeError set.  Positional calls cost no function call. */
static inline int
fastmp_parse_args(const fastmp_argspec *spec, PyObject *const *args,
                  Py_ssize_t nargs, PyObject *kwnames, PyObject **out)
{
    if (kwnames == NULL && nargs <= spec->nparams && nargs >= spec->required) {
        for (int i = 0; i < spec->nparams; i++) {
            out[i] = i < nargs ? args[i] : NULL;
        }
        return 0;
    }
    return fastmp_parse_args_slow(spec, args, nargs, kwnames, out);
}

/* Py_TPFLAGS_IMMUTABLETYPE arrived in 3.10. */
#ifdef Py_TPFLAGS_IMMUTABLETYPE
#define FASTMP_TPFLAGS_IMMUTABLE Py_TPFLAGS_IMMUTABLETYPE
#else
#define FASTMP_TPFLAGS_IMMUTABLE 0
#endif

#endif /* FASTMP_H */
