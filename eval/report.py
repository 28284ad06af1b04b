"""``report.html``: one self-contained page a clinician opens in any browser, offline.

    from x2ct.eval.report import write_report
    write_report("out/report.html", hu, spacing, xrays=xrays, drrs=drrs, std=std,
                 truth=gt_hu, metrics={"psnr": 31.2}, settings={"sampler": "ddim"})

The page holds (no file or network access: volumes and images are embedded):

- the metrics (when a ground truth was known) and the settings of the reconstruction;
- the input X-rays beside the DRRs of the reconstruction, on one grey scale;
- the CT in three planes (axial, coronal, sagittal), each with a slider (and the mouse
  wheel) to scroll through its slices, and window presets (full HU window, bone, soft
  tissue); rows for the ground truth and the |error| when known, and the uncertainty map
  (per-voxel standard deviation of the samples), with colour bars in HU.

Planes are drawn as radiologists read them (as ``x2ct.eval.figures.central_planes``): axial
with the patient's right on the viewer's left and anterior up, coronal and sagittal with
superior up, sagittal with anterior on the left; pixels keep their millimetre aspect.
Volumes are (X, Y, Z) arrays in RAS voxel order, HU. Volumes larger than ``max_size``
voxels along an axis are resampled down for the page (it says so).

The page's data sit in ``<script type="application/json" id="x2ct-data">`` (volumes as
base64 little-endian int16 HU or uint8 maps, C order (X, Y, Z)), so tools can read them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from x2ct.fileio import atomic_path

__all__ = ["PLANE_NAMES", "WINDOWS", "read_report_data", "write_report"]

PLANE_NAMES = ("axial", "coronal", "sagittal")
# Window presets (label, lower HU, upper HU); the first is replaced by the model's window.
WINDOWS = (("full", -1000.0, 2000.0), ("bone (L 400, W 1800)", -500.0, 1300.0),
           ("soft tissue (L 40, W 400)", -160.0, 240.0))
ERROR_MAX_HU = 500.0  # |error| colour scale, as the figures'
METRIC_LABELS = {"psnr": "PSNR, dB (over the HU window)", "ssim": "SSIM", "mae_hu": "MAE, HU",
                 "projection_error": "projection error (mean |DRR difference|)"}


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _volume(x) -> np.ndarray:
    v = _as_array(x).astype(np.float32)
    v = v.reshape(v.shape[-3:]) if v.ndim > 3 and math.prod(v.shape[:-3]) == 1 else v
    if v.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) volume, got shape {v.shape}")
    return v


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _lut(name: str) -> str:
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return _b64((cmap(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8))


def _png(image: np.ndarray, vmax: float) -> str:
    from PIL import Image

    g = np.clip(image / max(vmax, 1e-6) * 255.0, 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _shrink(vols: dict[str, np.ndarray], spacing, max_size: int):
    shape = next(iter(vols.values())).shape
    factor = max(shape) / max_size
    if factor <= 1:
        return vols, tuple(float(s) for s in spacing), None
    from scipy import ndimage

    new = tuple(max(1, round(n / factor)) for n in shape)
    zoom = [b / a for a, b in zip(shape, new)]
    out = {k: ndimage.zoom(v, zoom, order=1) for k, v in vols.items()}
    new_spacing = tuple(float(s) * a / b for s, a, b in zip(spacing, shape, new))
    return out, new_spacing, f"volumes resampled from {shape} to {new} voxels for this page"


def write_report(
    path: str | os.PathLike,
    hu,
    spacing: Sequence[float],
    xrays=None,
    drrs=None,
    view_names: Sequence[str] = ("AP", "lateral"),
    std=None,
    truth=None,
    metrics: Mapping[str, float] | None = None,
    settings: Mapping[str, object] | None = None,
    title: str = "x2ct reconstruction",
    window: Sequence[float] = (-1000.0, 2000.0),
    files: Sequence[str] = (),
    max_size: int = 192,
) -> Path:
    """Write the report page (module docstring) atomically; returns its path.

    Args:
        hu: the reconstruction (X, Y, Z), HU, RAS voxel order; ``spacing`` its voxel size.
        xrays, drrs: input X-rays and the reconstruction's DRRs (V, H, W), one scale.
        std: per-voxel standard deviation (HU), the uncertainty map.
        truth: the ground truth CT on the same grid (HU): adds its row and |error|.
        metrics, settings: shown as tables (numbers rounded for display).
        window: the model's HU window (the "full" preset).
        files: names of the other files written beside the page, listed on it.
    """
    vols = {"reconstruction": _volume(hu)}
    if truth is not None:
        vols["ground truth"] = _volume(truth)
    if std is not None:
        vols["uncertainty (std)"] = _volume(std)
    shapes = {v.shape for v in vols.values()}
    if len(shapes) != 1:
        raise ValueError(f"volumes on different grids: {sorted(shapes)}")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing}")
    vols, spacing, note = _shrink(vols, spacing, max_size)
    if truth is not None:  # after resampling, so the page's error is its own volumes'
        err = np.abs(vols["reconstruction"] - vols["ground truth"])
        vols = {**{k: v for k, v in vols.items() if k != "uncertainty (std)"},
                "|error|": err, **{k: v for k, v in vols.items() if k == "uncertainty (std)"}}

    lo, hi = float(window[0]), float(window[1])
    entries = []
    for name, v in vols.items():
        if name in ("reconstruction", "ground truth"):
            data = np.clip(np.rint(v), -32768, 32767).astype("<i2")
            entries.append({"name": name, "kind": "ct", "data": _b64(data)})
        else:
            vmax = ERROR_MAX_HU if name == "|error|" else max(float(v.max()), 1e-6)
            q = np.clip(np.rint(v / vmax * 255.0), 0, 255).astype(np.uint8)
            cmap = "magma" if name == "|error|" else "viridis"
            entries.append({"name": name, "kind": "map", "data": _b64(q), "vmax": vmax,
                            "lut": _lut(cmap)})
    windows = [[f"full ({lo:g} to {hi:g} HU)", lo, hi], *[list(w) for w in WINDOWS[1:]]]
    payload = {
        "shape": list(next(iter(vols.values())).shape),
        "spacing": list(spacing),
        "windows": windows,
        "volumes": entries,
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "settings": {k: v for k, v in (settings or {}).items()},
    }

    images = ""
    if xrays is not None:
        xr = _as_array(xrays).reshape(-1, *np.shape(xrays)[-2:]).astype(np.float32)
        dr = None if drrs is None else _as_array(drrs).reshape(-1, *np.shape(drrs)[-2:])
        vmax = max(float(xr.max()), float(dr.max()) if dr is not None else 0.0)
        cells = []
        for i, img in enumerate(xr):
            name = view_names[i] if i < len(view_names) else f"view {i}"
            cells.append(_figure(_png(img, vmax), f"input {name}"))
        for i, img in enumerate(dr if dr is not None else []):
            name = view_names[i] if i < len(view_names) else f"view {i}"
            cells.append(_figure(_png(np.asarray(img, np.float32), vmax),
                                 f"{name} DRR of the reconstruction"))
        images = ("<h2>X-rays</h2><p>The input X-rays and the DRRs (simulated radiographs) "
                  "of the reconstruction, on one grey scale.</p>"
                  f'<div class="row" id="xrays">{"".join(cells)}</div>')

    page = (_TEMPLATE
            .replace("{{TITLE}}", html.escape(title))
            .replace("{{TABLES}}", _tables(payload["metrics"], payload["settings"], files, note))
            .replace("{{IMAGES}}", images)
            .replace("{{DATA}}", json.dumps(payload).replace("</", "<\\/")))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{src}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def _tables(metrics: dict, settings: dict, files: Sequence[str], note: str | None) -> str:
    out = []
    if metrics:
        rows = "".join(f"<tr><th>{html.escape(METRIC_LABELS.get(k, k))}</th><td>{_fmt(v)}</td></tr>"
                       for k, v in metrics.items())
        out.append(f'<h2>Metrics against the ground truth</h2><table id="metrics">{rows}</table>')
    if settings:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in settings.items())
        out.append(f'<h2>Settings</h2><table id="settings">{rows}</table>')
    if files:
        out.append("<p>Files beside this page: "
                   + ", ".join(f"<code>{html.escape(f)}</code>" for f in files) + ".</p>")
    if note:
        out.append(f"<p><em>{html.escape(note)}.</em></p>")
    return "".join(out)


def read_report_data(path: str | os.PathLike) -> dict:
    """The data embedded in a report page: shape, spacing, windows, metrics, settings, and
    each volume decoded to a float32 (X, Y, Z) array in HU (maps: back to their HU scale,
    to within vmax / 510)."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="x2ct-data">')
    start = text.index(">", start) + 1
    payload = json.loads(text[start:text.index("</script>", start)].replace("<\\/", "</"))
    shape = tuple(payload["shape"])
    for v in payload["volumes"]:
        raw = base64.b64decode(v["data"])
        if v["kind"] == "ct":
            v["array"] = np.frombuffer(raw, "<i2").reshape(shape).astype(np.float32)
        else:
            q = np.frombuffer(raw, np.uint8).reshape(shape).astype(np.float32)
            v["array"] = q / 255.0 * v["vmax"]
    return payload


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #111; background: #fff; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: .5em .8em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; font-size: 90%; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; text-align: center; }
figure img { width: 220px; image-rendering: auto; background: #000; }
figcaption, .label { font-size: 85%; }
.viewer td, .viewer th { border: none; vertical-align: top; text-align: center; }
canvas.slice { background: #000; cursor: ns-resize; }
canvas.bar { width: 160px; height: 10px; }
input[type=range] { width: 220px; }
</style></head>
<body>
<h1>{{TITLE}}</h1>
<p class="warn">A synthetic CT reconstructed by a model from two radiographs: an estimate,
not a measurement. <strong>Not for diagnosis.</strong></p>
{{TABLES}}
{{IMAGES}}
<h2>Slices</h2>
<p>Scroll each plane with its slider or the mouse wheel over its images. Axial and coronal:
the patient's right on the left; sagittal: anterior on the left.
Window: <select id="window"></select></p>
<table class="viewer" id="viewer"></table>
<script type="application/json" id="x2ct-data">{{DATA}}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("x2ct-data").textContent);
const [X, Y, Z] = D.shape, [SX, SY, SZ] = D.spacing;
function bytes(b64) {
  const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}
for (const v of D.volumes) {
  const b = bytes(v.data);
  v.values = v.kind === "ct" ? new Int16Array(b.buffer) : b;
  if (v.lut) v.lutBytes = bytes(v.lut);
}
// plane geometry: [width, height, slices, mm per column, mm per row]; voxel of (row, col)
const PLANES = {
  axial: [X, Y, Z, SX, SY, (k, r, c) => ((X - 1 - c) * Y + (Y - 1 - r)) * Z + k],
  coronal: [X, Z, Y, SX, SZ, (k, r, c) => ((X - 1 - c) * Y + k) * Z + (Z - 1 - r)],
  sagittal: [Y, Z, X, SY, SZ, (k, r, c) => (k * Y + (Y - 1 - c)) * Z + (Z - 1 - r)],
};
const slice = {axial: Z >> 1, coronal: Y >> 1, sagittal: X >> 1};
const sel = document.getElementById("window");
D.windows.forEach((w, i) => sel.add(new Option(w[0], i)));
const extent = Math.max(X * SX, Y * SY, Z * SZ), scale = 240 / extent;

function draw(canvas, v, plane) {
  const [w, h, , dc, dr, index] = PLANES[plane], k = slice[plane];
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
  const [, lo, hi] = D.windows[sel.value];
  for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
    const x = v.values[index(k, r, c)], o = 4 * (r * w + c);
    if (v.kind === "ct") {
      const g = Math.min(255, Math.max(0, Math.round((x - lo) / (hi - lo) * 255)));
      img.data[o] = img.data[o + 1] = img.data[o + 2] = g;
    } else {
      img.data[o] = v.lutBytes[3 * x]; img.data[o + 1] = v.lutBytes[3 * x + 1];
      img.data[o + 2] = v.lutBytes[3 * x + 2];
    }
    img.data[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}
function colourBar(v) {
  const c = document.createElement("canvas");
  c.width = 256; c.height = 1; c.className = "bar";
  const ctx = c.getContext("2d"), img = ctx.createImageData(256, 1);
  for (let i = 0; i < 256; i++) {
    img.data.set([v.lutBytes[3 * i], v.lutBytes[3 * i + 1], v.lutBytes[3 * i + 2], 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  const div = document.createElement("div");
  div.className = "label";
  div.append("0 ", c, ` ${v.vmax.toFixed(0)} HU`);
  return div;
}
const viewer = document.getElementById("viewer"), canvases = [];
function redraw(plane) {
  for (const [c, v, p] of canvases) if (!plane || p === plane) draw(c, v, p);
  for (const p of Object.keys(PLANES)) {
    if (plane && p !== plane) continue;
    const mm = {axial: SZ, coronal: SY, sagittal: SX}[p] * (slice[p] - (PLANES[p][2] - 1) / 2);
    document.getElementById(`label-${p}`).textContent =
      `${p}: slice ${slice[p] + 1} of ${PLANES[p][2]} (${mm.toFixed(1)} mm)`;
  }
}
{
  const head = viewer.insertRow();
  head.insertCell().textContent = "";
  for (const p of Object.keys(PLANES)) {
    const cell = head.insertCell(), input = document.createElement("input");
    input.type = "range"; input.min = 0; input.max = PLANES[p][2] - 1; input.value = slice[p];
    input.id = `slice-${p}`;
    input.addEventListener("input", () => { slice[p] = +input.value; redraw(p); });
    const label = document.createElement("div");
    label.id = `label-${p}`; label.className = "label";
    cell.append(label, input);
  }
  for (const v of D.volumes) {
    const row = viewer.insertRow(), name = row.insertCell();
    name.textContent = v.name;
    if (v.kind === "map") name.append(colourBar(v));
    for (const p of Object.keys(PLANES)) {
      const [w, h, n, dc, dr] = PLANES[p], c = document.createElement("canvas");
      c.width = w; c.height = h; c.className = "slice";
      c.id = `${v.name.replace(/[^a-z]/g, "")}-${p}`;
      c.style.width = `${w * dc * scale}px`; c.style.height = `${h * dr * scale}px`;
      c.addEventListener("wheel", (e) => {
        e.preventDefault();
        slice[p] = Math.min(n - 1, Math.max(0, slice[p] + Math.sign(e.deltaY)));
        document.getElementById(`slice-${p}`).value = slice[p];
        redraw(p);
      });
      row.insertCell().append(c);
      canvases.push([c, v, p]);
    }
  }
}
sel.addEventListener("change", () => redraw());
redraw();
document.body.dataset.ready = "1";
</script>
</body></html>
"""
