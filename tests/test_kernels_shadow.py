"""The top-level kernels/ folder (fastenc.kernels once installed) never shadows an installed package named `kernels`
when Python runs from the repo root, as the README's commands do (transformers >= 5.25 imports that package)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *flags: str, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_an_installed_kernels_package_wins(tmp_path):
    fake = tmp_path / "kernels"
    fake.mkdir()
    (fake / "__init__.py").write_text("MARK = 'installed'\n")
    (fake / "layer.py").write_text("X = 1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = _run("import kernels, kernels.layer, fastenc.kernels._common as c; print(kernels.MARK, kernels.layer.X, "
               "c.__name__)", env=env)
    assert out == "installed 1 fastenc.kernels._common"


def test_without_one_the_name_reads_as_not_installed():
    """-S: no site-packages, so no installed `kernels`: the name is an empty package without file or version."""
    out = _run("import sys; sys.path.insert(0, ''); import importlib.util, kernels; "
               "print(getattr(kernels, '__file__', None), hasattr(kernels, '__version__'), "
               "importlib.util.find_spec('kernels') is not None)", "-S")
    assert out == "None False True"


def test_transformers_imports_from_the_repo_root():
    name, file = _run("import transformers.models.bert.modeling_bert as m, kernels; print(m.BertModel.__name__); "
                      "print(getattr(kernels, '__file__', None))").splitlines()
    assert name == "BertModel" and not file.startswith(str(ROOT / "kernels"))
