"""Triton ray-march kernels against the torch reference (x2ct.projector.reference).

Without CUDA the kernels run on the CPU through the Triton interpreter (tests/conftest.py
sets TRITON_INTERPRET=1 before anything imports triton: Triton decorates its standard
library on import and our kernels on theirs, reading the variable then); with CUDA the
same tiny tests run the compiled kernels on the GPU, plus one larger GPU-only comparison.
"""

import pytest
import torch
from kernel_helpers import DEVICE, KERNELS_RUN, ON_GPU
from kernel_helpers import rel as _rel

from x2ct.kernels import raymarch
from x2ct.projector import Geometry, project, view_vectors
from x2ct.projector.reference import backward_reference, forward_reference

if not KERNELS_RUN:  # pragma: no cover
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)


ANGLES = (0.0, 90.0, 33.3)
STEP = 0.7  # voxels of the smallest spacing: fewer samples, and not a round number


def _case(shape, spacing, parallel, seed=0, batch=2, detector=(5, 7)):
    """A random volume (B, 1, X, Y, Z) and a geometry whose detector overshoots the
    volume (margin 1.3), so that some rays miss it and others graze its faces."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(batch, 1, *shape, generator=g).to(DEVICE)
    geometry = Geometry.fit(
        shape, spacing, detector_shape=detector, angles=ANGLES, parallel=parallel, margin=1.3
    )
    return mu, geometry


def _launch_args(geometry, spacing):
    views = view_vectors(geometry, dtype=torch.float32, device=DEVICE)
    return views, geometry.detector_shape, spacing, STEP * min(spacing), geometry.parallel


CASES = [
    ((9, 7, 6), (1.0, 1.3, 0.8), False),
    ((9, 7, 6), (1.0, 1.3, 0.8), True),
    ((11, 8, 13), (0.9, 1.2, 1.5), False),
    ((11, 8, 13), (0.9, 1.2, 1.5), True),
]


@pytest.mark.parametrize("shape, spacing, parallel", CASES)
def test_forward_and_gradient_match_reference(shape, spacing, parallel):
    mu, geometry = _case(shape, spacing, parallel)
    upstream = torch.randn(2, len(ANGLES), *geometry.detector_shape, device=DEVICE)
    drr, grads = {}, {}
    for backend in ("triton", "torch"):
        x = mu.clone().requires_grad_(True)
        drr[backend] = project(x, geometry, spacing, step=STEP, backend=backend)
        (drr[backend] * upstream).sum().backward()
        grads[backend] = x.grad
    assert drr["triton"].shape == (2, len(ANGLES), *geometry.detector_shape)
    assert drr["triton"].dtype == torch.float32
    assert (drr["torch"] == 0).any() and (drr["torch"] > 0).any()  # rays miss and hit
    assert _rel(drr["triton"], drr["torch"]) < 1e-4
    assert _rel(grads["triton"], grads["torch"]) < 1e-4


@pytest.mark.parametrize("parallel", [False, True])
def test_adjoint_identity(parallel):
    shape, spacing = (11, 8, 13), (0.9, 1.2, 1.5)
    mu, geometry = _case(shape, spacing, parallel, seed=1)
    views, detector, spacing, step_mm, parallel = _launch_args(geometry, spacing)
    x = mu[:, 0].contiguous()
    y = torch.randn(2, len(ANGLES), *detector, device=DEVICE)
    ax = raymarch.raymarch_forward(x, views, detector, spacing, step_mm, parallel)
    aty = raymarch.raymarch_backward(y, shape, views, spacing, step_mm, parallel)
    lhs = (ax.double() * y.double()).sum()
    rhs = (x.double() * aty.double()).sum()
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_sample_split_is_exact():
    """Cutting each ray's samples over several programs gives the same samples."""
    shape, spacing = (9, 7, 6), (1.0, 1.3, 0.8)
    mu, geometry = _case(shape, spacing, False, seed=2)
    views, detector, spacing, step_mm, parallel = _launch_args(geometry, spacing)
    x = mu[:, 0].contiguous()
    y = torch.randn(2, len(ANGLES), *detector, device=DEVICE)
    out = raymarch.raymarch_forward(x, views, detector, spacing, step_mm, parallel, splits=3)
    ref = forward_reference(x, views, detector, spacing, step_mm, parallel)
    assert _rel(out, ref) < 1e-4
    grad = raymarch.raymarch_backward(y, shape, views, spacing, step_mm, parallel, splits=3)
    ref = backward_reference(y, shape, views, spacing, step_mm, parallel)
    assert _rel(grad, ref) < 1e-4


