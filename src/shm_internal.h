/*
 * shm_internal.h -- what shm.c and shareable_list.c share: the mapping
 * object (_ShmMapping) that a ShareableList core binds to.  Not for other
 * areas.
 */
#ifndef FASTMP_SHM_INTERNAL_H
#define FASTMP_SHM_INTERNAL_H

#include "fastmp.h"

typedef struct {
    PyObject_HEAD
    int fd;     /* -1 after close() */
    char *addr; /* NULL until first mapped */
    Py_ssize_t size;
    int closed; /* SharedMemory.close() was called: refuse new
                 * exports and ShareableList access */
} MappingObject;

/* shm.c: map the segment if not yet done.  0, or -1 with an exception set
 * (BufferError when closed, OSError from mmap). */
int fastmp_shm_mapping_ensure(MappingObject *self);

/* shareable_list.c: the _ShareableListCore type. */
extern PyType_Spec fastmp_listcore_spec;

/* oplog.c: the _OpLog type (manager containers, fastmp/_manager_fast.py). */
extern PyType_Spec fastmp_oplog_spec;

/* oplog.c: the cells of an _OpLog's directory (the 64-bit words after its
 * header) and their number. */
uint64_t *fastmp_oplog_cells(PyObject *op, Py_ssize_t *n);

/* oplog_cells.c: _OpLog's cell methods (see there). */
PyObject *fastmp_oplog_cell(PyObject *op, PyObject *index);
PyObject *fastmp_oplog_cell_set(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs);
PyObject *fastmp_oplog_cell_cas(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs);
PyObject *fastmp_oplog_cell_add(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs);
PyObject *fastmp_oplog_cell_wait(PyObject *op, PyObject *const *args,
                                 Py_ssize_t nargs);
PyObject *fastmp_oplog_cell_wake(PyObject *op, PyObject *const *args,
                                 Py_ssize_t nargs);
PyObject *fastmp_oplog_owner_self(PyObject *op, PyObject *ignored);
PyObject *fastmp_oplog_owner_dead(PyObject *op, PyObject *arg);

#endif /* FASTMP_SHM_INTERNAL_H */
