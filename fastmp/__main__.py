"""Run an unchanged multiprocessing program on fastmp.

In this process and in every process it starts (fork, spawn or
forkserver), ``import multiprocessing`` and ``import multiprocessing.X``
resolve to fastmp's.  What fastmp does not implement falls through to the
stdlib's, unless FASTMP_NO_FALLBACK=1.  The program runs as the interpreter
would run it: same sys.argv, sys.path[0], __main__, __file__ and
tracebacks.
"""

# The interpreters the stdlib starts (spawn children, the forkserver, the
# resource tracker) run here too, as ``python [flags] -m fastmp -c CODE``
# (see fastmp/_alias.py).

import os
import sys

USAGE = (
    "usage: python -m fastmp [--start-method {fork,spawn,forkserver}]\n"
    "                        [--cluster ADDRESS] [--progress] "
    "[--insight[=FILE]]\n"
    "                        (script.py | -c CODE | -m module) "
    "[args ...]"
)

HELP = """%s

%s
options:
  --start-method M  the default start method (fork, spawn or forkserver);
                    the program may still call set_start_method() once
  --cluster ADDRESS run every Pool on a Dask cluster: tcp://host:port (a
                    running scheduler), local or local:N (a LocalCluster
                    of N worker processes for this run); needs
                    pip install 'fastmp[cluster]' (env FASTMP_CLUSTER)
  --progress        a progress bar on stderr for every map/imap job, when
                    stderr is a terminal (env FASTMP_PROGRESS=1, or
                    FASTMP_PROGRESS=force to draw it anyway)
  --insight[=FILE]  when each Pool ends: per-worker tasks, busy, idle and
                    start-up time and the slowest tasks on stderr, and as
                    JSON to FILE (env FASTMP_INSIGHT=1 or FILE)
  -c CODE           run CODE, as python -c does
  -m module         run a module as a script, as python -m does
  --version         print fastmp's version and exit
  -h, --help        print this help and exit
""" % (USAGE, __doc__)


def _version():
    from fastmp import __version__

    return "fastmp %s (Python %s)" % (__version__, sys.version.split()[0])


def _parse(argv):
    """(start method, kind, target, args); kind is script, code or module."""
    method = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            sys.stdout.write(HELP)
            sys.exit(0)
        if a in ("-V", "--version"):
            print(_version())
            sys.exit(0)
        if a == "--start-method":
            if i + 1 >= len(argv):
                sys.exit(USAGE)
            method = argv[i + 1]
            i += 2
            continue
        if a.startswith("--start-method="):
            method = a.split("=", 1)[1]
            i += 1
            continue
        if a == "--cluster" or a.startswith("--cluster="):
            if "=" in a:
                address = a.split("=", 1)[1]
                i += 1
            elif i + 1 < len(argv):
                address = argv[i + 1]
                i += 2
            else:
                sys.exit(USAGE)
            _cluster_mode(address)
            continue
        if a == "--progress":
            os.environ["FASTMP_PROGRESS"] = "1"
            i += 1
            continue
        if a == "--insight" or a.startswith("--insight="):
            path = a.split("=", 1)[1] if "=" in a else "1"
            if path != "1":
                path = os.path.abspath(path)
            os.environ["FASTMP_INSIGHT"] = path
            i += 1
            continue
        if a in ("-m", "-c"):
            if i + 1 >= len(argv):
                sys.exit(
                    "%s\nfastmp: argument expected for the %s option"
                    % (USAGE, a)
                )
            kind = "module" if a == "-m" else "code"
            return method, kind, argv[i + 1], argv[i + 2 :]
        if a == "--":
            i += 1
            break
        if a.startswith("-"):
            sys.exit("%s\nfastmp: unknown option %r" % (USAGE, a))
        break
    if i >= len(argv):
        sys.exit(USAGE)
    return method, "script", argv[i], argv[i + 1 :]


def _cluster_mode(address):
    """Check the address and that Dask is installed; set FASTMP_CLUSTER
    (read by every Pool() of the program)."""
    from fastmp import _cluster

    try:
        _cluster.parse_address(address)
    except ValueError as e:
        sys.exit("fastmp: %s" % e)
    try:
        _cluster.check_installed()
    except ImportError as e:
        sys.exit(str(e))
    os.environ["FASTMP_CLUSTER"] = address


