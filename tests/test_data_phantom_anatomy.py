"""The phantom's anatomy measured from the drawn volumes (labels and HU), against the
published ranges in x2ct.data.phantom.anatomy; grid independence; pathology, metal, noise."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from x2ct.data import DISC_LABEL, PhantomOptions, spine_phantom
from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom import whole_body_grid

QUIET = dict(ct_noise=False, metal=False, fracture=False, degeneration=False, arms=False)
SIZE = (1 - 2.4 * A.SIZE_SD, 1 + 2.4 * A.SIZE_SD)  # range of the per-seed size factor


class Local:
    """A 1 mm grid centred on one vertebra's body, sampled along its local axes."""

    def __init__(self, seed, region, label, shape=(80, 96, 64), **options):
        opts = PhantomOptions(**{**QUIET, **options})
        info = spine_phantom(8, 8.0, seed=seed, region=region, options=opts).info
        v = info["vertebrae"][label]
        self.v, self.frame = v, np.array(v["frame"])
        centre = np.array(v["centre"])
        # Put the body's centre at the grid's centre (y: between body and arch).
        self.shift = self.frame @ np.array([0.0, -20.0, 0.0])
        self.ph = spine_phantom(shape, 1.0, seed=seed, region=region,
                                offset_mm=-(centre + self.shift), options=opts)
        self.shape = np.array(shape)
        self.label = label

    def index(self, q):
        """Voxel coordinates of local points q (..., 3) (mm in the vertebra's frame)."""
        world = np.asarray(q) @ self.frame.T - self.shift
        return world + (self.shape - 1) / 2

    def sample(self, volume, q, order=0):
        idx = self.index(q).reshape(-1, 3).T
        return ndimage.map_coordinates(volume, idx, order=order, mode="nearest").reshape(
            np.shape(q)[:-1])

    def run(self, start, direction, value=None, reach=60.0, step=0.2):
        """Length (mm) of the run of ``value`` (default: this vertebra's label) along the
        line through local point ``start`` in ``direction``, containing ``start``."""
        value = self.label if value is None else value
        t = np.arange(-reach, reach + step, step)
        q = np.asarray(start) + t[:, None] * np.asarray(direction, float)
        inside = self.sample(self.ph.labels, q) == value
        i0 = len(t) // 2
        if not inside[i0]:
            return 0.0
        lo = i0 - np.argmin(inside[i0::-1]) if not inside[:i0 + 1].all() else 0
        hi = i0 + np.argmin(inside[i0:]) if not inside[i0:].all() else len(t)
        return (hi - lo) * step


def _published(level, column):
    mean, sd = A.VERTEBRA[level][column], A.VERTEBRA_SD[column]
    return (mean - 2.5 * sd) * SIZE[0] - 1.5, (mean + 2.5 * sd) * SIZE[1] + 1.5


@pytest.fixture(scope="module")
def l3():
    return Local(7, "lumbar", 22)


@pytest.mark.parametrize("seed,region,label", [(7, "lumbar", 20), (7, "lumbar", 22),
                                               (8, "lumbar", 24), (9, "thoracic", 11),
                                               (9, "thoracic", 15), (9, "thoracic", 19)])
def test_vertebral_body_dimensions_match_morphometry(seed, region, label, l3):
    loc = l3 if (seed, label) == (7, 22) else Local(seed, region, label)
    v = loc.v
    hc, b = v["h0"] / 2, v["body_d"] / 2
    # Width near the endplates (the waist is narrower), depth at mid-height, heights at
    # the anterior and posterior thirds (endplate concavity ~1 mm each side there).
    width = max(loc.run([0, 0, s * (hc - 3)], [1, 0, 0]) for s in (-1, 1))
    depth = loc.run([0, 0, 0], [0, 1, 0])
    h_ant = loc.run([0, 0.6 * b, 0], [0, 0, 1])
    h_post = loc.run([0, -0.6 * b, 0], [0, 0, 1])
    # Pedicle width: across the pedicle's waist, between the body and the canal's centre.
    w_arch = hc - v["ped_h"] / 2 - 1.0
    v_ped = (-0.85 * b + 3.0 + v["canal_v"]) / 2
    u_ped = v["canal_w"] / 2 + v["ped_w"] / 2
    ped = min(loc.run([s * u_ped, v_ped, w_arch], [1, 0, 0], reach=20) for s in (-1, 1))
    for value, column in [(width, "body_w"), (depth, "body_d"), (h_ant, "body_ha"),
                          (h_post, "body_hp"), (ped, "ped_w")]:
        lo, hi = _published(label, column)
        assert lo <= value <= hi, (A.LEVEL_NAMES[label], column, value, (lo, hi))


