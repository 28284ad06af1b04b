"""The closing comparison of a training run: its validation scores beside the mean CT and
the shipped model on the same validation cases, and which model to use next.

    rows = {"mean training CT": score_cases(mean, cases, ...), "this run": ..., "ldm-tiny": ...}
    print(comparison_table(rows))
    print(recommendation(rows, run="this run", shipped="ldm-tiny", run_model="runs/latent/model"))

The mean CT (the voxel-wise mean of training CTs, the same for every case) is the floor a
model must clear to show it reads the X-rays at all (a model below it has learned where
anatomy usually is, not this patient's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from x2ct.eval.metrics import ct_metrics, projection_error

__all__ = ["COLUMNS", "comparison_table", "mean_ct", "recommendation", "score_cases"]

COLUMNS = (("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"),
           ("mae_hu", "MAE HU", "{:.1f}"), ("projection_error", "proj. error", "{:.4f}"))


def mean_ct(cts: Iterable[torch.Tensor]) -> torch.Tensor:
    """The voxel-wise mean (float64 sum) of CTs (1, X, Y, Z), in their own units."""
    total, n = None, 0
    for ct in cts:
        total = ct.double() if total is None else total + ct.double()
        n += 1
    if n == 0:
        raise ValueError("no CT to average")
    return (total / n).float()


def score_cases(pred_hu: Sequence[torch.Tensor], truth_hu: Sequence[torch.Tensor],
                xrays: Sequence[torch.Tensor], geometry, spacing, xray_scale: float,
                window: Sequence[float]) -> dict[str, float]:
    """Mean PSNR, SSIM (over the HU window), MAE (HU) and projection error of predictions
    (1, X, Y, Z) against the truth; ``xrays`` (V, H, W) are what each prediction's DRRs
    along ``geometry`` are compared with (the truth field's own DRRs, normalised, when the
    input X-rays cross the whole body)."""
    rows = []
    for pred, truth, xr in zip(pred_hu, truth_hu, xrays):
        row = ct_metrics(pred, truth, window)
        row["projection_error"], _ = projection_error(pred, xr, geometry, spacing, xray_scale,
                                                      window)
        rows.append(row)
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def comparison_table(rows: Mapping[str, Mapping[str, float] | str]) -> str:
    """A markdown table, one row per model; a row given as a string is a note (e.g. why a
    model could not be compared)."""
    head = "| model | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(COLUMNS)]
    for name, scores in rows.items():
        if isinstance(scores, str):
            lines.append(f"| {name} | {scores} |" + " |" * (len(COLUMNS) - 1))
        else:
            cells = [fmt.format(scores[k]) if k in scores else "" for k, _, fmt in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommendation(rows: Mapping[str, Mapping[str, float] | str], run: str, baseline: str,
                   shipped: str | None, run_model: str, shipped_model: str | None
                   ) -> tuple[str, str]:
    """(which model to use next, the sentence that says why), by validation PSNR: the
    rows ``run``, ``baseline`` (the mean CT) and ``shipped`` (scores, or a note when it
    could not be compared) of :func:`comparison_table`'s input; ``run_model`` and
    ``shipped_model`` are what to pass as ``--model``."""
    ours, floor = rows[run]["psnr"], rows[baseline]["psnr"]
    other = rows.get(shipped) if shipped is not None else None
    gap = f"{ours - floor:.2f} dB above" if ours > floor else f"{floor - ours:.2f} dB below"
    verdict = f"Validation PSNR {ours:.2f} dB, {gap} the mean training CT ({floor:.2f} dB)"
    if ours <= floor:
        verdict += (": the model does not yet read the X-rays better than guessing the "
                    "average anatomy")
    if isinstance(other, Mapping) and other["psnr"] > ours:
        return shipped_model, (
            f"{verdict}; the shipped {shipped_model} scores {other['psnr']:.2f} dB on the same "
            f"cases. Use --model {shipped_model} until this run beats it: rerun the same "
            "command to continue training (each rerun adds --max-minutes), or raise "
            "--max-minutes.")
    if ours <= floor:
        return run_model, f"{verdict}. Train longer (rerun the same command) before using it."
    beats = (f", and above the shipped {shipped_model} ({other['psnr']:.2f} dB)"
             if isinstance(other, Mapping) else "")
    return run_model, f"{verdict}{beats}. Use this run's model: --model {run_model}."