def _excepthook(orig):
    """``orig`` showing tracebacks from the program's own frames on, as the
    interpreter would without ``-m fastmp``: the frames of runpy and of
    this module go."""
    import runpy

    skip = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}

    def hook(typ, value, tb):
        while tb is not None and (
            tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")
            or os.path.abspath(tb.tb_frame.f_code.co_filename) in skip
        ):
            tb = tb.tb_next
        if isinstance(value, BaseException):
            value = value.with_traceback(tb)
        orig(typ, value, tb)

    return hook


def _compile_c(source):
    """Compile ``-c`` source as the interpreter does: file name
    "<string>"; from 3.13 on, with the source registered in linecache so
    that tracebacks show its lines, as they do under ``python -c``."""
    if sys.version_info >= (3, 13):
        import linecache

        linecache.cache["<string>"] = (
            len(source),
            None,
            [line + "\n" for line in source.splitlines()],
            "<string>",
        )
    return compile(source, "<string>", "exec")


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass


def _safe_path():
    return sys.flags.isolated or getattr(sys.flags, "safe_path", False)


def _new_main(file=None):
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    main.__spec__ = None
    if file is not None:
        import importlib.machinery

        main.__file__ = file
        main.__cached__ = None
        main.__loader__ = importlib.machinery.SourceFileLoader(
            "__main__", file
        )
    sys.modules["__main__"] = main
    sys.modules["__mp_main__"] = main
    return main


def _exec(code, main):
    try:
        exec(code, main.__dict__)
    finally:
        # python script.py flushes stdio when the main module ends, before
        # atexit handlers (and multiprocessing's finalizers) run.
        _flush()


def _run_script(path, args):
    # As the interpreter (3.9 and newer): sys.argv[0] as given, __file__
    # and the code's file name absolute (the working directory joined to
    # the path as given, not normalized), sys.path[0] the folder of the
    # script with symbolic links resolved.
    try:
        full = os.path.join(os.getcwd(), path)
    except OSError:
        full = path
    sys.argv = [path] + args
    try:
        with open(full, "rb") as f:
            source = f.read()
    except OSError as e:
        sys.stderr.write(
            "%s: can't open file %r: [Errno %d] %s\n"
            % (sys.executable, full, e.errno, e.strerror)
        )
        sys.exit(2)
    if not _safe_path():
        sys.path[0] = os.path.dirname(os.path.realpath(full))
    main = _new_main(full)
    _exec(compile(source, full, "exec"), main)


def _run_code(source, args):
    # As python -c: sys.argv[0] is "-c", sys.path[0] the empty string
    # (the working directory), no __file__.
    sys.argv = ["-c"] + args
    if not _safe_path():
        sys.path[0] = ""
    main = _new_main()
    _exec(_compile_c(source), main)


def _run_module(name, args):
    import runpy

    # runpy replaces sys.argv[0] with the module's file, as python -m does;
    # sys.path[0] is the working directory already (we run under -m too).
    sys.argv = [name] + args
    try:
        runpy._run_module_as_main(name, alter_argv=True)
    finally:
        _flush()


def main(argv=None):
    method, kind, target, args = _parse(sys.argv[1:] if argv is None else argv)
    from fastmp import _alias, context

    if method is not None:
        if method not in context._concrete_contexts:
            sys.exit("fastmp: unknown start method %r" % method)
        # The default, not a fixed choice: the script may still call
        # set_start_method() once, as it could under plain python.
        context._default_context._default_context = context._concrete_contexts[
            method
        ]
    _alias.install()
    # An exception that reaches the top (in a child: an unpicklable
    # target, say) shows the traceback plain python shows.
    sys.excepthook = _excepthook(sys.excepthook)
    if kind == "script":
        _run_script(target, args)
    elif kind == "code":
        _run_code(target, args)
    else:
        _run_module(target, args)


if __name__ == "__main__":
    main()
