/*
 * platform_linux.c -- the OS interface: anonymous shared memory, futexes
 * and process identity.  Nothing here touches the Python API; a port to
 * another OS replaces this file.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "fastmp.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif

static int
memfd_create_compat(const char *name, unsigned int flags)
{
#ifdef SYS_memfd_create
    return (int)syscall(SYS_memfd_create, name, flags);
#else
    FASTMP_UNUSED(name);
    FASTMP_UNUSED(flags);
    errno = ENOSYS;
    return -1;
#endif
}

/* Fallback where memfd is missing (old kernels, some sandboxes): a named
 * POSIX segment, unlinked at once so nothing is left in /dev/shm. */
static int
shm_open_anon(void)
{
    char name[64];
    for (int attempt = 0; attempt < 100; attempt++) {
        struct timespec ts;
        fastmp_platform_now(&ts);
        snprintf(name, sizeof(name), "/fastmp-%ld-%lx-%d", (long)getpid(),
                 (unsigned long)ts.tv_nsec, attempt);
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            shm_unlink(name);
            return fd;
        }
        if (errno != EEXIST) {
            return -1;
        }
    }
    errno = EEXIST;
    return -1;
}

int
fastmp_platform_shm_anon(const char *tag, uint64_t size)
{
    int fd = memfd_create_compat(tag, MFD_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOSYS && errno != EPERM && errno != EINVAL) {
            return -1;
        }
        fd = shm_open_anon();
        if (fd < 0) {
            return -1;
        }
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        int saved = errno;
        (void)close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int
fastmp_platform_shm_resize(int fd, uint64_t size)
{
    if (size > (uint64_t)INT64_MAX) {
        errno = EFBIG;
        return -1;
    }
    int r;
    do {
        r = ftruncate(fd, (off_t)size);
    } while (r < 0 && errno == EINTR);
    return r;
}

int
fastmp_platform_shm_size(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

void *
fastmp_platform_shm_map(int fd, uint64_t offset, uint64_t size)
{
    if (size > (uint64_t)SIZE_MAX || offset > (uint64_t)INT64_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                   (off_t)offset);
    return p == MAP_FAILED ? NULL : p;
}

void *
fastmp_platform_shm_remap(void *addr, uint64_t old_size, uint64_t new_size)
{
    if (new_size > (uint64_t)SIZE_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = mremap(addr, (size_t)old_size, (size_t)new_size, MREMAP_MAYMOVE);
    return p == MAP_FAILED ? NULL : p;
}

void
fastmp_platform_shm_unmap(void *addr, uint64_t size)
{
    if (addr != NULL) {
        (void)munmap(addr, (size_t)size);
    }
}

int
fastmp_platform_shm_punch(int fd, uint64_t offset, uint64_t len)
{
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     (off_t)offset, (off_t)len);
}

int
fastmp_platform_file_id(int fd, uint64_t *dev, uint64_t *ino, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return -1;
    }
    *dev = (uint64_t)st.st_dev;
    *ino = (uint64_t)st.st_ino;
    *size = (uint64_t)st.st_size;
    return 0;
}

int
fastmp_platform_file_resident(int fd, uint64_t *bytes)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return -1;
    }
    *bytes = (uint64_t)st.st_blocks * 512;
    return 0;
}

int
fastmp_platform_shm_open_named(const char *name, int create, int mode)
{
    return shm_open(name, O_RDWR | (create ? O_CREAT | O_EXCL : 0),
                    (mode_t)mode);
}

int
fastmp_platform_shm_unlink_named(const char *name)
{
    return shm_unlink(name);
}

int
fastmp_platform_close(int fd)
{
    if (close(fd) < 0 && errno != EINTR) {
        return -1;
    }
    return 0;
}

void
fastmp_platform_sleep_ns(int64_t ns)
{
    struct timespec ts = fastmp_ts_from_ns(ns);
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

void
fastmp_platform_stop_self(void)
{
    (void)raise(SIGSTOP);
}

int
fastmp_platform_ncpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        return 0;
    }
    return CPU_COUNT(&set);
}

uint64_t
fastmp_platform_phys_bytes(void)
{
    static uint64_t phys = 0;
    if (phys == 0) {
        long pages = sysconf(_SC_PHYS_PAGES);
        long page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0) {
            phys = (uint64_t)pages * (uint64_t)page;
        }
    }
    return phys;
}

