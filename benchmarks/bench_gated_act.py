"""pytest-benchmark: fastenc.ops.gated_act: eager reference, torch.compile, each backend (conftest)."""


def test_gated_act(bench_op):
    bench_op("gated_act")
