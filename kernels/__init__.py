"""Triton kernels and their launchers, installed as fastenc.kernels: one module per op, named as in fastenc.ops.

Import a module only through fastenc.backends.launchers: importing triton decides whether the interpreter is used.
Each module declares what it supports as data (SUPPORT); nothing here imports the front (fastenc.*).

This folder sits at the top of a checkout (the design card's layout), so Python started from the repo root
(`python -m pytest`, `python -c ...`) would find it as a top-level package `kernels` before an installed package of
that name (transformers >= 5.25 depends on and imports one). Imported under any name but fastenc.kernels, this file
hands the name on to the next `kernels` on sys.path outside this checkout; with none, the name is an empty package
with no file and no version, which is how an empty namespace package looks (transformers' availability check then
reads it as not installed).

Trade-off: a few lines of import plumbing here, in exchange for keeping the fixed top-level layout without ever
shadowing that package.
"""

if __name__ != "fastenc.kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys
    import types

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _others)
    if _spec is None or _spec.loader is None:
        _module = types.ModuleType(__name__, "not installed: this checkout's kernels/ folder is fastenc.kernels")
        _module.__spec__ = importlib.machinery.ModuleSpec(__name__, None, is_package=True)
        _module.__path__ = _module.__spec__.submodule_search_locations = []
        sys.modules[__name__] = _module  # the import system returns what sys.modules holds once this file has run
    else:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[__name__] = _module
        _spec.loader.exec_module(_module)