def test_canal_holds_csf_and_is_enclosed(l3):
    v = l3.v
    w_arch = v["h0"] / 2 - v["ped_h"] / 2 - 1.0
    centre = [0.0, v["canal_v"], w_arch]
    hu = l3.sample(l3.ph.hu, np.array([centre]), order=1)[0]
    assert -20.0 <= hu <= 45.0  # CSF (L3: below the conus, no cord)
    # In the plane of the pedicles the canal is a hole closed by bone all round.
    u, vv = np.meshgrid(np.arange(-40, 40, 0.5), np.arange(-60, 30, 0.5), indexing="ij")
    plane = np.stack([u, vv, np.full_like(u, w_arch)], axis=-1)
    bone = l3.sample(l3.ph.labels, plane) == 22
    free, _ = ndimage.label(~bone)
    k = free[80, int((v["canal_v"] + 60) / 0.5)]
    border = set(np.unique(np.concatenate([free[0], free[-1], free[:, 0], free[:, -1]])))
    assert k > 0 and k not in border
    width = np.sum(free[:, int((v["canal_v"] + 60) / 0.5)] == k) * 0.5
    lo, hi = _published(22, "canal_w")
    assert lo - 3 <= width <= hi + 3  # the canal's width at the pedicles


def test_discs_between_bodies(l3):
    v = l3.v
    # Down the body's axis: L3, then the L3-L4 disc, then L4.
    t = np.arange(0.0, 60.0, 0.2)
    labels = l3.sample(l3.ph.labels, t[:, None] * np.array([0, 0, -1.0]))
    runs = [(k, len(list(g))) for k, g in itertools.groupby(labels)]
    order = [k for k, _ in runs]
    assert order[:3] == [22, DISC_LABEL, 23], order
    disc = dict(runs)[DISC_LABEL] * 0.2
    assert 5.0 <= disc <= 16.0  # lumbar disc heights (Zhou 2000)
    assert abs(disc - v["disc_below"]) <= 3.0  # the central disc, endplates 1.2 mm concave


def test_cortex_brighter_than_textured_trabecular_bone(l3):
    hu, labels = l3.ph.hu, l3.ph.labels
    body = np.zeros(labels.shape, bool)
    b = l3.v["body_d"] / 2
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij"), -1)
    local = (grid - (l3.shape - 1) / 2 + l3.shift) @ l3.frame  # voxel -> local mm
    body = (labels == 22) & (local[..., 1] > -0.7 * b)  # the body, not the arch
    core = ndimage.binary_erosion(body, iterations=4)
    shell = body & ~ndimage.binary_erosion(body)
    assert core.sum() > 2000
    assert hu[shell].mean() > hu[core].mean() + 60.0
    assert 1500 <= l3.v["cortical_hu"] <= 1900  # dense cortical bone (Schneider 1996)
    # Trabecular texture: non-zero variance, correlated over ~1.5-3 mm, not white.
    x = hu[core] - hu[core].mean()
    assert x.std() > 8.0
    shifted = lambda k: np.roll(hu, -k, axis=0)[core] - hu[core].mean()
    corr = lambda k: float(np.mean(x * shifted(k)) / x.var())
    assert corr(1) > 0.5 and corr(6) < 0.3