int
fastmp_platform_futex_wait(uint32_t *word, uint32_t expected,
                           const struct timespec *until)
{
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC timeout.  Not
     * FUTEX_PRIVATE_FLAG: the word lives in MAP_SHARED memory and the
     * waker is another process. */
    long r = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, until, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    if (r == 0) {
        return 0;
    }
    switch (errno) {
    case EAGAIN: /* *word != expected */
    case EINTR:  /* a signal: the caller checks for handlers */
        return 0;
    case ETIMEDOUT:
        return ETIMEDOUT;
    default:
        return errno;
    }
}

int
fastmp_platform_futex_wake(uint32_t *word, int n)
{
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* Read through the inline helpers in platform.h. */
uint32_t fastmp_platform_cached_pid = 0;
uint64_t fastmp_platform_cached_start = 0;

/* Read /proc/<pid>/stat (pid 0: self) into buf, NUL-terminated, and
 * return a pointer just past the command name (field 2, which may hold
 * spaces and parentheses: the last ')'), or NULL when the process does
 * not exist or the file is unreadable. */
static char *
read_proc_stat(uint32_t pid, char *buf, size_t size)
{
    char path[64];
    if (pid == 0) {
        snprintf(path, sizeof(path), "/proc/self/stat");
    }
    else {
        snprintf(path, sizeof(path), "/proc/%u/stat", pid);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return NULL;
    }
    ssize_t n;
    do {
        n = read(fd, buf, size - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) {
        return NULL;
    }
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p != NULL ? p + 1 : NULL;
}

/* Field 22 of /proc/<pid>/stat: start time in clock ticks after boot.
 * Returns 0 when the process does not exist or the file is unreadable. */
static uint64_t
read_start_time(uint32_t pid)
{
    char buf[1024];
    char *p = read_proc_stat(pid, buf, sizeof(buf));
    if (p == NULL) {
        return 0;
    }
    /* Now at " S ppid ...": field 3 is the first token; we want field 22,
     * i.e. the 20th token from here. */
    for (int field = 3; field < 22; field++) {
        while (*p == ' ') {
            p++;
        }
        while (*p != ' ' && *p != '\0') {
            p++;
        }
        if (*p == '\0') {
            return 0;
        }
    }
    while (*p == ' ') {
        p++;
    }
    char *end;
    unsigned long long v = strtoull(p, &end, 10);
    if (end == p) {
        return 0;
    }
    /* A process started in the first tick would read 0; keep 0 meaning
     * "unknown". */
    return (uint64_t)v + 1;
}

/* Is pid a zombie (dead but not yet reaped)?  A zombie holds no locks. */
static int
is_zombie(uint32_t pid)
{
    char buf[1024];
    char *p = read_proc_stat(pid, buf, sizeof(buf));
    return p != NULL && p[0] == ' ' && (p[1] == 'Z' || p[1] == 'X');
}

uint32_t
fastmp_platform_getpid_slow(void)
{
    if (fastmp_platform_cached_pid == 0) {
        fastmp_platform_cached_pid = (uint32_t)getpid();
    }
    return fastmp_platform_cached_pid;
}

uint64_t
fastmp_platform_self_start_slow(void)
{
    if (fastmp_platform_cached_start == 0) {
        fastmp_platform_cached_start = read_start_time(0);
        if (fastmp_platform_cached_start == 0) {
            fastmp_platform_cached_start = 1;
        }
    }
    return fastmp_platform_cached_start;
}

void
fastmp_platform_after_fork_child(void)
{
    fastmp_platform_cached_pid = (uint32_t)getpid();
    fastmp_platform_cached_start = 0;
}

/* Liveness of pid, whose start token is `start` (0: unknown) compared in
 * full, or in its low 32 bits only (as owner words store it). */
static int
pid_alive_as(uint32_t pid, uint64_t start, int low32)
{
    if (pid == 0) {
        return 0;
    }
    if (kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
        return 0;
    }
    if (is_zombie(pid)) {
        return 0;
    }
    if (start > 1) {
        uint64_t now = read_start_time(pid);
        /* 0: vanished between the checks, or /proc unreadable -- trust
         * kill() above in the latter case. */
        if (now != 0) {
            int same = low32 ? fastmp_owner_token(now) == (uint32_t)start
                             : now == start;
            if (!same) {
                return 0; /* the pid was reused */
            }
        }
        if (now == 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
            return 0;
        }
    }
    return 1;
}

int
fastmp_platform_pid_alive(uint32_t pid, uint64_t start)
{
    return pid_alive_as(pid, start, 0);
}

int
fastmp_platform_pid_alive32(uint32_t pid, uint32_t token)
{
    return pid_alive_as(pid, token, 1);
}
