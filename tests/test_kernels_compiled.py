"""Edge cases of the Triton ray march that only compiled kernels can get wrong: the
sample-range split over programs, autotuning's first call, odd tile edges, per-case views,
the adjoint under atomics, and int64 voxel offsets (a volume of 2**31 voxels).

On CUDA the kernels run compiled at the sizes named; without CUDA the same tests run
under the Triton interpreter at tiny sizes (so their logic is checked on every CPU run),
and the 2**31-voxel test is skipped. ``bash eval/gpu_check.sh`` runs this file on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import DEVICE, KERNELS_RUN, ON_GPU
from kernel_helpers import rel as _rel

from x2ct.kernels import raymarch
from x2ct.projector import Geometry, project_views, view_vectors
from x2ct.projector.reference import backward_reference, forward_reference

if not KERNELS_RUN:  # pragma: no cover
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)


def _smooth_volume(batch, shape, seed=0, dtype=torch.float32):
    """Smooth random attenuation (upsampled noise, 1/mm): a ray whose length sits within
    rounding of a whole number of steps moves little when it gets one sample more
    (compiled Triton contracts mul+add into fma; see test_kernels.test_gpu_matches_reference)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 5, 5, 5, generator=g)
    mu = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear") * 0.02
    return mu[:, 0].to(DEVICE, dtype).contiguous()


# sizes: compiled on CUDA, small under the interpreter (same code paths)
SPLIT_SHAPE = (64, 48, 80) if ON_GPU else (6, 5, 7)
SPLIT_DETECTOR = (96, 80) if ON_GPU else (3, 5)
SPLITS = (1, 2, 3, 7, None) if ON_GPU else (1, 3)
ODD_SHAPE = (67, 45, 93) if ON_GPU else (7, 5, 9)
ODD_DETECTOR = (217, 131) if ON_GPU else (5, 9)  # not multiples of any tile
ODD_CASES = 3 if ON_GPU else 2
ODD_DTYPES = ((torch.float32, 1e-3), (torch.bfloat16, 1e-2)) if ON_GPU else ((torch.float32, 1e-3),)


@pytest.mark.parametrize("parallel", [False, True])
def test_every_sample_split_gives_the_same_image_and_gradient(parallel):
    """The sample range of each ray cut over 1, 2, 3 or 7 programs (and the automatic
    choice; 1 and 3 under the interpreter) gives the same DRR and gradient, each equal to
    the torch reference: the split neither drops nor repeats a sample. Each new split is
    a new autotuning key, so this also checks each kernel's first, autotuned call (the
    backward's zeroing included)."""
    spacing = (1.0, 1.25, 0.9)
    vol = _smooth_volume(2 if ON_GPU else 1, SPLIT_SHAPE)
    angles = (0.0, 90.0, 30.0) if ON_GPU else (30.0,)
    geometry = Geometry.fit(SPLIT_SHAPE, spacing, SPLIT_DETECTOR, angles=angles,
                            parallel=parallel, margin=1.2)
    views = view_vectors(geometry, torch.float32, DEVICE)
    step = 0.6
    ref = forward_reference(vol.float(), views, geometry.detector_shape, spacing, step, parallel)
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref_grad = backward_reference(upstream, SPLIT_SHAPE, views, spacing, step, parallel)
    for splits in SPLITS:
        out = raymarch.raymarch_forward(vol, views, geometry.detector_shape, spacing, step,
                                        parallel, splits=splits)
        assert _rel(out, ref) < 1e-3, splits
        grad = raymarch.raymarch_backward(upstream, SPLIT_SHAPE, views, spacing, step, parallel,
                                          splits=splits)
        assert _rel(grad, ref_grad) < 1e-3, splits
        # the same call again: a cached config, and the gradient volume zeroed again
        again = raymarch.raymarch_backward(upstream, SPLIT_SHAPE, views, spacing, step,
                                           parallel, splits=splits)
        assert _rel(again, grad) < 1e-5, splits


