"""pytest-benchmark: whole models, fastenc per backend against transformers eager / sdpa and torch.compile."""


def test_inference(bench_model, model_shape):
    bench_model(model_shape, train=False)


def test_training_step(bench_model, train_shape):
    bench_model(train_shape, train=True)
