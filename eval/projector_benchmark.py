"""Projector speed and memory: x2ct (torch and Triton) beside nanodrr and DiffDRR.

Every method renders the same volume through the same rays (the views of one
:class:`~x2ct.projector.Geometry`, cone beam). x2ct splits each ray's clipped length into
equal steps of ``step`` voxels; the peers take a fixed number of samples per ray, set so
that their longest ray has x2ct's sample spacing. Throughput counts the samples each
method actually evaluates; ``ms`` compares the same image.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from x2ct.eval.memory import PeakRSS as _PeakRSS
from x2ct.projector import Geometry, project, view_vectors
from x2ct.projector.reference import ray_setup

__all__ = ["ProjectorCase", "run_projector_benchmark"]


@dataclass
class ProjectorCase:
    method: str
    device: str
    dtype: str
    samples: int  # sample points evaluated per forward call
    forward_ms: float
    forward_backward_ms: float | None
    peak_mb: float | None
    max_rel_diff: float | None  # max |drr - reference| / max |reference|

    @property
    def samples_per_s(self) -> float:
        return self.samples / (self.forward_ms / 1e3)

    def row(self) -> dict:
        d = asdict(self)
        d["msamples_per_s"] = self.samples_per_s / 1e6
        return d


def _time(fn, device: torch.device, reps: int) -> tuple[float, float]:
    """Median milliseconds of ``fn`` and its peak extra memory in MB."""
    fn()  # warm up (compilation, caches)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return float(np.median(times)), (torch.cuda.max_memory_allocated() - base) / 2**20
    times = []
    with _PeakRSS() as mem:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times)), mem.mb


def _pixels(views: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel centres (V, H*W, 3) in world mm."""
    jj = torch.arange(width, dtype=views.dtype, device=views.device)
    ii = torch.arange(height, dtype=views.dtype, device=views.device)
    pix = (
        views[:, None, None, 3:6]
        + jj[None, None, :, None] * views[:, None, None, 6:9]
        + ii[None, :, None, None] * views[:, None, None, 9:12]
    )
    return pix.reshape(views.shape[0], height * width, 3)


def _nanodrr_renderer(mu, geometry, spacing, n_samples, backend):
    """A callable rendering (V, H, W) with nanodrr, or None when it is not installed."""
    try:
        from nanodrr.data import Subject
        from nanodrr.drr import render
    except ImportError:
        return None
    # nanodrr's own constructor from tensors, as Subject.from_images builds it from a torchio
    # image (float64 inverse, its _make_voxel_to_grid, the centre as isocentre): the
    # benchmark then uses no torchio image class, so a stand-in torchio module (as on a GPU
    # machine where SimpleITK, under torchio, could not be installed) is enough for
    # nanodrr.data to import. Its volume is (1, 1, D, H, W) with W the first world axis.
    shape = mu.shape[2:]
    voxel_to_world = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    voxel_to_world[:3, 3] = torch.tensor([-(n - 1) / 2 * s for n, s in zip(shape, spacing)])
    image = mu[0].detach().float().cpu().unsqueeze(0).permute(0, 1, 4, 3, 2).contiguous()
    subject = Subject(
        image, torch.zeros_like(image), voxel_to_world.float(),
        voxel_to_world.inverse().float(), Subject._make_voxel_to_grid(image.shape),
        torch.zeros(3), max_label=0, convert_to_mu=False,  # the field's centre is world 0
    ).to(mu.device)
    if mu.dtype != torch.float32:
        subject._image_hu = subject._image_hu.to(mu.dtype)
    views = view_vectors(geometry, torch.float32, mu.device)
    height, width = geometry.detector_shape
    v = views.shape[0]
    src = views[:, None, 0:3]
    tgt = _pixels(views, height, width)
    eye3 = torch.eye(3, device=mu.device)[None].expand(v, 3, 3)
    eye4 = torch.eye(4, device=mu.device)[None].expand(v, 4, 4).contiguous()
    sdd = torch.full((v,), geometry.sdd, device=mu.device)

    def run(requires_grad=False):
        subject._image_hu.requires_grad_(requires_grad)
        out = render(subject, eye3, eye4, sdd, height, width, n_samples=n_samples,
                     src=src, tgt=tgt, backend=backend)
        return out[:, 0]

    def forward_backward():
        run(True).sum().backward()
        subject._image_hu.grad = None

    return lambda: run(False), forward_backward


def _diffdrr_renderer(mu, geometry, spacing, n_samples):
    """DiffDRR's trilinear renderer on the same rays, or None when it is not installed."""
    try:
        from diffdrr.renderers import Trilinear
    except ImportError:
        return None
    if len(set(spacing)) != 1:
        return None  # its voxel-space step equals mm only for isotropic voxels
    shape = torch.tensor(mu.shape[2:], dtype=torch.float32, device=mu.device)
    views = view_vectors(geometry, torch.float32, mu.device)
    height, width = geometry.detector_shape
    s = spacing[0]
    # world mm -> voxel index (centres at integers); DiffDRR's voxel_shift=0.5 handles cells
    to_index = lambda p: p / s + (shape - 1) / 2
    src = to_index(views[:, None, 0:3]).expand(-1, height * width, -1).contiguous()
    tgt = to_index(_pixels(views, height, width))
    length_mm = (tgt - src).norm(dim=-1) * s
    renderer = Trilinear()
    volume = mu[0, 0]

    def run(requires_grad=False):
        vol = volume.detach().requires_grad_(requires_grad)
        out = renderer(vol, src, tgt, None, n_points=n_samples)[:, 0] * length_mm
        return out.view(-1, height, width)

    return lambda: run(False), lambda: run(True).sum().backward()


