"""QAT: the fake-quant forward is the packed format's decode, STE gradients, export exactness, errors."""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from calibration.qat import (
    IntQATLinear, PoTQATLinear, QATLinear, convert, prepare_qat, qat_layers, sample_from_teacher,
    scales_from_quantized, train_qat,
)
from calibration.qat.fake_quant import pot_codes
from calibration.train import RandomWindows, train_lm
from potkernels import IntConfig, IntLinear, PoTConfig, PoTLinear, quantize_model
from potkernels.format import quantize_int, quantize_pot
from potkernels.format.pot import clamp_scales, level_scales, pot_fake_quant, rtn_scales
from potkernels.format.uniform import clamp_int_scales, rtn_int_params

VOCAB = 97


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: on a shared few-core machine OpenMP threads only wait on each other.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_gpt2() -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def tiny_llama() -> LlamaForCausalLM:
    # intermediate 96 with group 64 → a partial last group in down_proj
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def ids(batch=4, length=32, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("cfg", [PoTConfig(4, 64), PoTConfig(3, 32), PoTConfig(2, None), IntConfig(4, 64),
                                 IntConfig(3, 32)], ids=str)
def test_convert_gives_the_qat_logits_exactly(arch, cfg):
    model = MODELS[arch]()
    prepare_qat(model, cfg)
    before = {n: m.weight.detach().clone() for n, m in qat_layers(model)}
    train_qat(model, [ids()], steps=3, lr=1e-2, scale_lr=5e-2)  # move weights and scales off their init
    layers = dict(qat_layers(model))
    assert any(bool((m.log2_gain != 0).any()) for m in layers.values())
    assert any(not torch.equal(m.weight, before[n]) for n, m in layers.items())
    model.eval()
    x = ids(2, 40, seed=7)
    with torch.no_grad():
        want = model(x).logits
        convert(model)
        got = model(x).logits
    packed = PoTLinear if isinstance(cfg, PoTConfig) else IntLinear
    assert not any(isinstance(m, QATLinear) for m in model.modules())
    assert sum(isinstance(m, packed) for m in model.modules()) == len(layers)
    assert torch.equal(got, want)
    assert model.quantization_config == cfg and len(model.quantization_report) == len(layers)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_pot_fake_weight_is_the_reference_decode(dtype):
    cfg = PoTConfig(3, 32)
    w = torch.randn(24, 80) * 0.05  # K = 80: partial last group
    scales = rtn_scales(w, cfg) * torch.empty(24, 3).uniform_(0.5, 2.0)
    layer = PoTQATLinear(w, None, cfg, scales)
    ref = quantize_pot(w, cfg, scales=scales).dequantize(torch.bfloat16 if dtype == torch.bfloat16 else torch.float16)
    assert torch.equal(layer.fake_weight(dtype), ref.to(dtype))


def test_int_fake_weight_is_the_reference_decode():
    cfg = IntConfig(4, 32)
    w = torch.randn(16, 80)
    s, z = rtn_int_params(w, cfg)
    s = s * torch.empty_like(s).uniform_(0.7, 1.3)
    layer = IntQATLinear(w, None, cfg, s, z)
    assert torch.equal(layer.fake_weight(torch.float16), quantize_int(w, cfg, scales=s, zeros=z).dequantize())


def test_pot_ste_gradients_reach_weight_and_scales():
    cfg = PoTConfig(3, 32)
    w = torch.randn(8, 80)
    s0 = rtn_scales(w, cfg) * 0.5  # some weights clipped above the top level
    layer = PoTQATLinear(w, None, cfg, s0)
    with torch.no_grad():
        layer.log2_gain.uniform_(-0.3, 0.3)
    up = torch.randn(8, 80)
    (layer.fake_weight() * up).sum().backward()

    # Reference: codes held constant → gradient of sign·S·2^E wrt the stored (fp16) S, STE through
    # the fp16 rounding, then chain rule S = S0·2^γ.
    s_float = layer.float_scales().detach()
    s16 = clamp_scales(s_float, cfg.bits).float().requires_grad_()
    (pot_fake_quant(w, s16, cfg) * up).sum().backward()
    want_gain = s16.grad * s_float * torch.log(torch.tensor(2.0))
    torch.testing.assert_close(layer.log2_gain.grad, want_gain, rtol=1e-5, atol=1e-7)

    _, _, s_full = pot_codes(w, s16.detach(), 32, cfg.qmax)
    inside = w.abs() <= s_full * 2 ** (cfg.qmax + 0.5)
    assert 0 < int((~inside).sum()) < w.numel()
    assert torch.equal(layer.weight.grad, up * inside)


def test_int_ste_gradients_reach_weight_and_scales():
    cfg = IntConfig(3, 32)
    w = torch.randn(8, 64)
    s, z = rtn_int_params(w, cfg)
    layer = IntQATLinear(w, None, cfg, s * 0.6, z)  # scale too small → clipping at both ends
    up = torch.randn(8, 64)
    (layer.fake_weight() * up).sum().backward()
    s16 = clamp_int_scales(layer.float_scales().detach(), cfg.bits).float()
    s_full, z_full = s16.repeat_interleave(32, 1), z.repeat_interleave(32, 1)
    q = (torch.round(w / s_full) + z_full).clamp(0, cfg.qmax)
    want_s = ((q - z_full) * up).view(8, 2, 32).sum(-1)
    torch.testing.assert_close(layer.log2_gain.grad, want_s * layer.float_scales().detach() * 0.6931471805599453,
                               rtol=1e-5, atol=1e-6)
    u = w / s_full + z_full
    inside = (u >= -0.5) & (u <= cfg.qmax + 0.5)
    assert 0 < int((~inside).sum()) < w.numel()
    assert torch.equal(layer.weight.grad, up * inside)


def test_gpt2_conv1d_orientation_and_bias():
    model = tiny_gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc  # Conv1D weight is [in, out]
    w_in_out = c_fc.weight.detach().clone()
    prepare_qat(model, PoTConfig(4, 64))
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, PoTQATLinear) and (layer.out_features, layer.in_features) == (256, 64)
    assert torch.equal(layer.weight, w_in_out.t())
    assert layer.bias is not None and layer.bias.requires_grad
    assert model.lm_head.__class__.__name__ == "Linear"  # skipped (tied to the embeddings)


