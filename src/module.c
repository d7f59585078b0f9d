/*
 * module.c -- fastmp._fastmp: module definition, multi-phase init and the
 * module state's traverse/clear/free.  Each area registers its types and
 * its module-level functions (PyModule_AddFunctions) from its own exec
 * hook.
 */
#include "fastmp.h"

/* See fastmp.h, "module state". */
fastmp_state *fastmp_current_state = NULL;

static int
fastmp_exec(PyObject *m)
{
    fastmp_state *st = (fastmp_state *)PyModule_GetState(m);
    if (st == NULL) {
        return -1;
    }
    fastmp_current_state = st;
    if (fastmp_owner_exec(m) < 0 || fastmp_arena_exec(m, st) < 0
        || fastmp_semlock_exec(m, st) < 0
        || fastmp_sharedctypes_exec(m, st) < 0 || fastmp_shm_exec(m, st) < 0
        || fastmp_connection_exec(m, st) < 0 || fastmp_ring_exec(m, st) < 0
        || fastmp_pickling_exec(m, st) < 0) {
        return -1;
    }
    return 0;
}

static int
fastmp_traverse(PyObject *m, visitproc visit, void *arg)
{
    fastmp_state *st = (fastmp_state *)PyModule_GetState(m);
    if (st == NULL) {
        return 0;
    }
    Py_VISIT(st->SegmentType);
    Py_VISIT(st->alloc_segment);
    int r;
    if ((r = fastmp_semlock_traverse(st, visit, arg)) != 0
        || (r = fastmp_sharedctypes_traverse(st, visit, arg)) != 0
        || (r = fastmp_shm_traverse(st, visit, arg)) != 0
        || (r = fastmp_connection_traverse(st, visit, arg)) != 0
        || (r = fastmp_ring_traverse(st, visit, arg)) != 0
        || (r = fastmp_pickling_traverse(st, visit, arg)) != 0) {
        return r;
    }
    return 0;
}

static int
fastmp_clear(PyObject *m)
{
    fastmp_state *st = (fastmp_state *)PyModule_GetState(m);
    if (st == NULL) {
        return 0;
    }
    Py_CLEAR(st->SegmentType);
    Py_CLEAR(st->alloc_segment);
    fastmp_semlock_clear(st);
    fastmp_sharedctypes_clear(st);
    fastmp_shm_clear(st);
    fastmp_connection_clear(st);
    fastmp_ring_clear(st);
    fastmp_pickling_clear(st);
    return 0;
}

static void
fastmp_free(void *m)
{
    fastmp_state *st = (fastmp_state *)PyModule_GetState((PyObject *)m);
    fastmp_clear((PyObject *)m);
    /* Nothing may reach the freed state through the global. */
    if (st != NULL && fastmp_current_state == st) {
        fastmp_current_state = NULL;
    }
}

static PyModuleDef_Slot fastmp_slots[] = {
    {Py_mod_exec, fastmp_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* 3.13+: fastmp relies on the GIL (docs/architecture.md, "Free
     * threading"); a free-threaded interpreter re-enables it on import. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef fastmp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fastmp._fastmp",
    .m_doc = "fastmp's C core: shared arena, SemLock, shared memory, "
             "connections, queue rings and their pickling.",
    .m_size = sizeof(fastmp_state),
    .m_slots = fastmp_slots,
    .m_traverse = fastmp_traverse,
    .m_clear = fastmp_clear,
    .m_free = fastmp_free,
};

PyMODINIT_FUNC
PyInit__fastmp(void)
{
    return PyModuleDef_Init(&fastmp_module);
}
