/*
 * platform.h -- the platform interface: every system call fastmp makes,
 * implemented by platform_linux.c (a port to another OS replaces that
 * file).  Included by fastmp.h, after Python.h; nothing here touches
 * the Python API.
 */
#ifndef FASTMP_PLATFORM_H
#define FASTMP_PLATFORM_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

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

#endif /* FASTMP_PLATFORM_H */
