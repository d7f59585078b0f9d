/*
 * pyutil.c -- small Python-side helpers every area uses: OSError naming
 * the failing system call; argument parsing with the stdlib's wording.
 */
#include "fastmp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

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

/* The name as the running Python words it in messages about a Python
 * function: its qualified name from 3.10 on, the bare name before. */
static const char *
py_fname(const char *fname)
{
#if PY_VERSION_HEX < 0x030A0000
    const char *dot = strrchr(fname, '.');
    return dot != NULL ? dot + 1 : fname;
#else
    return fname;
#endif
}

static int
find_param(const fastmp_argspec *spec, PyObject *key)
{
    for (int i = 0; i < spec->nparams; i++) {
        if (PyUnicode_CompareWithASCIIString(key, spec->names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* The errors of an Argument Clinic function (Python/getargs.c,
 * _PyArg_UnpackKeywords), in the order it checks.  3.9's stdlib parsed
 * these with an unnamed PyArg_ParseTupleAndKeywords format: its messages
 * say "function" / "this function". */
static int
parse_c(const fastmp_argspec *spec, PyObject *const *args, Py_ssize_t nargs,
        PyObject *kwnames, PyObject **out)
{
    char f[64], this_f[64];
#if PY_VERSION_HEX < 0x030A0000
    (void)snprintf(f, sizeof(f), "function");
    (void)snprintf(this_f, sizeof(this_f), "this function");
#else
    (void)snprintf(f, sizeof(f), "%s()", spec->fname);
    (void)snprintf(this_f, sizeof(this_f), "%s()", spec->fname);
#endif
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int max = spec->nparams;
    if (nargs + nkw > max) {
        PyErr_Format(
            PyExc_TypeError, "%s takes %s %d %sargument%s (%zd given)", f,
            spec->required < max ? "at most" : "exactly", max,
            nargs == 0 ? "keyword " : "", max == 1 ? "" : "s", nargs + nkw);
        return -1;
    }
    Py_ssize_t used = 0;
    for (int i = 0; i < max; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    for (int i = (int)nargs; i < max; i++) {
        for (Py_ssize_t k = 0; k < nkw; k++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, k);
            if (PyUnicode_CompareWithASCIIString(key, spec->names[i]) == 0) {
                out[i] = args[nargs + k];
                used++;
                break;
            }
        }
        if (out[i] == NULL && i < spec->required) {
            PyErr_Format(PyExc_TypeError,
                         "%s missing required argument '%s' (pos %d)", f,
                         spec->names[i], i + 1);
            return -1;
        }
    }
    if (used == nkw) {
        return 0;
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = find_param(spec, key);
        if (i >= 0 && i < nargs) {
            PyErr_Format(PyExc_TypeError,
                         "argument for %s given by name ('%s') and "
                         "position (%d)",
                         f, spec->names[i], i + 1);
            return -1;
        }
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        if (find_param(spec, key) < 0) {
#if PY_VERSION_HEX >= 0x030D0000
            PyErr_Format(PyExc_TypeError,
                         "%s got an unexpected keyword argument '%U'", f, key);
#else
            PyErr_Format(PyExc_TypeError,
                         "'%U' is an invalid keyword argument for %s", key,
                         this_f);
#endif
            return -1;
        }
    }
    return 0; /* not reached: every keyword was a parameter */
}

/* The errors of a function written in Python (the interpreter's
 * argument binding), in the order it checks; self is counted. */
static int
parse_py(const fastmp_argspec *spec, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames, PyObject **out)
{
    const char *f = py_fname(spec->fname);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (int i = 0; i < spec->nparams; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = find_param(spec, key);
        if (i < 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'", f,
                         key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got multiple values for argument '%s'", f,
                         spec->names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    if (nargs > spec->nparams) {
        int lo = spec->required + 1, hi = spec->nparams + 1;
        if (lo == hi) {
            PyErr_Format(PyExc_TypeError,
                         "%s() takes %d positional argument%s but %zd %s "
                         "given",
                         f, hi, hi == 1 ? "" : "s", nargs + 1,
                         nargs + 1 == 1 ? "was" : "were");
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "%s() takes from %d to %d positional arguments "
                         "but %zd were given",
                         f, lo, hi, nargs + 1);
        }
        return -1;
    }
    int missing = 0;
    for (int i = 0; i < spec->required; i++) {
        missing += out[i] == NULL;
    }
    if (missing == 1) {
        for (int i = 0; i < spec->required; i++) {
            if (out[i] == NULL) {
                PyErr_Format(PyExc_TypeError,
                             "%s() missing 1 required positional argument: "
                             "'%s'",
                             f, spec->names[i]);
                return -1;
            }
        }
    }
    if (missing > 1) {
        /* Not needed by any fastmp method yet (one required at most). */
        PyErr_Format(PyExc_TypeError,
                     "%s() missing %d required positional arguments", f,
                     missing);
        return -1;
    }
    return 0;
}

int
fastmp_parse_args_slow(const fastmp_argspec *spec, PyObject *const *args,
                       Py_ssize_t nargs, PyObject *kwnames, PyObject **out)
{
    if (spec->style == FASTMP_ARGS_C) {
        return parse_c(spec, args, nargs, kwnames, out);
    }
    return parse_py(spec, args, nargs, kwnames, out);
}
