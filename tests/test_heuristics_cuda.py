"""Every heuristic's CUDA path against its CPU path (skipped cleanly where CUDA is missing).

Heuristics I: the rows and cases of tests/test_heuristics_hf.py; kept sets equal except tokens on the threshold
(the same float64 border as the transformers tests: float rounding of softmax and sums differs between devices),
kept values equal to 1e-5. Heuristics II (stateless transforms of heuristics_ext): random rows, kept sets equal
except tokens within 1e-4 (relative) of the row's decision, values close. `bash bench/device.sh` runs this file.
"""
import pytest, torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA (run by bench/device.sh on a GPU machine)", allow_module_level=True)

from test_heuristics_hf import CASES, ROWS, NEG, TOL  # noqa: E402  (the contract's rows and borders)
from soft_sampler.heuristics_ext import top_n_sigma, dynamic_temperature, quadratic, top_a, tfs  # noqa: E402


@pytest.mark.parametrize("rows", sorted(ROWS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_hf_cuda_equals_cpu(name, rows):
    x = ROWS[rows]
    xc = x.cuda()
    for i, (ours, _, border) in enumerate(CASES[name] if rows == "small" else CASES[name][::3]):
        a, c = ours(x), ours(xc).cpu()
        diff = (a != NEG) != (c != NEG)
        if border is None: assert not diff.any(), f"{name} case {i}: {int(diff.sum())} tokens differ"
        elif diff.any():
            r = diff.any(-1).nonzero().flatten()
            assert not (diff[r] & ~border(x[r])).any(), f"{name} case {i}: tokens off the threshold differ"
        both = (a != NEG) & (c != NEG)
        torch.testing.assert_close(c[both], a[both], rtol=TOL, atol=0)


EXT = {
    "top_n_sigma": lambda x: top_n_sigma(x, 1.0), "top_a": lambda x: top_a(x, 0.2), "tfs": lambda x: tfs(x, 0.95),
    "quadratic": lambda x: quadratic(x, 0.3), "dynamic_temperature": lambda x: dynamic_temperature(x, 0.5, 1.5),
}


@pytest.mark.parametrize("name", sorted(EXT))
def test_ext_cuda_equals_cpu(name):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(8, 4096, generator=g) * s for s in (0.5, 2.0, 6.0)])
    a, c = EXT[name](x), EXT[name](x.cuda()).cpu()
    diff = (a != NEG) != (c != NEG)
    assert diff.float().mean() < 1e-3, f"{name}: {int(diff.sum())} tokens differ"
    both = (a != NEG) & (c != NEG)
    torch.testing.assert_close(c[both], a[both], rtol=1e-4, atol=1e-5)
