/*
 * pyutil.c -- small Python-side helpers every area uses: OSError naming
 * the failing system call.
 */
#include "fastmp.h"

#include <errno.h>
#include <stdio.h>

PyObject *
fastmp_oserror_syscall(const char *syscall)
{
    /* As psutil's psutil_oserror_wsyscall: PyErr_SetFromErrnoWithFilename
     * picks the OSError subclass from errno; the "filename" says which
     * call failed. */
    char msg[128];
    int err = errno;
    (void)snprintf(msg, sizeof(msg), "(originated from %s)", syscall);
    errno = err;
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, msg);
}
