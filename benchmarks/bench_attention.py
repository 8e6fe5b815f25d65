"""pytest-benchmark: fastenc.ops.attention, padded and packed: eager, torch.compile, each backend (conftest)."""


def test_attention(bench_op):
    bench_op("attention")


def test_attention_packed(bench_op):
    bench_op("attention_packed")