def test_bmd_moves_trabecular_hu():
    medians = []
    for bmd in (60.0, 200.0):
        loc = Local(7, "lumbar", 22, shape=(48, 64, 40), bmd=bmd)
        core = ndimage.binary_erosion(loc.ph.labels == 22, iterations=5)
        medians.append(float(np.median(loc.ph.hu[core])))
        assert abs(medians[-1] - A.hu_from_bmd(bmd)) < 45.0
    assert medians[1] - medians[0] > 100.0


def test_grid_does_not_change_the_anatomy():
    opts = PhantomOptions(ct_noise=False)
    small = spine_phantom(64, 2.0, seed=21, options=opts)
    big = spine_phantom((210, 170, 120), 2.0, seed=21, options=opts)
    inner = big.hu[73:137, 53:117, 28:92], big.labels[73:137, 53:117, 28:92]
    assert np.mean(inner[1] != small.labels) < 1e-4
    diff = np.abs(inner[0] - small.hu)
    assert np.percentile(diff, 99.9) < 1.0 and diff.mean() < 0.05
    assert np.array_equal(big.metal[73:137, 53:117, 28:92], small.metal)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_body_size_is_adult(seed):
    opts = PhantomOptions(table=False, arms=False, ct_noise=False)
    shape, offset = whole_body_grid(seed, spacing=4.0, z_extent_mm=8.0, options=opts)
    ph = spine_phantom(shape, 4.0, seed=seed, offset_mm=offset, options=opts)
    body = ph.hu[:, :, 1] > -500
    xs, ys = np.nonzero(body)
    width = (xs.max() - xs.min() + 1) * 4.0
    depth = (ys.max() - ys.min() + 1) * 4.0
    assert 280.0 - 4 <= width <= 380.0 + 4 and 180.0 - 4 <= depth <= 300.0 + 4
    assert ph.info["body"]["width_mm"] == pytest.approx(width, abs=8.0)
    # The spine sits in the back third; fat under the skin: the lateral edges are fat.
    y0 = (shape[1] - 1) / 2 * 4.0 + offset[1]  # anatomy y = 0, in mm from index 0
    assert ys.min() * 4.0 < y0 - 40 and ys.max() * 4.0 > y0 + 100


@pytest.fixture(scope="module")
def contrast_pair():
    """Lumbar whole-body grid at 4 mm, portal-venous phase and unenhanced."""
    base = dict(ct_noise=False, metal=False, arms=False, table=False, calcification=False)
    shape, offset = whole_body_grid(11, spacing=4.0, z_extent_mm=240.0)
    out = [spine_phantom(shape, 4.0, seed=11, offset_mm=offset,
                         options=PhantomOptions(contrast=c, **base)) for c in ("venous", "none")]
    return out, shape, offset


def _mm(shape, offset, spacing=4.0):
    return [(np.arange(n) - (n - 1) / 2) * spacing - o for n, o in zip(shape, offset)]


def test_organs_where_expected(contrast_pair):
    (venous, plain), shape, offset = contrast_pair
    x, y, z = np.meshgrid(*_mm(shape, offset), indexing="ij")
    diff = venous.hu - plain.hu  # enhancement: liver ~35-70, kidneys ~110-170 HU
    liver = (diff > 30) & (diff < 80) & (z > 0)
    assert liver.sum() * 64e-3 > 300.0  # cm^3
    assert np.mean(x[liver] > 0) > 0.75  # on the patient's right
    kidney = (diff > 100) & (np.abs(x) > 45)
    l1, l3 = (venous.info["vertebrae"][k]["centre"] for k in (20, 22))
    for side in (1, -1):
        k = kidney & (np.sign(x) == side)
        assert k.sum() * 64e-3 > 60.0  # cm^3 each
        assert y[k].mean() < 15.0  # posterior: beside the vertebral bodies
        assert l3[2] - 50 < z[k].mean() < l1[2] + 50  # beside L1-L3
    # Unenhanced vessels: the aorta is left-anterior of the spine, the IVC right-anterior.
    vessels = (diff > 90) & (np.abs(x) < 45) & (np.abs(z) < 40)
    assert np.mean(x[vessels] < 0) > 0.3 and np.mean(x[vessels] > 0) > 0.3
    assert y[vessels].mean() > 10.0


