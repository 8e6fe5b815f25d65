"""Triton kernels and their launchers, installed as fastenc.kernels: one module per op, named as in fastenc.ops.

Import a module only through fastenc.backends.launchers: importing triton decides whether the interpreter is used.
Each module declares what it supports as data (SUPPORT); nothing here imports the front (fastenc.*).
"""
