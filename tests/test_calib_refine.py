"""PoTPTQ step 2 on tiny random GPT-2 and Llama models, and the whole calibrate → perplexity pipeline."""
import pytest
import torch

from calibration.calibrate import calibrate_model
from calibration.data import get_calibration_ids, random_windows
from calibration.eval import perplexity
from calibration.refine import FakeQuantLinear, capture_block_inputs, find_blocks, refine_block
from potkernels import IntConfig, IntLinear, PoTConfig, PoTLinear, quantize_model
from potkernels.format.pot import clamp_scales, level_scales, quantize_pot
from tiny_models import VOCAB, tiny_gpt2, tiny_llama

MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", MODELS)
def test_fake_quant_linear_matches_packed(arch):
    """With Γ = 0 the training-time layer computes exactly what the packed PoTLinear computes."""
    model = MODELS[arch]()
    name, module = next((n, m) for n, m in model.named_modules() if n.endswith(("c_attn", "q_proj")))
    cfg = PoTConfig(3, 32)
    from potkernels.nn import float_weight

    n, k = float_weight(module).shape
    s = clamp_scales(torch.rand(n, cfg.groups_in(k)[1]) * 0.01 + 1e-3, 3).float()
    fq = FakeQuantLinear(module, cfg, s)
    with torch.no_grad():
        fq.gamma.uniform_(-0.2, 0.2)
    packed = PoTLinear.from_float(module, cfg, scales=fq.scales().detach())
    x = torch.randn(3, 5, k)
    torch.testing.assert_close(fq(x), packed(x), rtol=1e-5, atol=1e-6)
    # gradient reaches Γ only through Ŝ (E detached)
    fq(x).square().sum().backward()
    assert fq.gamma.grad is not None and bool(fq.gamma.grad.abs().sum() > 0)


@pytest.mark.parametrize("arch", MODELS)
def test_step2_lowers_block_loss(arch):
    model = MODELS[arch]()
    ids = torch.randint(0, VOCAB, (6, 32))
    blocks = find_blocks(model)
    xs, extras = capture_block_inputs(model, blocks, ids, batch_size=4, act_dtype=torch.float32)
    assert [x.shape[0] for x in xs] == [4, 2] and set(extras) == {4, 2}
    names = [n for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
    before = {n: p.clone() for n, p in blocks[0].state_dict().items()}
    cfg = PoTConfig(2, 32)
    res = refine_block(blocks[0], names, xs, extras, cfg, epochs=8, lr=1e-3, lam=0.1)
    assert res.loss_final < res.loss_init
    assert set(res.scales) == set(names)
    assert any(not torch.equal(res.scales[n], res.init[n]) for n in names)
    for n in names:  # refined scales are storable as they are
        torch.testing.assert_close(clamp_scales(res.scales[n], 2).float(), res.scales[n], rtol=0, atol=0)
    after = blocks[0].state_dict()  # the float block is left as it was
    assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)
    # The block swapped to PoTLinear with the refined scales reproduces the returned outputs.
    quantize_model(blocks[0], cfg, skip=(), params=lambda n, _m: {"scales": res.scales[n]})
    with torch.no_grad():
        for x, out in zip(xs, res.outputs):
            args, kwargs = extras[x.shape[0]]
            y = blocks[0](x, *args, **kwargs)
            torch.testing.assert_close(y[0] if isinstance(y, tuple) else y, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", MODELS)
def test_two_step_pipeline(arch):
    model = MODELS[arch]()
    text_ids = torch.randint(0, VOCAB, (4000,))
    calib = random_windows(text_ids, n_samples=6, seq_len=32, seed=1)
    ref = perplexity(model, text_ids, window=64, max_windows=8)
    calibrate_model(model, PoTConfig(3, 32), calib, "two-step", epochs=2, batch_size=3, progress=False)
    swapped = [m for m in model.modules() if isinstance(m, PoTLinear)]
    assert len(swapped) == len(model.quantization_report) > 0
    assert all(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n == "lm_head")
    rep = model.calibration_report
    assert rep["method"] == "two-step" and len(rep["blocks"]) == 2
    assert all(b["loss_final"] <= b["loss_init"] for b in rep["blocks"])
    q = perplexity(model, text_ids, window=64, max_windows=8)
    assert torch.isfinite(torch.tensor(q["ppl"])) and q["tokens"] == ref["tokens"]
    # The swapped model computes what step 2 optimised: per-layer scales equal the stored ones.
    w0 = swapped[0].packed
    again = quantize_pot(swapped[0].dequantize().float(), w0.config, scales=level_scales(w0.scales, w0.config.bits).t())
    assert torch.equal(again.qweight, w0.qweight)


@pytest.mark.parametrize("arch", MODELS)
def test_activation_weighted_step1(arch):
    """act_weighted: step 1 alone (method 'init', no Γ training) and as the start of step 2."""
    text_ids = torch.randint(0, VOCAB, (4000,))
    calib = random_windows(text_ids, n_samples=4, seq_len=32, seed=1)
    m = calibrate_model(MODELS[arch](), PoTConfig(3, 32), calib, "init", act_weighted=True, progress=False)
    rep = m.calibration_report
    assert rep["act_weighted"] and rep["epochs"] == 0 and len(rep["blocks"]) == 2
    assert all(b["loss_final"] == b["loss_init"] for b in rep["blocks"])
    assert len(m.quantization_report) == sum(isinstance(x, PoTLinear) for x in m.modules()) > 0
    assert torch.isfinite(torch.tensor(perplexity(m, text_ids, window=64, max_windows=4)["ppl"]))
    m = calibrate_model(MODELS[arch](), PoTConfig(3, 32), calib, "two-step", epochs=2, act_weighted=True,
                        progress=False)
    assert all(b["loss_final"] <= b["loss_init"] for b in m.calibration_report["blocks"])


def test_activation_weighted_block_init_lowers_block_loss():
    """On a block whose input has one loud channel, weighting step 1 by x² lowers the block's
    output error against the float block (the plain search ignores which inputs are loud)."""
    torch.manual_seed(0)
    model = tiny_llama()
    blocks = find_blocks(model)
    ids = torch.randint(0, VOCAB, (4, 32))
    xs, extras = capture_block_inputs(model, blocks, ids, batch_size=4, act_dtype=torch.float32)
    # input_layernorm scales every channel; make channel 5 loud, its weights small
    with torch.no_grad():
        blocks[0].input_layernorm.weight[5] = 30.0
        for proj in (blocks[0].self_attn.q_proj, blocks[0].self_attn.k_proj, blocks[0].self_attn.v_proj):
            proj.weight[:, 5] *= 0.05
    names = [n for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)]
    loss = {flag: refine_block(blocks[0], names, xs, extras, PoTConfig(3, 32), epochs=0, lr=1e-3, lam=0.1,
                               act_weighted=flag).loss_init for flag in (False, True)}
    assert loss[True] < 0.7 * loss[False]