def test_lungs_only_in_the_chest_and_gas_in_bowel(contrast_pair):
    (_, plain), shape, offset = contrast_pair
    x, y, z = np.meshgrid(*_mm(shape, offset), indexing="ij")
    dark = plain.hu < -700
    body = ndimage.binary_fill_holes(plain.hu > -500)
    lumbar = (np.abs(z) < 30) & body
    assert (dark & lumbar & (y < -10)).sum() == 0  # no lung beside L3
    gas = (plain.hu < -500) & body & (np.abs(z) < 100)
    assert gas.sum() * 64e-3 > 5.0  # bowel gas pockets, cm^3
    chest = spine_phantom(64, 2.0, seed=11, region="thoracic",
                          options=PhantomOptions(ct_noise=False))
    lung = (chest.hu > -900) & (chest.hu < -750)
    assert lung.mean() > 0.1


@pytest.mark.parametrize("seed,grade", [(31, 1), (32, 2), (33, 3)])
def test_fracture_height_loss_matches_genant_grade(seed, grade):
    frac = PhantomOptions(ct_noise=False, metal=False, fracture=True, fracture_grade=grade)
    info = spine_phantom(8, 8.0, seed=seed, options=frac).info
    (f,) = info["fractures"][:1]
    lo, hi = A.GENANT_GRADES[grade]
    assert lo <= f["loss"] <= hi
    heights = []
    for fractured in (True, False):
        loc = Local(seed, "lumbar", f["label"], fracture=fractured, metal=False,
                    fracture_grade=grade if fractured else None)
        b = loc.v["body_d"] / 2
        where = {"wedge": [0, 0.7 * b, 0], "biconcave": [0, 0, 0], "crush": [0, 0.7 * b, 0]}
        heights.append(loc.run(where[f["type"]], [0, 0, 1]))
    ratio = heights[0] / heights[1]
    assert 1 - hi - 0.08 <= ratio <= 1 - lo + 0.08, (f, heights)


def test_metal_screws_in_pedicles_and_bodies():
    opts = PhantomOptions(metal=True, ct_noise=False)
    info = spine_phantom(8, 8.0, seed=41, options=opts).info
    screws = info["screws"]
    assert 6 <= len(screws) <= 10 and {s["side"] for s in screws} == {-1.0, 1.0}
    centre = np.mean([s["entry"] for s in screws], axis=0)
    ph = spine_phantom((100, 110, 140), 1.0, seed=41, offset_mm=-centre, options=opts)
    inside, n = 0, 0
    for s in screws:
        a, b = np.array(s["entry"]) - centre, np.array(s["tip"]) - centre
        assert 35.0 <= np.linalg.norm(b - a) <= 55.0 and 5.5 <= s["diameter"] <= 7.5
        for t in np.linspace(0.3, 0.9, 7):
            idx = np.round((a + t * (b - a)) + (np.array(ph.hu.shape) - 1) / 2).astype(int)
            assert ph.metal[tuple(idx)] and ph.hu[tuple(idx)] >= A.METAL_HU - 1.0
            inside += ph.labels[tuple(idx)] == s["label"]
            n += 1
    assert inside / n > 0.8  # along the pedicle into the body
    none = spine_phantom(32, 4.0, seed=41, options=PhantomOptions(metal=False))
    assert not none.metal.any() and not none.info["screws"]