def test_int64_offsets(monkeypatch):
    """The INDEX_64 variant (volumes of 2**31 voxels or more), forced on a tiny volume."""
    monkeypatch.setattr(raymarch, "_INT32_LIMIT", 1)
    shape, spacing = (9, 7, 6), (1.0, 1.3, 0.8)
    mu, geometry = _case(shape, spacing, True, seed=3, batch=1)
    views, detector, spacing, step_mm, parallel = _launch_args(geometry, spacing)
    x = mu[:, 0].contiguous()
    y = torch.randn(1, len(ANGLES), *detector, device=DEVICE)
    out = raymarch.raymarch_forward(x, views, detector, spacing, step_mm, parallel)
    assert _rel(out, forward_reference(x, views, detector, spacing, step_mm, parallel)) < 1e-4
    grad = raymarch.raymarch_backward(y, shape, views, spacing, step_mm, parallel)
    ref = backward_reference(y, shape, views, spacing, step_mm, parallel)
    assert _rel(grad, ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    """A half-precision volume (or upstream gradient) is read exactly and marched in fp32:
    the launchers give the fp32 result of the rounded input."""
    shape, spacing = (9, 7, 6), (1.0, 1.3, 0.8)
    mu, geometry = _case(shape, spacing, False, seed=4)
    views, detector, spacing, step_mm, parallel = _launch_args(geometry, spacing)
    x = mu[:, 0].to(dtype).contiguous()
    out = raymarch.raymarch_forward(x, views, detector, spacing, step_mm, parallel)
    assert out.dtype == torch.float32
    ref = forward_reference(x.float(), views, detector, spacing, step_mm, parallel)
    assert _rel(out, ref) < 1e-4
    y = torch.randn(2, len(ANGLES), *detector, device=DEVICE).to(dtype)
    grad = raymarch.raymarch_backward(y, shape, views, spacing, step_mm, parallel)
    assert grad.dtype == torch.float32
    ref = backward_reference(y.float(), shape, views, spacing, step_mm, parallel)
    assert _rel(grad, ref) < 1e-4


def test_project_bfloat16():
    """Through ``project``: a bf16 volume gives a bf16 DRR, the fp32 result rounded."""
    shape, spacing = (9, 7, 6), (1.0, 1.3, 0.8)
    mu, geometry = _case(shape, spacing, True, seed=5)
    mu = mu.to(torch.bfloat16)
    out = project(mu, geometry, spacing, step=STEP, backend="triton")
    ref = project(mu.float(), geometry, spacing, step=STEP, backend="torch")
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) < 4e-3  # one bf16 rounding of the output (2**-9 relative)


