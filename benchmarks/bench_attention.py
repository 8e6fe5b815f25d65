"""pytest-benchmark: fastenc.ops.attention: eager reference, torch.compile, each backend (conftest)."""


def test_attention(bench_op):
    bench_op("attention")