def test_ct_noise_level_and_spectrum():
    opts = dict(metal=False, arms=False)
    noisy = spine_phantom((96, 96, 24), 2.0, seed=51, options=PhantomOptions(**opts))
    clean = spine_phantom((96, 96, 24), 2.0, seed=51,
                          options=PhantomOptions(ct_noise=False, **opts))
    n = noisy.hu - clean.hu
    block = n[24:72, 24:72]  # inside the body
    assert 5.0 <= block.std() <= 25.0
    assert noisy.info["noise_std"] == pytest.approx(block.std(), rel=0.25)
    # Noise power spectrum in-plane, radially averaged: ramp-like, not white.
    spec = np.mean(np.abs(np.fft.fft2(block - block.mean(axis=(0, 1)), axes=(0, 1))) ** 2, -1)
    f = np.fft.fftfreq(48, d=2.0)
    fr = np.hypot(f[:, None], f[None, :])
    low = spec[(fr > 0) & (fr <= 0.03)].mean()
    mid = spec[(fr > 0.1) & (fr <= 0.2)].mean()
    assert mid > 2.0 * low
    assert np.all(noisy.hu[clean.hu == -1000.0] == -1000.0)  # no noise in air


def _centroids(seed, **options):
    """Vertebra centroids (mm) from the labels of a coarse grid over T1-S1."""
    opts = PhantomOptions(ct_noise=False, metal=False, fracture=False, **options)
    ph = spine_phantom((40, 48, 170), 4.0, seed=seed, offset_mm=(0.0, 0.0, -150.0),
                       options=opts)
    axes = [(np.arange(n) - (n - 1) / 2) * 4.0 - o
            for n, o in zip(ph.labels.shape, (0.0, 0.0, -150.0))]
    out = {}
    for lab in range(8, 25):
        idx = np.nonzero(ph.labels == lab)
        if idx[0].size:
            out[lab] = np.array([axes[k][idx[k]].mean() for k in range(3)])
    return out


def _off_chord(c, top, bottom, mid):
    """Offset (x, y) of vertebra ``mid`` from the straight line between top and bottom."""
    t = (c[mid][2] - c[bottom][2]) / (c[top][2] - c[bottom][2])
    return c[mid][:2] - (c[bottom][:2] + t * (c[top][:2] - c[bottom][:2]))


def test_kyphosis_lordosis_and_scoliosis_from_the_labels():
    straight = _centroids(61, scoliosis=False, cobb_deg=0.0)
    assert set(range(8, 25)) <= set(straight)
    # Thoracic kyphosis: the mid-thoracic bodies lie posterior (-y) of the T1-T12 chord;
    # lumbar lordosis: L3 lies anterior (+y) of the L1-L5 chord.
    assert _off_chord(straight, 8, 19, 14)[1] < -5.0
    assert _off_chord(straight, 20, 24, 22)[1] > 1.0
    assert abs(_off_chord(straight, 8, 24, 16)[0]) < 4.0  # no coronal curve
    curved = _centroids(61, cobb_deg=35.0)
    lateral = max(abs(_off_chord(curved, a, b, m)[0])
                  for a, b, m in [(8, 24, 15), (11, 24, 18), (14, 24, 20), (16, 24, 21)])
    assert lateral > 8.0  # a 35 deg curve displaces its apex sideways


def test_partial_volume_matches_a_finer_grid_averaged():
    """The analytic partial-volume ramp at 2 mm reproduces a 1 mm render averaged over
    2x2x2 blocks (the oracle), far closer than sampling voxel centres would."""
    opts = PhantomOptions(ct_noise=False, metal=False)
    coarse = spine_phantom((32, 32, 24), 2.0, seed=71, options=opts)
    fine = spine_phantom((64, 64, 48), 1.0, seed=71, options=opts)
    averaged = fine.hu.reshape(32, 2, 32, 2, 24, 2).mean(axis=(1, 3, 5))
    point = fine.hu[::2, ::2, ::2]
    edges = np.abs(averaged - point) > 50.0  # voxels cut by a boundary
    assert edges.sum() > 500
    err = np.abs(coarse.hu - averaged)
    assert err[edges].mean() < 0.3 * np.abs(point - averaged)[edges].mean()
    assert err.mean() < 25.0