def test_odd_detector_batch_and_per_case_views_match_the_reference():
    """A detector of 217 x 131 pixels (partial tiles at both edges), an odd volume, three
    cases each with its own acquisition (``project_views`` with (B, V, 15) views), bf16
    and fp32 volumes (fp32, two cases under the interpreter): forward and gradient
    against the torch path."""
    spacing = (0.9, 1.1, 1.3)
    geometries = [Geometry.fit(ODD_SHAPE, spacing, ODD_DETECTOR, angles=(a, a + 90.0),
                               sad=sad, sdd=1.6 * sad)
                  for a, sad in ((0.0, 600.0), (7.0, 900.0), (-5.0, 1400.0))[:ODD_CASES]]
    views = torch.stack([view_vectors(g, torch.float32, DEVICE) for g in geometries])
    for dtype, tol in ODD_DTYPES:
        mu = _smooth_volume(ODD_CASES, ODD_SHAPE, seed=2, dtype=dtype)[:, None]
        x = mu.clone().requires_grad_(True)
        out = project_views(x, views, ODD_DETECTOR, spacing, 0.5, backend="triton")
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        upstream = upstream.to(DEVICE)
        (out.float() * upstream).sum().backward()
        x_ref = mu.float().clone().requires_grad_(True)
        ref = project_views(x_ref, views, ODD_DETECTOR, spacing, 0.5, backend="torch")
        (ref * upstream).sum().backward()
        assert _rel(out.float(), ref) < tol, dtype
        assert _rel(x.grad.float(), x_ref.grad) < tol, dtype


def test_compiled_backward_is_the_adjoint_of_the_forward():
    """<A x, y> = <x, A^T y> with the kernels themselves (fp32 atomics included)."""
    spacing = (1.0, 1.0, 1.0)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, *ODD_SHAPE, generator=g).to(DEVICE)
    geometry = Geometry.fit(ODD_SHAPE, spacing, ODD_DETECTOR, angles=(0.0, 90.0))
    views = view_vectors(geometry, torch.float32, DEVICE)
    ax = raymarch.raymarch_forward(x, views, ODD_DETECTOR, spacing, 0.7, False)
    y = torch.rand(ax.shape, generator=g).to(DEVICE)
    aty = raymarch.raymarch_backward(y, ODD_SHAPE, views, spacing, 0.7, False)
    lhs, rhs = float((ax.double() * y.double()).sum()), float((x.double() * aty.double()).sum())
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs CUDA and about 40 GB of free GPU memory")
def test_a_volume_of_2_31_voxels_takes_int64_offsets():
    """2048 x 1024 x 1025 voxels (2**31 + 2 M): the kernels switch to int64 voxel offsets.
    The attenuation sits in the last slabs along X, whose offsets pass 2**31, so an int32
    overflow would read or write elsewhere; forward and gradient against the torch path
    on a small detector (the volume in bf16 to save memory)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs about 40 GB of free GPU memory, {free / 2**30:.0f} GB free")
    shape, spacing = (2048, 1024, 1025), (0.25, 0.25, 0.25)
    assert shape[0] * shape[1] * shape[2] >= raymarch._INT32_LIMIT
    mu = torch.zeros(1, 1, *shape, dtype=torch.bfloat16, device="cuda")
    mu[:, :, 2040:2046, 400:600, 300:700] = 0.02  # offsets 2040*1024*1025 > 2**31
    # parallel rays along +Y (a lateral view), on a small detector over the slab
    geometry = Geometry.fit(shape, spacing, (16, 24), angles=(90.0,), parallel=True)
    views = view_vectors(geometry, torch.float32, "cuda")
    x = mu.clone().requires_grad_(True)
    out = project_views(x, views, (16, 24), spacing, 1.0, parallel=True, backend="triton")
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(5)).to("cuda")
    (out * upstream).sum().backward()
    grad = x.grad
    del x
    x_ref = mu.float().requires_grad_(True)
    del mu
    ref = project_views(x_ref, views, (16, 24), spacing, 1.0, parallel=True, backend="torch")
    (ref * upstream).sum().backward()
    assert float(ref.detach().abs().max()) > 0  # the rays do cross the far slabs
    assert _rel(out.float(), ref) < 1e-2
    assert _rel(grad.float(), x_ref.grad) < 1e-2
