"""Runs the inline PTX of fastenc's Triton kernels on the CPU, vectorised over numpy arrays, so that tests can check
what the asm strings compute where no GPU runs them (the Triton interpreter runs no PTX).

Only the instructions those strings use, with the semantics of the PTX ISA (mul.wide, mov.b64 unpacking, prmt in its
default mode, and): any other instruction raises, so a changed asm string fails its test until this module learns the
new instruction. Trade-off: an emulator checks the strings against the ISA as written here, not against ptxas; the
GPU tests check the compiled code.
"""

from __future__ import annotations

import re

import numpy as np

_M32 = np.uint64(0xFFFFFFFF)


def _prmt(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """prmt.b32 d, a, b, c (default mode): byte k of d is byte (c >> 4k) & 7 of the 8 bytes {b, a}; if bit 3 of that
    selector nibble is set, the top bit of the selected byte replicated over all 8 bits instead."""
    src = (b << np.uint64(32)) | a
    out = np.zeros_like(a)
    for k in range(4):
        nib = (c >> np.uint64(4 * k)) & np.uint64(0xF)
        byte = (src >> (np.uint64(8) * (nib & np.uint64(7)))) & np.uint64(0xFF)
        sign = np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0))
        out |= np.where(nib & np.uint64(8), sign, byte) << np.uint64(8 * k)
    return out


def run(asm: str, constraints: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs ("=r" operands, in order) of `asm` with the "r" operands after them bound to `inputs` (uint32
    values, any broadcastable shapes). Registers declared with .reg hold 32 or 64 bits."""
    kinds = [c.strip() for c in constraints.split(",")]
    n_out = sum(k == "=r" for k in kinds)
    if kinds != ["=r"] * n_out + ["r"] * (len(kinds) - n_out) or len(inputs) != len(kinds) - n_out:
        raise ValueError(f"constraints {constraints!r} do not fit {len(inputs)} 32-bit inputs")
    regs: dict[str, np.ndarray] = {f"${n_out + i}": np.asarray(x, dtype=np.uint64) & _M32
                                   for i, x in enumerate(inputs)}

    def val(tok: str) -> np.ndarray:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", tok):
            return np.uint64(int(tok, 0))
        raise ValueError(f"unknown operand {tok!r}")

    body = asm.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    for stmt in filter(None, (s.strip() for s in body.split(";"))):
        op, _, rest = stmt.partition(" ")
        args = [a.strip() for a in re.split(r",(?![^{]*})", rest)]
        if op.startswith(".reg"):
            continue  # declarations: the names get values when written
        if op == "mul.wide.u32":
            regs[args[0]] = val(args[1]) * val(args[2])
        elif op == "mov.b64" and args[0].startswith("{"):
            lo, hi = (t.strip() for t in args[0].strip("{}").split(","))
            x = val(args[1])
            regs[lo], regs[hi] = x & _M32, x >> np.uint64(32)
        elif op == "prmt.b32":
            regs[args[0]] = _prmt(val(args[1]), val(args[2]), val(args[3]) & np.uint64(0xFFFF))
        elif op == "and.b32":
            regs[args[0]] = val(args[1]) & val(args[2])
        else:
            raise NotImplementedError(f"PTX instruction {op!r} is not emulated")
    return [regs[f"${i}"] for i in range(n_out)]
