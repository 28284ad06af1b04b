"""The end of train/latent.py: what the run is worth and which model to use next.

:func:`closing_comparison` scores, on the run's validation cases, the mean training CT and
the shipped model (``ldm-tiny``, found by name; left out, with the reason, when it was
made for another geometry or CT grid) beside the run's own final validation, and returns
the table (x2ct.eval.comparison) with a recommendation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from x2ct.data import unit_to_hu
from x2ct.diffusion import Reconstructor
from x2ct.eval.comparison import comparison_table, mean_ct, recommendation, score_cases
from x2ct.fileio import atomic_path
from x2ct.models import list_models

__all__ = ["SHIPPED_MODEL", "closing_comparison", "mean_training_ct"]

SHIPPED_MODEL = "ldm-tiny"
MEAN_CT_CASES = 8  # training CTs averaged: the mean's noise is far below the models' gaps


def mean_training_ct(dataset, window, path: Path, key: str, limit: int = MEAN_CT_CASES
                     ) -> tuple[torch.Tensor, int]:
    """(the mean of the first ``limit`` training CTs (items' "ct" in [-1, 1]) in HU
    (1, X, Y, Z), how many), cached at ``path`` under ``key`` (the run's data key)."""
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") == key:
            return load_file(str(path))["mean_ct"], int(meta["cases"])
    n = min(len(dataset), limit)
    mean = unit_to_hu(mean_ct(dataset[i]["ct"] for i in range(n)), window)
    with atomic_path(path) as tmp:
        save_file({"mean_ct": mean.contiguous()}, str(tmp), metadata={"key": key, "cases": str(n)})
    return mean, n


def _incompatible(recon: Reconstructor, reference: Reconstructor) -> str | None:
    if recon.geometry != reference.geometry:
        return "made for another X-ray geometry"
    if tuple(recon.shape) != tuple(reference.shape) or tuple(recon.spacing) != tuple(
        reference.spacing
    ):
        return f"made for CT {recon.shape} at {recon.spacing} mm"
    if recon.config.xray_scale != reference.config.xray_scale:
        return "made for other X-ray intensities"
    return None


def closing_comparison(
    run_scores: dict,
    run_recon: Reconstructor,
    val: Sequence[dict],
    mean_hu: tuple[torch.Tensor, int],
    validate: Callable[[Reconstructor], dict],
    run_model: Path,
    say: Callable[[str], None] = print,
) -> dict:
    """{"rows": {model: scores or a note}, "use": the model folder to use next, "why"}.

    ``mean_hu``: (the mean training CT, how many CTs it averages), mean_training_ct's.
    ``validate(recon)`` scores a Reconstructor on ``val`` as the run's validation did
    (the shipped model without projection-consistent sampling, like the run's)."""
    window = run_recon.autoencoder.config.hu_window
    truth = [unit_to_hu(v["ct"], window) for v in val]
    mean, n_mean = mean_hu
    baseline = f"mean training CT ({n_mean} cases)"
    rows: dict = {baseline: score_cases(
        [mean] * len(val), truth,
        [v.get("drr_field", v["drr"]) / run_recon.config.xray_scale for v in val],
        run_recon.geometry,
        run_recon.spacing, run_recon.config.xray_scale, window)}
    rows["this run"] = run_scores
    shipped_dir = list_models().get(SHIPPED_MODEL)
    shipped = f"shipped {SHIPPED_MODEL}"
    if shipped_dir is None:
        rows[shipped] = "not found (set X2CT_MODELS)"
    else:
        recon = Reconstructor.from_pretrained(shipped_dir, device=run_recon.device)
        why = _incompatible(recon, run_recon)
        if why is None:
            say(f"validating the shipped {SHIPPED_MODEL} on the same cases")
            rows[shipped] = validate(recon)
        else:
            rows[shipped] = f"not comparable: {why}"
    use, why = recommendation(rows, "this run", baseline, shipped, str(run_model),
                              None if shipped_dir is None else SHIPPED_MODEL)
    return {"rows": rows, "table": comparison_table(rows), "use": use, "why": why}