def test_rtn_qat_at_init_equals_quantize_model_and_mapping_init():
    base = tiny_llama().eval()
    x = ids()
    cfg = PoTConfig(3, 64)
    rtn = quantize_model(copy.deepcopy(base), cfg)
    qat = prepare_qat(copy.deepcopy(base), cfg).eval()
    with torch.no_grad():
        assert torch.equal(qat(x).logits, rtn(x).logits)
    # scales from another quantized model (e.g. the two-step calibrator) seed QAT
    mult = {n: level_scales(m.scales, 3).t() * 1.5 for n, m in rtn.named_modules() if isinstance(m, PoTLinear)}
    start = quantize_model(copy.deepcopy(base), cfg, params=lambda n, m: {"scales": mult[n]})
    seeded = prepare_qat(copy.deepcopy(base), cfg, init=scales_from_quantized(start)).eval()
    with torch.no_grad():
        assert torch.equal(seeded(x).logits, start(x).logits)


def test_callable_init_and_step1_init():
    base = tiny_gpt2()
    cfg = PoTConfig(4, 32)
    calls = []

    def half_rtn(w, c):
        calls.append(tuple(w.shape))
        return rtn_scales(w, c) / 2

    m = prepare_qat(copy.deepcopy(base), cfg, init=half_rtn)
    assert len(calls) == len(list(qat_layers(m)))
    layer = m.transformer.h[0].attn.c_attn
    torch.testing.assert_close(layer.scale_init, rtn_scales(layer.weight.detach(), cfg) / 2)
    try:
        from calibration.init import init_scales
    except ImportError:
        with pytest.raises(ImportError, match="calibration.init"):
            prepare_qat(copy.deepcopy(base), cfg, init="init")
    else:
        m = prepare_qat(copy.deepcopy(base), cfg, init="init")
        layer = m.transformer.h[0].attn.c_attn
        torch.testing.assert_close(layer.scale_init, init_scales(layer.weight.detach(), cfg).float())


def test_plain_loop_with_distillation_lowers_loss():
    teacher = tiny_gpt2().eval()
    model = prepare_qat(copy.deepcopy(teacher), PoTConfig(3, 32))
    data = RandomWindows(torch.randint(0, 20, (2000,)), block=32, batch_size=8)  # 20 of 97 tokens used
    x = next(iter(RandomWindows(torch.randint(0, 20, (2000,)), 32, 8, seed=5)))

    def ce(m):
        with torch.no_grad():
            logits = m.eval()(x).logits
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1)))

    before = ce(model)
    hist = train_qat(model, data, steps=30, lr=3e-3, scale_lr=1e-2, teacher=teacher, kd_weight=0.3, warmup=3)
    assert len(hist["loss"]) == 30 and hist["sec_per_step"] > 0
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher is left as it was
    assert ce(model) < before - 0.5


def test_hf_trainer_lowers_the_loss(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = prepare_qat(tiny_gpt2(), PoTConfig(4, 64))
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 20, (32, 32))]
    batch = torch.stack([d["input_ids"] for d in data[:8]])

    def loss():
        with torch.no_grad():
            return float(model.eval()(input_ids=batch, labels=batch).loss)

    before = loss()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=15, per_device_train_batch_size=8, learning_rate=3e-3,
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data).train()
    gains = [m.log2_gain for _, m in qat_layers(model)]
    assert any(bool((g != 0).any()) for g in gains) and all(g.dtype == torch.float32 for g in gains)
    assert loss() < before - 0.5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_checkpointing_step(arch):
    model = prepare_qat(MODELS[arch](), PoTConfig(3, 32))
    ref = copy.deepcopy(model)
    model.gradient_checkpointing_enable()
    model.train(), ref.train()
    x = ids()
    for m in (model, ref):
        m(input_ids=x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for n, p in ref.named_parameters():
        if p.grad is not None:
            assert grads[n] is not None, n
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)
    assert all(m.log2_gain.grad is not None and m.weight.grad is not None for _, m in qat_layers(model))