def test_launcher_errors(monkeypatch):
    shape, spacing = (9, 7, 6), (1.0, 1.3, 0.8)
    mu, geometry = _case(shape, spacing, False, batch=1)
    views, detector, spacing, step_mm, parallel = _launch_args(geometry, spacing)
    x = mu[:, 0].contiguous()
    fwd, bwd = raymarch.raymarch_forward, raymarch.raymarch_backward
    y = torch.zeros(1, len(ANGLES), *detector, device=DEVICE)
    bad_forward = [
        ((mu, views, detector), "volume must be a \\(B, X, Y, Z\\)"),
        ((x.transpose(1, 3), views, detector), "contiguous"),
        ((x.to(torch.int32), views, detector), "float32, bfloat16 or float16"),
        ((x.double(), views, detector), "float32, bfloat16 or float16"),
        ((x, views[:, :14], detector), "views must be a \\(V, 15\\)"),
        ((x, views[0], detector), "views must be a \\(V, 15\\)"),
        ((x, views.int(), detector), "views must be floating point"),
        ((x, views, (0, 7)), "detector_shape"),
        ((x, views, (5, 7, 1)), "detector_shape"),
    ]
    for (volume, v, det), match in bad_forward:
        with pytest.raises(ValueError, match=match):
            fwd(volume, v, det, spacing, step_mm, parallel)
    with pytest.raises(ValueError, match="spacing"):
        fwd(x, views, detector, (1.0, -1.0, 1.0), step_mm, parallel)
    with pytest.raises(ValueError, match="step_mm"):
        fwd(x, views, detector, spacing, 0.0, parallel)
    with pytest.raises(ValueError, match="splits"):
        fwd(x, views, detector, spacing, step_mm, parallel, splits=0)
    with pytest.raises(ValueError, match="grad has 3 views but views has 2"):
        bwd(y, shape, views[:2], spacing, step_mm, parallel)
    with pytest.raises(ValueError, match="volume_shape"):
        bwd(y, (9, 7), views, spacing, step_mm, parallel)
    with pytest.raises(ValueError, match="grad must be a \\(B, V, H, W\\)"):
        bwd(y[0], shape, views, spacing, step_mm, parallel)
    with pytest.raises(ValueError, match="contiguous"):
        bwd(y.transpose(2, 3), shape, views, spacing, step_mm, parallel)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA tensor"):
        fwd(x.cpu(), views, detector, spacing, step_mm, parallel)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs CUDA (and compiled, not interpreted, kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_reference(dtype):
    """64^3 volume, 128^2 detector, AP and lateral, on CUDA: forward and gradient."""
    shape, spacing = (64, 64, 64), (1.0, 1.0, 1.25)
    g = torch.Generator(device="cuda").manual_seed(0)
    # smooth random attenuation (upsampled noise, 1/mm): where fp32 rounding of a ray's
    # length L sits right at an integer L / step, the backends can round N = ceil(L / step)
    # differently (Triton contracts mul+add into fma on GPU), which moves that ray's sum
    # by about 1e-4 of the image maximum; a smooth volume keeps that small
    coarse = torch.rand(2, 1, 9, 9, 9, generator=g, device="cuda")
    mu = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear") * 0.02
    geometry = Geometry.fit(shape, spacing, detector_shape=(128, 128), angles=(0.0, 90.0))
    mu = mu.to(dtype)
    x = mu.clone().requires_grad_(True)
    out = project(x, geometry, spacing, backend="triton")
    upstream = torch.randn(out.shape, generator=g, device="cuda").to(dtype)
    (out * upstream).sum().backward()
    x_ref = mu.float().clone().requires_grad_(True)
    ref = project(x_ref, geometry, spacing, backend="torch")
    (ref * upstream.float()).sum().backward()
    diff = (out.float() - ref).abs()
    out_tol = 1e-3 if dtype == torch.float32 else 4e-3  # N rounding; bf16 output rounding
    assert diff.max() < out_tol * ref.abs().max()
    # a few rays at most, not a systematic bias. The bound compares with the reference
    # rounded as the kernel rounds its fp32 sums to the output dtype: against the fp32
    # reference, bf16 rounding alone gives a mean difference of about 6e-4 of the maximum
    rounded = ref.detach().to(dtype).float()
    assert (out.float() - rounded).abs().mean() < 1e-5 * ref.abs().max()
    grad_tol = 1e-3 if dtype == torch.float32 else 1e-2  # bf16 upstream and result
    assert _rel(x.grad.float(), x_ref.grad) < grad_tol
