"""Triton kernels and their launchers, installed as fastenc.kernels: one module per op, named as in fastenc.ops.

Import a module only through fastenc.backends.launchers: importing triton decides whether the interpreter is used.
Each module declares what it supports as data (SUPPORT); nothing here imports the front (fastenc.*).

This folder sits at the top of a checkout (the design card's layout), so Python started from the repo root
(`python -m pytest`, `python -c ...`) would find it as a top-level package `kernels` before an installed package of
that name (transformers >= 5.25 depends on and imports one). Imported under any name but fastenc.kernels, this file
hands the name on to the next `kernels` on sys.path outside this checkout, or fails as if this folder were absent.

Trade-off: a few lines of import plumbing here, in exchange for keeping the fixed top-level layout without ever
shadowing that package.
"""

if __name__ != "fastenc.kernels":
    import importlib.util
    import os
    import sys
    from importlib.machinery import PathFinder

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = PathFinder.find_spec(__name__, _path)
    if _spec is None or _spec.loader is None:
        del sys.modules[__name__]
        raise ModuleNotFoundError(f"No module named {__name__!r} (the checkout's kernels/ folder is fastenc.kernels, "
                                  f"not a top-level package)", name=__name__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module  # the import system returns what sys.modules holds once this file has run
    _spec.loader.exec_module(_module)
