"""The one table of families (fastenc/models/families.py): every list of names derives from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fastenc
from fastenc.models import families

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_name_derives_from_the_table():
    assert set(fastenc.__all__) >= {*families.CLASS_NAMES, *families.CONFIG_NAMES, *families.AUTO_NAMES}
    assert list(fastenc.models.MODEL_CLASSES) == list(families.CLASS_NAMES)
    for family in families.FAMILIES:
        for name in family.class_names:
            cls = getattr(fastenc, name)
            assert cls.__name__ == name and cls.__module__ == f"fastenc.models.{family.file}"
            if cls._fastenc_hf_class is None:  # a family this transformers release lacks (families.unavailable)
                continue
            assert cls._fastenc_hf_class.__module__ == f"transformers.models.{family.name}.modeling_{family.name}"


def test_every_family_has_blocks_and_a_readme_entry():
    from fastenc.models import swaps

    for family in families.FAMILIES:
        assert family.name in swaps.targets(), f"{family.name}: no blocks to swap"
        assert f"{family.prefix}Model" in README, f"README's model list lacks {family.prefix}Model"


def test_the_names_import_no_transformers():
    code = "import sys, fastenc; assert len(fastenc._MODELS) > 40; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