def test_model_cast_keeps_scales_fp32_and_bf16_export_is_exact():
    model = prepare_qat(tiny_llama(), PoTConfig(4, 32))
    model.to(torch.bfloat16).eval()
    layer = model.model.layers[0].mlp.down_proj
    assert layer.weight.dtype == torch.bfloat16 and layer.log2_gain.dtype == torch.float32
    assert layer.scale_init.dtype == torch.float32
    x = ids()
    with torch.no_grad():
        want = model(x).logits
        got = convert(model)(x).logits
    assert torch.equal(got, want)


def test_data_free_sampling_is_seeded_and_keeps_the_rng():
    teacher = tiny_gpt2()
    state = torch.get_rng_state()
    a = sample_from_teacher(teacher, 3, 12, batch_size=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = sample_from_teacher(teacher, 3, 12, batch_size=2, seed=3)
    assert a.shape == (3, 12) and a.dtype == torch.long and torch.equal(a, b)
    assert int(a.max()) < VOCAB
    hist = train_qat(prepare_qat(copy.deepcopy(teacher), PoTConfig(3, 32)), [a], steps=2, lr=1e-3,
                     teacher=teacher, kd_weight=1.0)
    assert len(hist["loss"]) == 2 and all(torch.isfinite(torch.tensor(hist["loss"])))


def test_clear_errors():
    model = tiny_gpt2()
    with pytest.raises(TypeError, match="PoTConfig or IntConfig"):
        prepare_qat(model, {"bits": 3})
    with pytest.raises(ValueError, match="no QAT layer"):
        convert(model)
    with pytest.raises(ValueError, match="no QAT layer"):
        train_qat(model, [ids()], steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="init must be"):
        prepare_qat(copy.deepcopy(model), PoTConfig(3, 32), init="bogus")
    with pytest.raises(KeyError, match="no scales for layer"):
        prepare_qat(copy.deepcopy(model), PoTConfig(3, 32), init={})
    with pytest.raises(ValueError, match="PoT-only"):
        prepare_qat(copy.deepcopy(model), IntConfig(3, 32), init="init")
    with pytest.raises(ValueError, match="found no"):
        prepare_qat(copy.deepcopy(model), PoTConfig(3, 32), skip=("transformer", "lm_head"))
    prepare_qat(model, PoTConfig(3, 32))
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(model, PoTConfig(3, 32))
    with pytest.raises(ValueError, match="kd_weight > 0 needs a teacher"):
        train_qat(model, [ids()], steps=1, lr=1e-3, kd_weight=0.5)
    with pytest.raises(ValueError, match="already holds packed"):
        prepare_qat(quantize_model(tiny_gpt2(), PoTConfig(3, 32)), PoTConfig(3, 32))
    with pytest.raises(ValueError, match="non-negative"):
        PoTQATLinear(torch.randn(4, 32), None, PoTConfig(3, 32), -torch.ones(4, 1))
    with pytest.raises(TypeError, match="needs a PoTConfig"):
        PoTQATLinear(torch.randn(4, 32), None, IntConfig(3, 32), torch.ones(4, 1))
    with pytest.raises(ValueError, match="exhausted"):
        train_lm(tiny_gpt2(), iter([]), steps=1, lr=1e-3)


def test_autocast_decodes_for_the_autocast_dtype():
    cfg = PoTConfig(4, 32)
    w = torch.randn(48, 64) * 0.02
    layer = PoTQATLinear(w, torch.randn(48), cfg, rtn_scales(w, cfg))
    x = torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    packed = layer.to_packed()
    want = torch.nn.functional.linear(x.bfloat16(), packed.dequantize(torch.bfloat16), packed.bias.bfloat16())
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_qat_starts_from_two_step_scales():
    calibrate = pytest.importorskip("calibration.calibrate", reason="the two-step calibrator is not merged here")
    base = tiny_llama().eval()
    cfg = PoTConfig(3, 32)
    calibrated = calibrate.calibrate_model(copy.deepcopy(base), cfg, ids(4, 32), method="two-step", epochs=1,
                                           progress=False)
    qat = prepare_qat(copy.deepcopy(base), cfg, init=scales_from_quantized(calibrated)).eval()
    x = ids(2, 24, seed=9)
    with torch.no_grad():
        assert torch.equal(qat(x).logits, calibrated(x).logits)
