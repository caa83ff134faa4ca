"""Test setup: Triton runs in its interpreter on CPU tensors (CI has no GPU).

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is set here,
before the package is imported by any test module; an exported ``TRITON_INTERPRET=0`` is kept
(the compiled GPU run, ``bench/gpu_check.sh``). ``POTKERNELS_REQUIRE_GPU=1`` makes that run
strict: the session refuses to start without CUDA + compiled Triton, and a test skipped for want
of a GPU fails instead, so the compiled phase cannot pass by skipping.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
REQUIRE_GPU = os.environ.get("POTKERNELS_REQUIRE_GPU", "0") not in ("", "0")


def _interpreter_index_fix() -> None:
    """Triton < 3.7's interpreter turns a scalar into a loop bound with ``int(array)``, which numpy >= 2.4
    refuses for the 1-element arrays that ``tl.minimum`` of scalars gives (``range(a, tl.minimum(b, c))``:
    "only 0-dimensional arrays can be converted to Python scalars"). Triton 3.7 squeezes first; so does this."""
    import triton
    from triton.runtime import interpreter

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 7):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched


if os.environ["TRITON_INTERPRET"] not in ("", "0"):
    _interpreter_index_fix()

import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from gpu_rules import gpu_skip_reason  # noqa: E402  (tests/ is on sys.path, as for tiny_models)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_sessionstart(session):
    if REQUIRE_GPU:
        interp = os.environ.get("TRITON_INTERPRET", "")
        if interp not in ("", "0") or not torch.cuda.is_available():
            raise pytest.UsageError(f"POTKERNELS_REQUIRE_GPU=1 needs CUDA and TRITON_INTERPRET=0 (got "
                                    f"cuda={torch.cuda.is_available()}, TRITON_INTERPRET={interp!r})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_GPU and rep.skipped:
        reason = gpu_skip_reason(rep.longrepr)
        if reason is not None:
            rep.outcome = "failed"
            rep.longrepr = f"POTKERNELS_REQUIRE_GPU=1: a GPU-only test was skipped on the GPU run: {reason}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything loads a model (inputs must be checked before any long work)."""
    import potkernels.models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(potkernels.models, "load_model", boom)
    monkeypatch.setattr(potkernels.models, "load_quantized", boom, raising=False)


@pytest.fixture
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data folder {SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny models on a shared few-core machine: one torch thread avoids OpenMP spin-wait stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
