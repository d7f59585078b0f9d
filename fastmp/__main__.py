"""python -m fastmp [--start-method METHOD] (script.py | -m module) [args]

Runs an unchanged multiprocessing program on fastmp: in this process and in
every process it starts (fork, spawn or forkserver), ``import
multiprocessing`` and its submodules resolve to fastmp's.  What fastmp does
not implement falls through to the stdlib's, unless FASTMP_NO_FALLBACK=1.
"""
import os
import sys

USAGE = ("usage: python -m fastmp [--start-method {fork,spawn,forkserver}] "
         "(script.py | -m module) [args ...]")

_HERE = os.path.abspath(__file__)


def _parse(argv):
    method = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(__doc__.strip())
            print()
            print(USAGE)
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
        if a == "-m":
            if i + 1 >= len(argv):
                sys.exit(USAGE)
            return method, "module", argv[i + 1], argv[i + 2:]
        if a == "--":
            i += 1
            break
        if a.startswith("-"):
            sys.exit("%s\nfastmp: unknown option %r" % (USAGE, a))
        break
    if i >= len(argv):
        sys.exit(USAGE)
    return method, "script", argv[i], argv[i + 1:]


def _excepthook(orig):
    import runpy
    skip = {_HERE, os.path.abspath(runpy.__file__)}

    def hook(typ, value, tb):
        # Show the traceback as ``python script.py`` would: from the
        # script's own frames on.
        while tb is not None and (
                tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")
                or os.path.abspath(tb.tb_frame.f_code.co_filename) in skip):
            tb = tb.tb_next
        if isinstance(value, BaseException):
            value = value.with_traceback(tb)
        orig(typ, value, tb)
    return hook


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass


def _run_script(path, args):
    import builtins
    import types

    sys.argv = [path] + args
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        sys.stderr.write("%s: can't open file %r: [Errno %d] %s\n"
                         % (sys.executable, path, e.errno, e.strerror))
        sys.exit(2)
    if not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
        sys.path[0] = os.path.dirname(os.path.abspath(path))
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = builtins
    main.__spec__ = None
    main.__cached__ = None
    import importlib.machinery
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    sys.modules["__main__"] = main
    sys.modules["__mp_main__"] = main
    code = compile(source, path, "exec")
    try:
        exec(code, main.__dict__)
    finally:
        # python script.py flushes stdio when the main module ends, before
        # atexit handlers (and multiprocessing's finalizers) run.
        _flush()


def _run_module(name, args):
    import runpy
    sys.argv = [name] + args
    try:
        runpy._run_module_as_main(name, alter_argv=True)
    finally:
        _flush()


def main(argv=None):
    method, kind, target, args = _parse(
        sys.argv[1:] if argv is None else argv)
    from fastmp import _alias, context

    if method is not None:
        if method not in context._concrete_contexts:
            sys.exit("fastmp: unknown start method %r" % method)
        # The default, not a fixed choice: the script may still call
        # set_start_method() once, as it could under plain python.
        context._default_context._default_context = (
            context._concrete_contexts[method])
    _alias.install()
    sys.excepthook = _excepthook(sys.excepthook)
    if kind == "script":
        _run_script(target, args)
    else:
        _run_module(target, args)


if __name__ == "__main__":
    main()
