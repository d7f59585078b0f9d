/*
 * module.c -- fastmp._fastmp: module definition, multi-phase init and the
 * module state's traverse/clear/free.  Each area registers its types from
 * its own exec hook and contributes module-level functions through a
 * method table.
 */
#include "fastmp.h"

static struct PyModuleDef fastmp_module;

/* The state of the module imported in this interpreter.  fastmp supports
 * one interpreter per process (shared memory is per process anyway), so a
 * single pointer suffices; it is only read by code that has no module at
 * hand. */
static fastmp_state *current_state = NULL;

fastmp_state *
fastmp_get_state(void)
{
    return current_state;
}

static int
fastmp_exec(PyObject *m)
{
    fastmp_state *st = (fastmp_state *)PyModule_GetState(m);
    if (st == NULL) {
        return -1;
    }
    current_state = st;
    if (fastmp_arena_exec(m, st) < 0
        || fastmp_semlock_exec(m, st) < 0
        || fastmp_sharedctypes_exec(m, st) < 0
        || fastmp_shm_exec(m, st) < 0
        || fastmp_connection_exec(m, st) < 0
        || fastmp_ring_exec(m, st) < 0
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
    fastmp_clear((PyObject *)m);
}

static PyModuleDef_Slot fastmp_slots[] = {
    {Py_mod_exec, fastmp_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

/* Concatenate the areas' method tables into one (built once, at import). */
static PyMethodDef *
collect_methods(void)
{
    PyMethodDef *tables[] = {
        fastmp_arena_functions, fastmp_semlock_functions,
        fastmp_sharedctypes_functions, fastmp_shm_functions,
        fastmp_connection_functions, fastmp_ring_functions,
        fastmp_owner_functions, fastmp_pickling_functions,
    };
    size_t ntables = sizeof(tables) / sizeof(tables[0]);
    size_t n = 0;
    for (size_t i = 0; i < ntables; i++) {
        for (PyMethodDef *d = tables[i]; d->ml_name != NULL; d++) {
            n++;
        }
    }
    PyMethodDef *all = PyMem_RawCalloc(n + 1, sizeof(PyMethodDef));
    if (all == NULL) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < ntables; i++) {
        for (PyMethodDef *d = tables[i]; d->ml_name != NULL; d++) {
            all[k++] = *d;
        }
    }
    return all;
}

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
    if (fastmp_module.m_methods == NULL) {
        PyMethodDef *methods = collect_methods();
        if (methods == NULL) {
            return PyErr_NoMemory();
        }
        fastmp_module.m_methods = methods;
    }
    return PyModuleDef_Init(&fastmp_module);
}
