"""pytest-benchmark: fastenc.ops.gelu_layer_norm: eager reference, torch.compile, each backend (conftest)."""


def test_gelu_layer_norm(bench_op):
    bench_op("gelu_layer_norm")
