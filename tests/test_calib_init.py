"""PoTPTQ step 1: the vectorised grid search against a plain loop, and against RTN."""
import pytest
import torch

from calibration.init import candidates, group_errors, init_scales, s0_scales
from potkernels import PoTConfig
from potkernels.format.pot import clamp_scales, exponent_codes, quantize_pot, rtn_scales


def slow_search(w: torch.Tensor, cfg: PoTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One group and one candidate at a time, decoding with exponent_codes: the definition."""
    g, ng = cfg.groups_in(w.shape[1])
    best = torch.empty(w.shape[0], ng)
    best_err = torch.empty(w.shape[0], ng, dtype=torch.float64)
    for r in range(w.shape[0]):
        for j in range(ng):
            wg = w[r, j * g : (j + 1) * g].float()  # real columns only
            s0 = wg.abs().max() / 2.0 ** (cfg.qmax - 1)
            errs = []
            for b in candidates():
                s = clamp_scales((s0 * b).reshape(1), cfg.bits).float()
                e = exponent_codes(wg[None], s.expand(1, wg.numel()), cfg.qmax)[0]
                w_hat = torch.sign(wg).double() * s.double() * 2.0 ** e.double()
                errs.append(float((wg.double() - w_hat).square().sum()))
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
