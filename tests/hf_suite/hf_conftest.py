"""Loads fastenc_swap (FASTENC_HF_MODE=off|classes|optimize) before any test module imports transformers classes.

tests/test_pipeline_mixin.py re-executes transformers/__init__.py (direct_transformers_import), which puts a fresh
lazy `transformers` module in sys.modules; it is imported here first and the patch is applied again afterwards, so
`from transformers import BertModel` in the test modules sees the patched classes.
"""

import fastenc_swap

pytest_plugins = ["fastenc_swap"]

fastenc_swap.apply()
import tests.test_pipeline_mixin  # noqa: E402,F401  (see docstring)

fastenc_swap.apply()
