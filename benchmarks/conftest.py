"""pytest-benchmark front of the harness: `pytest benchmarks/ --benchmark-only`.

Collects the bench_*.py files, and gives them the harness's settings (the standard suite on a GPU, the CPU demo's
tiny sizes otherwise), the roofs measured once per session, and `bench`, which times one case two ways:
pytest-benchmark's own timer around each call plus a device sync (what its tables show), and the harness's CUDA-event
median with FLOP/s, GB/s and peak memory (in each benchmark's extra_info, and what `fastenc bench` reports).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from fastenc.bench import runner


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _settings() -> runner.Settings:
    if os.environ.get("FASTENC_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu") == "cuda":
        return runner.Settings(device=torch.device("cuda"), rep_ms=50.0, warmup_ms=10.0)
    return runner.Settings.cpu_demo_settings(torch.device("cpu"))


SETTINGS = _settings()


@pytest.fixture(scope="session")
def settings() -> runner.Settings:
    if SETTINGS.cpu_demo:  # as `fastenc bench` does: one thread for the tiny CPU cases
        torch.set_num_threads(1)
    return SETTINGS


@pytest.fixture(scope="session")
def roofs(settings) -> dict[str, float]:
    return runner.measure_roofs(settings.device)


@pytest.fixture(scope="session")
def model_sets(settings) -> Callable[[str, str, bool], runner.ModelSet]:
    """The built models of the last (model, dtype, train) asked for; tests are ordered so that each is built once."""
    cache: dict[tuple, runner.ModelSet] = {}

    def get(name: str, dtype: str, train: bool) -> runner.ModelSet:
        key = (name, dtype, train)
        if key not in cache:
            cache.clear()
            if settings.device.type == "cuda":
                torch.cuda.empty_cache()
            cache[key] = runner.build_models(name, dtype, train, settings)
        return cache[key]

    yield get
    cache.clear()


def pytest_generate_tests(metafunc):
    """Every bench test runs over the harness's cases: whichever of these fixtures it uses (directly or not)."""
    s = SETTINGS
    params = {"model": s.models, "dtype": s.dtypes, "op_shape": s.op_shapes, "op_mode": s.op_modes,
              "model_shape": s.shapes, "train_shape": s.train_shapes, "op_variant": runner.op_variants(s),
              "model_variant": runner.model_variants(s)}
    for name, values in params.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values)


@pytest.fixture
def bench(benchmark, settings, roofs) -> Callable[..., None]:
    """bench(record, prepare) with prepare() -> (calls, flops, nbytes): skips with the reason when the variant
    cannot run here, otherwise times it both ways."""

    def run(record: dict, prepare: Callable[[], tuple[list, int, int]]) -> None:
        try:
            calls, flops, nbytes = prepare()
            figures = runner.measure_variant(dict(record), calls, settings, roofs, flops=flops, nbytes=nbytes)
        except runner.Skip as e:
            pytest.skip(str(e))
        benchmark.extra_info.update({k: v for k, v in figures.items() if isinstance(v, (int, float, str))})
        state = {"i": 0}
        sync = torch.cuda.synchronize if settings.device.type == "cuda" else (lambda: None)

        def one() -> None:
            calls[state["i"] % len(calls)]()
            state["i"] += 1
            sync()

        benchmark.pedantic(one, rounds=max(5, min(200, figures["runs"])), warmup_rounds=2)

    return run


@pytest.fixture
def bench_op(bench, settings, dtype, op_shape, op_mode, op_variant) -> Callable[[str], None]:
    """bench_op(op): one op case over the parametrized dtype, shape, mode and variant."""

    def run(op: str) -> None:
        shape = settings.shape(op_shape)
        record = runner.new_record("op", op, dtype, shape, op_mode, op_variant)
        bench(record, lambda: runner.prepare_op(op, shape, dtype, op_mode, op_variant, settings))

    return run


@pytest.fixture
def bench_model(bench, settings, model_sets, model, dtype, model_variant) -> Callable[[str, bool], None]:
    """bench_model(shape, train): one model case of the parametrized model, dtype and variant."""

    def run(shape_name: str, train: bool) -> None:
        shape = settings.shape(shape_name)
        record = runner.new_record("model", model, dtype, shape, "train" if train else "infer", model_variant)

        def prepare() -> tuple[list, int, int]:
            ms = model_sets(model, dtype, train)
            return (*runner.prepare_model(ms, model, shape, dtype, train, model_variant, settings), 0)

        bench(record, prepare)

    return run
