"""PoTPTQ step 1: the vectorised grid search against a plain loop, and against RTN."""
import pytest
import torch

from calibration.init import candidates, group_errors, init_scales, s0_scales
from potkernels import PoTConfig
from potkernels.format.pot import clamp_scales, exponent_codes, quantize_pot, rtn_scales


def slow_search(w: torch.Tensor, cfg: PoTConfig, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One group and one candidate at a time, decoding with exponent_codes: the definition
    (``h [K]``: optional weight of each column's squared error)."""
    h = torch.ones(w.shape[1], dtype=torch.float64) if h is None else h.double()
    g, ng = cfg.groups_in(w.shape[1])
    best = torch.empty(w.shape[0], ng)
    best_err = torch.empty(w.shape[0], ng, dtype=torch.float64)
    for r in range(w.shape[0]):
        for j in range(ng):
            wg = w[r, j * g : (j + 1) * g].float()  # real columns only
            hg = h[j * g : (j + 1) * g]
            s0 = wg.abs().max() / 2.0 ** (cfg.qmax - 1)
            errs = []
            for b in candidates():
                s = clamp_scales((s0 * b).reshape(1), cfg.bits).float()
                e = exponent_codes(wg[None], s.expand(1, wg.numel()), cfg.qmax)[0]
                w_hat = torch.sign(wg).double() * s.double() * 2.0 ** e.double()
                errs.append(float((hg * (wg.double() - w_hat).square()).sum()))
            i = min(range(len(errs)), key=errs.__getitem__)  # first minimum, as argmin
            best[r, j] = clamp_scales((s0 * candidates()[i]).reshape(1), cfg.bits).float()
            best_err[r, j] = errs[i]
    return best, best_err


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_vectorised_search_equals_loop(bits):
    cfg = PoTConfig(bits, 32)
    w = torch.randn(5, 80) * torch.rand(5, 1)  # 80 = 2 full groups + a partial one of 16 columns
    want, want_err = slow_search(w, cfg)
    got = init_scales(w, cfg)
    assert torch.equal(got, want)
    s = clamp_scales(s0_scales(w, cfg)[:, :, None] * candidates(), bits).float()
    err = group_errors(w, s, cfg).gather(-1, s.sub(got[..., None]).abs().argmin(-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(err, want_err, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_activation_weighted_search_equals_loop(bits):
    cfg = PoTConfig(bits, 32)
    w = torch.randn(4, 80) * torch.rand(4, 1)
    h = torch.rand(80) ** 4 * 50  # a few heavy columns, like LLM outlier channels
    h[5] = 0.0  # a silent channel is allowed
    _, want_err = slow_search(w, cfg, h)
    got = init_scales(w, cfg, col_weights=h)
    # Scales may differ where S and 2S tie (the heavy columns clamp at neither end), so compare
    # the error reached: the vectorised search finds the loop's minimum.
    s = clamp_scales(s0_scales(w, cfg)[:, :, None] * candidates(), bits).float()
    err = group_errors(w, s, cfg, h).gather(-1, s.sub(got[..., None]).abs().argmin(-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(err, want_err, rtol=1e-9, atol=1e-12)


def test_uniform_column_weights_are_the_plain_search():
    cfg = PoTConfig(3, 64)
    w = torch.randn(16, 200)
    assert torch.equal(init_scales(w, cfg, col_weights=torch.full((200,), 7.5)), init_scales(w, cfg))


def test_activation_weighting_lowers_the_output_error():
    """With one input channel ~20x louder than the rest (SmolLM2's attention inputs), the
    weighted search gives a lower output error E‖x(W − W̃)ᵀ‖² than the plain one."""
    torch.manual_seed(0)
    cfg = PoTConfig(3, 128)
    w = torch.randn(64, 256) * 0.05
    w[:, 7] *= 0.2  # the loud channel's weights are small
    x = torch.randn(512, 256)
    x[:, 7] = 20 + torch.randn(512)
    h = x.square().mean(0)

    def out_err(scales):
        w_hat = quantize_pot(w, cfg, scales).dequantize().float()
        return float((x @ (w_hat - w).t()).square().mean())

    assert out_err(init_scales(w, cfg, col_weights=h)) < 0.8 * out_err(init_scales(w, cfg))  # measured 0.72


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape,group", [((64, 256), 128), ((48, 200), 64), ((16, 96), None)])
def test_never_worse_than_rtn(bits, shape, group):
    cfg = PoTConfig(bits, group)
    w = torch.randn(*shape) * 0.02
    w[3, :] = 0  # an all-zero row must not break the search
    mse = {}
    for name, scales in (("rtn", rtn_scales(w, cfg)), ("init", init_scales(w, cfg))):
        mse[name] = float((quantize_pot(w, cfg, scales).dequantize().float() - w).square().mean())
    assert mse["init"] <= mse["rtn"]
    assert mse["init"] < 0.9 * mse["rtn"]  # and clearly better on Gaussian weights


def test_chunking_does_not_change_result():
    cfg = PoTConfig(3, 64)
    w = torch.randn(37, 192)
    torch.testing.assert_close(init_scales(w, cfg, rows_per_chunk=5), init_scales(w, cfg), rtol=0, atol=0)


def test_bad_input():
    with pytest.raises(TypeError, match="PoTConfig"):
        from potkernels import IntConfig

        init_scales(torch.randn(4, 32), IntConfig(4, 32))
    with pytest.raises(ValueError, match="NaN"):
        init_scales(torch.full((4, 32), float("nan")), PoTConfig(3, 32))
    with pytest.raises(ValueError, match="col_weights"):
        init_scales(torch.randn(4, 32), PoTConfig(3, 32), col_weights=torch.ones(31))
    with pytest.raises(ValueError, match="col_weights"):
        init_scales(torch.randn(4, 32), PoTConfig(3, 32), col_weights=-torch.ones(32))
