"""bench/speed_model.py on synthetic SASS (no compile): the latency chain, occupancy, one launch's
bounds, the fp16 baseline interpolation; and the conftest rule that a GPU run cannot pass by skipping
(its refusal of a CPU session is checked by ``bash bench/gpu_check.sh --dry-run``)."""
import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sm():
    """The module, imported without leaking sass_report's TRITON_INTERPRET=0 into this session."""
    saved = os.environ.get("TRITON_INTERPRET")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("speed_model", ROOT / "bench" / "speed_model.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["speed_model"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "bench"))
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return mod


def loop(sm, body, regs=32, smem=0):
    """A Loop over a synthetic steady-state body (the BRA closes it, as in the SASS)."""
    sass = [(16 * i, op, mods, ops) for i, (op, mods, ops) in enumerate(body)]
    sass.append((16 * len(body), "BRA", "", "0x0"))
    return sm.Loop.from_record({"sass": sass, "regs": regs, "smem": smem})


def test_chain_waits_for_a_wide_load_and_its_first_use(sm):
    dep = loop(sm, [("LDG", ".E.128", "R4, desc[UR4][R2.64]"), ("IADD3", "", "R8, R7, R1, RZ")])
    indep = loop(sm, [("LDG", ".E.128", "R4, desc[UR4][R2.64]"), ("IADD3", "", "R8, R9, R1, RZ")])
    narrow = loop(sm, [("LDG", ".E.U16", "R4, desc[UR4][R2.64]"), ("IADD3", "", "R8, R4, R1, RZ")])
    assert dep.chain_cycles(1000, 200) == 1002  # R7 is the 4th register of the 128-bit load; + the BRA
    assert indep.chain_cycles(1000, 200) == 3
    assert narrow.chain_cycles(1000, 200) == 202  # narrow loads (x, scales) are cache hits
    assert dep.instr == 3 and dep.alu == 1


def test_stalled_loads_read_before_they_land(sm):
    """The loads the static report says one warp alone stalls on (its ``s`` count): a load read before it lands;
    not one read (or only copied into the loop-carried register) a latency later, nor a prefetch the next
    iteration reads after it landed."""
    def body(*ops):
        return [(16 * i, op, mods, o) for i, (op, mods, o) in enumerate(ops)]

    ldg = ("LDG", ".E.U16", "R4, desc[UR4][R2.64]")
    work = [("FFMA", "", f"R{10 + i}, R{30 + i}, R3, R{30 + i}") for i in range(300)]
    assert sm.simulate_chain(body(ldg, ("PRMT", "", "R6, R4, 0x5410, R5")), 1000, 200)[1] == ["LDG.E.U16"]
    assert sm.simulate_chain(body(ldg, *work, ("PRMT", "", "R6, R4, 0x5410, R5")), 1000, 200)[1] == []
    # carried: read at the top of the next iteration, 301 cycles after the load was issued
    assert sm.simulate_chain(body(("FADD", "", "R6, R4, R5"), ldg, *work), 1000, 200)[1] == []
    assert sm.simulate_chain(body(("FADD", "", "R6, R4, R5"), ldg, *work), 1000, 400)[1] == ["LDG.E.U16"]
    cycles, _ = sm.simulate_chain(body(ldg, *work), 1000, 200)
    assert cycles == loop(sm, [(op, mods, o) for _, op, mods, o in body(ldg, *work)]).chain_cycles(1000, 200) - 1


def test_occupancy_limits(sm):
    gpu = sm.GPUS["h100"]
    body = [("FFMA", "", "R1, R2, R3, R4")]
    assert sm.occupancy(loop(sm, body, regs=128), 4, gpu) == 4  # 65536 / (128 · 128 threads)
    assert sm.occupancy(loop(sm, body, regs=255), 4, gpu) == 2  # 256-register granules: 256 · 32 per warp
    assert sm.occupancy(loop(sm, body, regs=32, smem=100_000), 4, gpu) == 2  # (100000 + 1024) · 2 fits 228 KB
    assert sm.occupancy(loop(sm, body, regs=16), 4, gpu) == 16  # 2048 threads


def test_launch_bytes_bound_and_waves(sm):
    gpu, p = sm.GPUS["h100"], sm.Params(500, 200, 2.0, math.inf)
    tiny = loop(sm, [("FFMA", "", "R1, R2, R3, R4")])
    big = sm.Launch(tiny, 4, 1, ctas=132, iters=1, n_split=1, bytes=3.004e9)  # 1 ms at the copy rate
    r = sm.predict_launch(big, gpu, p)
    assert r["bound"] == "bytes" and r["us"] == pytest.approx(1000 + 2.0 + 200e-3 * 1.0, rel=1e-3)
    one = sm.predict_launch(sm.Launch(tiny, 4, 1, ctas=132 * 16, iters=100, n_split=1, bytes=0), gpu, p)
    two = sm.predict_launch(sm.Launch(tiny, 4, 1, ctas=132 * 16 + 1, iters=100, n_split=1, bytes=0), gpu, p)
    assert one["waves"] == 1 and two["waves"] == 2 and two["loop_us"] > one["loop_us"]


def test_stream_k_terms(sm):
    """A stream-K launch pays one pipeline fill per tile it walks and one split-K tail per shared tile it
    adds up; with one segment and one finish it is the split-K launch, term for term."""
    gpu, p = sm.GPUS["h200"], sm.Params(500, 200, 2.0, math.inf)
    cp = loop(sm, [("LDGSTS", ".E", "[R1], desc[UR4][R2.64]"), ("FFMA", "", "R1, R2, R3, R4")])
    base = dict(loop=cp, warps=4, stages=3, ctas=132, iters=10, n_split=3, bytes=0, tile_elems=2048)
    one = sm.predict_launch(sm.Launch(**base), gpu, p)
    assert one == sm.predict_launch(sm.Launch(**base, segments=1, finishes=1), gpu, p)
    two = sm.predict_launch(sm.Launch(**base, segments=3, finishes=2), gpu, p)
    fill_us = p.dram_latency_ns * 1e-3
    assert two["loop_us"] == pytest.approx(one["loop_us"] + 2 * fill_us)
    assert two["tail_us"] == pytest.approx(2 * one["tail_us"])


def test_fp16_model_interpolates_measured_efficiency(sm):
    gpu = sm.GPUS["h100"]
    eff = {1: 0.5, 4: 1.0}
    ceil1, ceil2 = sm.fp16_ceiling_us(1, 4096, 4096, gpu), sm.fp16_ceiling_us(2, 4096, 4096, gpu)
    assert sm.fp16_us(1, 4096, 4096, gpu, eff) == pytest.approx(ceil1 / 0.5)
    assert sm.fp16_us(2, 4096, 4096, gpu, eff) == pytest.approx(ceil2 / 0.75)  # halfway in log M
    assert sm.fp16_us(64, 4096, 4096, gpu, eff) == pytest.approx(sm.fp16_ceiling_us(64, 4096, 4096, gpu))


def test_ceiling_is_a_lower_bound_on_any_one_launch_kernel(sm):
    """ceiling_us: launch + max(bytes once, FLOPs); fewer bits only help while bytes bound, and no
    launch the model times (same launch cost, bytes incl. split-K partials, loop, tail) beats it."""
    gpu, p = sm.GPUS["h200"], sm.Params(375, 225, 3.0, 2.5)
    c = {b: sm.ceiling_us("pot", b, 1, 4096, 4096, gpu, p) for b in (2, 3, 4)}
    assert c[2] < c[3] < c[4] < sm.fp16_ceiling_us(1, 4096, 4096, gpu) + p.launch_us
    assert c[4] == pytest.approx(p.launch_us + sm.weight_bytes("pot", 4, 4096, 4096) / gpu["hbm_bps"] * 1e6, rel=1e-3)
    big = {b: sm.ceiling_us("pot", b, 4096, 4096, 4096, gpu, p) for b in (2, 4)}
    assert big[2] == big[4] == pytest.approx(2 * 4096 ** 3 / gpu["mma_flops"] * 1e6 + p.launch_us)
    tiny = loop(sm, [("FFMA", "", "R1, R2, R3, R4")])
    ln = sm.Launch(tiny, 4, 1, ctas=132, iters=1, n_split=1,
                   bytes=sm.weight_bytes("pot", 4, 4096, 4096) + sm.io_bytes(1, 4096, 4096, 1))
    assert sm.predict_launch(ln, gpu, p)["us"] >= c[4]


def test_gpu_skip_reason_rule():
    from gpu_rules import gpu_skip_reason

    assert gpu_skip_reason(("f.py", 3, "Skipped: compiled GPU run only")) is not None
    assert gpu_skip_reason(("f.py", 3, "Skipped: needs CUDA")) is not None
    assert gpu_skip_reason(("f.py", 3, "Skipped: interpreter only")) is None


def test_grid_codes_are_checked_before_any_compile(sm):
    assert sm._codes("pot4,int3") == [("pot", 4), ("int", 3)]
    with pytest.raises(SystemExit):
        sm.main(["grid", "--codes", "pot5"])
