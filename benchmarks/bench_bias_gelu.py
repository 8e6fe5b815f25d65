"""pytest-benchmark: fastenc.ops.bias_gelu: eager reference, torch.compile, each backend (conftest)."""


def test_bias_gelu(bench_op):
    bench_op("bias_gelu")
