"""report.html (eval/report.py): its content read back in Python, and its rendering in a
real headless Chromium (skipped, with the reason, where no Chromium or Playwright is)."""

import base64
import io
import os
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from x2ct.eval.figures import central_planes
from x2ct.eval.report import read_report_data, write_report

SHAPE = (20, 24, 28)
SPACING = (2.0, 1.5, 1.0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 300, SHAPE).astype(np.float32)
    hu[3:8, 4:10, 2:20] = 1500.0  # a block in the patient's right-posterior-inferior corner
    truth = hu + rng.normal(0, 20, SHAPE).astype(np.float32)
    std = np.abs(rng.normal(0, 30, SHAPE)).astype(np.float32)
    xrays, drrs = rng.random((2, 32, 32)), rng.random((2, 32, 32)) * 0.5
    path = write_report(tmp_path_factory.mktemp("report") / "report.html", hu, SPACING,
                        xrays=xrays, drrs=drrs, std=std, truth=truth,
                        metrics={"psnr": 30.1234, "ssim": 0.91}, settings={"sampler": "ddim"},
                        files=["ct.nii.gz"])
    return {"path": path, "hu": hu, "truth": truth, "std": std, "xrays": xrays}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_and_holds_the_data(report):
    parser = _Tags()
    parser.feed(report["path"].read_text())
    text = " ".join(parser.text)
    assert not [t for t, a in parser.tags if t == "link" or (t == "script" and "src" in a)]
    images = [a for t, a in parser.tags if t == "img"]
    assert len(images) == 4 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    first = Image.open(io.BytesIO(base64.b64decode(images[0]["src"].split(",", 1)[1])))
    assert first.size == (32, 32)
    # the brightest input pixel is white on the shared scale (the X-rays' max is the max)
    assert np.asarray(first).max() == 255
    assert "30.12" in text and "0.91" in text and "Not for diagnosis" in text
    data = read_report_data(report["path"])
    assert tuple(data["shape"]) == SHAPE and tuple(data["spacing"]) == SPACING
    vols = {v["name"]: v for v in data["volumes"]}
    assert list(vols) == ["reconstruction", "ground truth", "|error|", "uncertainty (std)"]
    np.testing.assert_array_equal(vols["reconstruction"]["array"], np.rint(report["hu"]))
    np.testing.assert_array_equal(vols["ground truth"]["array"], np.rint(report["truth"]))
    std = vols["uncertainty (std)"]
    np.testing.assert_allclose(std["array"], report["std"], atol=std["vmax"] / 510 + 1e-4)
    err = np.abs(report["hu"] - report["truth"])
    np.testing.assert_allclose(vols["|error|"]["array"], np.minimum(err, 500), atol=500 / 510)


def test_large_volumes_are_resampled_for_the_page(tmp_path):
    hu = np.zeros((64, 40, 32), np.float32)
    path = write_report(tmp_path / "r.html", hu, (1.0, 1.0, 1.0), max_size=32)
    data = read_report_data(path)
    assert tuple(data["shape"]) == (32, 20, 16) and tuple(data["spacing"]) == (2.0, 2.0, 2.0)
    assert "resampled" in path.read_text()
    with pytest.raises(ValueError, match="grids"):
        write_report(tmp_path / "x.html", hu, (1, 1, 1), std=np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------- in Chromium
def _chromium() -> str | None:
    found = os.environ.get("X2CT_CHROMIUM")
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = found or shutil.which(name)
    return found


@pytest.fixture(scope="module")
def page(report):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; or X2CT_CHROMIUM)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report["path"].as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.errors = errors
        yield page
        browser.close()


def _canvas(page, canvas_id: str) -> np.ndarray:
    w, h, flat = page.evaluate(
        """id => { const c = document.getElementById(id);
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   return [c.width, c.height, Array.from(d)]; }""", canvas_id)
    return np.asarray(flat, np.uint8).reshape(h, w, 4)


def _grey(hu_plane: np.ndarray, lo=-1000.0, hi=2000.0) -> np.ndarray:
    return np.clip(np.rint((np.rint(hu_plane) - lo) / (hi - lo) * 255), 0, 255)


def test_chromium_draws_the_planes_as_the_figures_do(page, report):
    assert page.errors == []
    hu = report["hu"]
    for p, name in enumerate(("axial", "coronal", "sagittal")):
        shown = _canvas(page, f"reconstruction-{name}")
        assert (shown[..., 0] == shown[..., 1]).all() and (shown[..., 3] == 255).all()
        # the central slice, in the orientation of x2ct.eval.figures.central_planes
        expected = _grey(central_planes(hu)[p])
        assert np.abs(shown[..., 0].astype(float) - expected).max() <= 1, name
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"))
    assert shot.std() > 20  # not a blank page
    # the uncertainty row is colour-mapped (not grey) and has its colour bar in HU
    std = _canvas(page, "uncertaintystd-axial")
    assert (std[..., 0] != std[..., 2]).any()
    assert "HU" in page.inner_text("#viewer")


def test_chromium_slider_scrolls_the_slices(page, report):
    hu = report["hu"]
    before = page.screenshot(full_page=True)
    page.eval_on_selector("#slice-axial",
                          "el => { el.value = 3; el.dispatchEvent(new Event('input')); }")
    shown = _canvas(page, "reconstruction-axial")[..., 0].astype(float)
    # axial slice z = 3: rows anterior -> posterior, columns the patient's right -> left
    expected = _grey(hu[::-1, ::-1, 3].T)
    assert np.abs(shown - expected).max() <= 1
    assert page.screenshot(full_page=True) != before
    assert "slice 4 of 28" in page.inner_text("#label-axial")
    page.select_option("#window", "1")  # bone window: other grey levels
    bone = _canvas(page, "reconstruction-axial")[..., 0].astype(float)
    assert np.abs(bone - _grey(hu[::-1, ::-1, 3].T, -500.0, 1300.0)).max() <= 1
