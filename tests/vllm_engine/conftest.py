"""vLLM engine tests: run in the vLLM environment (``.ci/run`` makes it; vLLM pins transformers < 5.20).

Without vLLM they skip with the reason, unless ``POTKERNELS_REQUIRE_VLLM=1`` (set by ``.ci/run``), under
which a missing vLLM fails them instead of skipping silently.
"""
import importlib.util
import os

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("vllm.entrypoints") is not None
REQUIRE = os.environ.get("POTKERNELS_REQUIRE_VLLM") == "1"


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM or REQUIRE:  # REQUIRE without vLLM: the fixture below fails each test
        return
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="vLLM is not installed here: run these in the vLLM environment (README, .ci/run)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _require_vllm():
    if not HAVE_VLLM and REQUIRE:
        pytest.fail("POTKERNELS_REQUIRE_VLLM=1 but vLLM cannot be imported in this environment")
