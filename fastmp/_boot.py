"""Entry point of every interpreter started under ``python -m fastmp``.

The stdlib starts spawn children, the forkserver and the resource tracker
as ``python [flags] -c CODE [args]``; with the aliasing on, the flags end in
``-m fastmp._boot``, so the command line becomes
``python [flags] -m fastmp._boot -c CODE [args]``.  This module installs
the aliasing and then runs CODE exactly as ``-c`` would have.
"""

import os
import sys

_HERE = os.path.abspath(__file__)


def excepthook(orig, skip=()):
    """``orig`` showing tracebacks from the program's own frames on, as the
    interpreter would without ``-m fastmp`` / ``-m fastmp._boot``: the
    frames of runpy, of this module and of the files in ``skip`` go."""
    import runpy

    skip = {_HERE, os.path.abspath(runpy.__file__)} | {
        os.path.abspath(f) for f in skip
    }

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


def compile_c(source):
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


def _main():
    argv = sys.argv[1:]
    if len(argv) < 2 or argv[0] != "-c":
        sys.exit("usage: python -m fastmp._boot -c CODE [args]")
    code = argv[1]
    sys.argv = ["-c"] + argv[2:]
    import builtins
    import types

    from fastmp import _alias

    _alias.install()
    # A fresh __main__ as -c gives: no __file__, no __spec__.
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    main.__spec__ = None
    sys.modules["__main__"] = main
    # -m put the working directory first on sys.path where -c puts "".
    if (
        sys.path
        and not sys.flags.isolated
        and not getattr(sys.flags, "safe_path", False)
    ):
        sys.path[0] = ""
    # An exception that reaches the top (an unpicklable target, say) shows
    # the traceback ``python -c`` shows, without this module's frames.
    sys.excepthook = excepthook(sys.excepthook)
    exec(compile_c(code), main.__dict__)


if __name__ == "__main__":
    _main()
