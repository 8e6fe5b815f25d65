"""pytest-benchmark: fastenc.ops.add_layer_norm: eager reference, torch.compile, each backend (conftest)."""


def test_add_layer_norm(bench_op):
    bench_op("add_layer_norm")