def _x2ct_renderer(mu, geometry, spacing, step, backend):
    mu_g = mu.clone().requires_grad_(True)

    def forward_backward():
        project(mu_g, geometry, spacing, step, backend=backend).sum().backward()
        mu_g.grad = None

    return lambda: project(mu, geometry, spacing, step, backend=backend)[0], forward_backward


def run_projector_benchmark(
    size: int = 128,
    detector: int = 128,
    device: str = "cpu",
    step: float = 0.5,
    reps: int = 3,
    dtypes: tuple[str, ...] = ("float32",),
    peers: bool = True,
) -> list[ProjectorCase]:
    """Time forward and forward+backward of every available method at one setting."""
    from x2ct.data.phantom import spine_phantom
    from x2ct.projector import hu_to_mu

    dev = torch.device(device)
    spacing = (256.0 / size,) * 3  # a 256 mm field of view at any size
    hu = spine_phantom(shape=(size,) * 3, spacing=spacing, seed=0).hu
    mu32 = hu_to_mu(torch.from_numpy(np.asarray(hu, dtype=np.float32)))[None, None].to(dev)
    geometry = Geometry.fit((size,) * 3, spacing, (detector, detector))
    step_mm = step * min(spacing)
    views = view_vectors(geometry, torch.float32, dev)
    *_, n, _ = ray_setup(views, geometry.detector_shape, (size,) * 3, spacing, step_mm, False)
    our_samples = int(n.sum())
    peer_samples_per_ray = int(n.max())
    num_rays = n.numel()

    with torch.no_grad():
        reference = project(mu32, geometry, spacing, step, backend="torch")[0].float()
    ref_max = reference.abs().max()

    def rel(img):  # (V, H, W) against the x2ct torch float32 image
        return float((img.float() - reference).abs().max() / ref_max)

    def measure(method, dtype_name, made, samples):
        forward, forward_backward = made
        with torch.no_grad():
            ms, peak = _time(forward, dev, reps)
            diff = rel(forward())
        ms_fb, peak_fb = _time(forward_backward, dev, reps)
        return ProjectorCase(method, device, dtype_name, samples, ms, ms_fb,
                             max(peak, peak_fb), diff)

    cases: list[ProjectorCase] = []
    fused = dev.type == "cuda"  # the Triton kernels run on CUDA tensors
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        mu = mu32.to(dtype)
        reduced = dtype != torch.float32
        for backend in ["torch", "triton"] if fused else ["torch"]:
            if backend == "torch" and reduced and not fused:
                continue
            made = _x2ct_renderer(mu, geometry, spacing, step, backend)
            cases.append(measure(f"x2ct {backend}", dtype_name, made, our_samples))
        if not peers:
            continue
        peer_samples = num_rays * peer_samples_per_ray
        for backend in ["torch", "triton"] if fused else ["torch"]:
            if backend == "torch" and reduced:
                continue
            made = _nanodrr_renderer(mu, geometry, spacing, peer_samples_per_ray, backend)
            if made is not None:
                cases.append(measure(f"nanodrr {backend}", dtype_name, made, peer_samples))
        made = None if reduced else _diffdrr_renderer(mu, geometry, spacing, peer_samples_per_ray)
        if made is not None:
            cases.append(measure("diffdrr trilinear", dtype_name, made, peer_samples))
    return cases


def markdown_table(cases: list[ProjectorCase], title: str) -> str:
    lines = [
        f"{title}",
        "",
        "| method | device | dtype | fwd ms | fwd+bwd ms | Msamples/s (fwd) | peak MB | "
        "max rel diff |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        fb = f"{c.forward_backward_ms:.1f}" if c.forward_backward_ms is not None else "-"
        pk = f"{c.peak_mb:.0f}" if c.peak_mb is not None else "-"
        df = f"{c.max_rel_diff:.1e}" if c.max_rel_diff is not None else "-"
        lines.append(f"| {c.method} | {c.device} | {c.dtype} | {c.forward_ms:.1f} | {fb} | "
                     f"{c.samples_per_s / 1e6:.1f} | {pk} | {df} |")
    return "\n".join(lines)


def describe_setting(size, detector, step) -> str:
    rays = 2 * detector * detector
    return (f"2 views x {detector}^2 rays ({rays} rays) through a {size}^3 spine phantom "
            f"(256 mm field), step {step} voxel; peers take the samples per ray that give "
            f"their longest ray x2ct's spacing. {math.floor(torch.get_num_threads())} threads.")
