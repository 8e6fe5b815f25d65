"""pytest-benchmark: fastenc.ops.rotary on q, k views of a fused QKV output: eager reference, torch.compile, each
backend (conftest)."""


def test_rotary(bench_op):
    bench_op("rotary")
