"""Entry point of every interpreter started under ``python -m fastmp``.

The stdlib starts spawn children, the forkserver and the resource tracker
as ``python [flags] -c CODE [args]``; with the aliasing on, the flags end in
``-m fastmp._boot``, so the command line becomes
``python [flags] -m fastmp._boot -c CODE [args]``.  This module installs
the aliasing and then runs CODE exactly as ``-c`` would have.
"""
import sys


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
    if (sys.path and not sys.flags.isolated
            and not getattr(sys.flags, "safe_path", False)):
        sys.path[0] = ""
    exec(compile(code, "<string>", "exec"), main.__dict__)


if __name__ == "__main__":
    _main()
