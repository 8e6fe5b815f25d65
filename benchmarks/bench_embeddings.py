"""pytest-benchmark: fastenc.ops.embeddings: eager reference, torch.compile, each backend (conftest)."""


def test_embeddings(bench_op):
    bench_op("embeddings")