def test_methods_and_baselines():
    ids = torch.randint(0, VOCAB, (4, 32))
    m = calibrate_model(tiny_gpt2(), IntConfig(4, 32), method="rtn", progress=False)
    assert all(isinstance(x, IntLinear) for x in m.transformer.h[0].modules() if type(x).__name__.endswith("Linear")
               and x is not m.lm_head)
    sq = {}
    for method in ("rtn", "init"):
        torch.manual_seed(0)
        m = calibrate_model(tiny_llama(), PoTConfig(2, 32), ids, method=method, progress=False)
        sq[method] = sum(r.sqnr_db for r in m.quantization_report) / len(m.quantization_report)
    assert sq["init"] > sq["rtn"]
    with pytest.raises(ValueError, match=r"uniform int \(kind 'int'\) supports \('rtn', 'gptq'\)"):
        calibrate_model(tiny_gpt2(), IntConfig(4, 32), ids, method="two-step")
    with pytest.raises(ValueError, match="needs calibration data"):
        calibrate_model(tiny_gpt2(), PoTConfig(4, 32), None, method="two-step")
    with pytest.raises(ValueError, match="method 'rtn' has none"):
        calibrate_model(tiny_gpt2(), PoTConfig(4, 32), ids, method="rtn", act_weighted=True)
    with pytest.raises(ValueError, match="act_weighted needs calibration data"):
        calibrate_model(tiny_gpt2(), PoTConfig(4, 32), None, method="init", act_weighted=True)
    with pytest.raises(ValueError, match="method must be one of"):
        calibrate_model(tiny_gpt2(), PoTConfig(4, 32), ids, method="awq")


def test_calibration_data(tmp_path, shared_data):
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    src = shared_data / "wikitext-2" / "valid.txt"
    a = get_calibration_ids(str(src), tok, n_samples=3, seq_len=16, seed=5)
    b = get_calibration_ids(str(src), tok, n_samples=3, seq_len=16, seed=5)
    assert a.shape == (3, 16) and a.dtype == torch.long and torch.equal(a, b)
    assert not torch.equal(a, get_calibration_ids(str(src), tok, n_samples=3, seq_len=16, seed=6))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        get_calibration_ids(str(empty), tok, 2, 16)
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(ValueError, match="too short"):
        get_calibration_ids(str(short), tok, 2, 16)
    with pytest.raises(FileNotFoundError, match="neither"):
        get_calibration_ids(str(tmp_path / "missing.txt"), tok, 2, 16)
    # data-free: the model writes its own calibration text
    gen = get_calibration_ids("self", tok, n_samples=3, seq_len=12, seed=0, model=tiny_gpt2())
    assert gen.shape == (3, 12) and int(gen.max()) < VOCAB
