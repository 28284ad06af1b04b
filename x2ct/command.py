"""``x2ct``: one command for every job (also ``python -m x2ct``); its jobs' bad-input errors
end as one line (x2ct.cli).

    x2ct phantom --n 2 --out phantoms/             # synthetic spine CTs (NIfTI + labels)
    x2ct drr CT.nii.gz --out xrays/                 # AP and lateral DRRs of a CT
    x2ct reconstruct --model ldm-tiny --ct CT.nii.gz --out recon/
    x2ct evaluate --model ldm-tiny --phantoms 20 --baseline mean-ct --out eval/
    x2ct benchmark reconstruct --model ldm-tiny
    x2ct autoencoder roundtrip CT.nii.gz --model ae-kl-tiny --out RECON.nii.gz
    x2ct train [latent|autoencoder] [--processes N] [--print] [ARGS ...]
    x2ct models                                     # the models known by name

Each job's own options are in ``x2ct JOB --help``; the dispatcher forwards everything after
the job's name to that job's ``main(argv)``. ``train`` builds the ``accelerate launch``
command of the training script (``--module x2ct.train.latent``, so it runs from any folder),
prints it, and runs it unless ``--print``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["JOBS", "main", "train_command"]


@dataclass(frozen=True)
class Job:
    module: str  # import path of the module holding main(argv)
    summary: str


JOBS: dict[str, Job] = {
    "phantom": Job("x2ct.data.phantom", "write synthetic spine CT phantoms (NIfTI + VerSe labels)"),
    "drr": Job("x2ct.projector.__main__", "render a CT's AP and lateral DRRs (PNG, NumPy, JSON)"),
    "reconstruct": Job("x2ct.eval.reconstruct",
                       "CT from two X-rays, or from a CT's simulated X-rays (scored)"),
    "evaluate": Job("x2ct.eval.evaluate",
                    "score models on held-out phantoms or CT folders against baselines"),
    "benchmark": Job("x2ct.eval.benchmark", "time and memory of projector, sampler, training"),
    "autoencoder": Job("x2ct.autoencoder.__main__",
                       "encode, decode, round-trip and evaluate the CT autoencoder"),
}
TRAIN_STAGES = {"latent": "x2ct.train.latent", "autoencoder": "x2ct.train.autoencoder"}
TRAIN_SUMMARY = "train a model through `accelerate launch` (latent diffusion by default)"
MODELS_SUMMARY = "list the models found by name (--model NAME)"


def _usage() -> str:
    width = max(map(len, [*JOBS, "train", "models"]))
    rows = [f"  {name:<{width}}  {job.summary}" for name, job in JOBS.items()]
    rows += [f"  {'train':<{width}}  {TRAIN_SUMMARY}", f"  {'models':<{width}}  {MODELS_SUMMARY}"]
    doc = __doc__.split("\n\n")[1]
    return (
        "usage: x2ct JOB [ARGS ...]    (x2ct JOB --help: the job's options and defaults)\n\n"
        "Two orthogonal X-rays in, a 3D spine CT out.\n\njobs:\n" + "\n".join(rows)
        + "\n\nexamples:\n" + doc + "\n"
    )


# --------------------------------------------------------------------------- train
def train_command(stage: str, args: Sequence[str], processes: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line of a training stage (as a user would type it).

    Without ``processes`` and without an Accelerate config file, the launcher's defaults
    are passed explicitly (one process, no mixed precision at launch level: the script's
    ``--mixed-precision`` decides), so it does not warn about them; with a config file the
    file decides. ``processes`` > 1 adds ``--multi_gpu`` (on a machine without a GPU the
    processes form one gloo group, train/run.py)."""
    launch = ["accelerate", "launch"]
    if processes is not None:
        launch += ["--num_processes", str(processes), "--num_machines", "1"]
        launch += ["--multi_gpu"] if processes > 1 else []
        launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    elif not _accelerate_config_exists():
        launch += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no"]
    return [*launch, "--module", TRAIN_STAGES[stage], *args]


def _accelerate_config_exists() -> bool:
    try:
        from accelerate.commands.config import default_config_file
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return False
    return os.path.isfile(default_config_file)


def _train(argv: list[str]) -> int:
    """``x2ct train [--print] [--processes N] [latent|autoencoder] [ARGS ...]``."""
    show_only, processes, i = False, None, 0
    while i < len(argv) and argv[i] in ("--print", "--processes", "-h", "--help"):
        if argv[i] in ("-h", "--help"):
            print(
                "usage: x2ct train [--print] [--processes N] [latent|autoencoder] [ARGS ...]\n\n"
                f"{TRAIN_SUMMARY}. ARGS go to the training script; its options and defaults:\n"
                "  x2ct train latent --help\n  x2ct train autoencoder --help\n\n"
                "  --print          print the accelerate launch command, do not run it\n"
                "  --processes N    processes (GPUs; on a CPU-only machine, gloo processes)\n\n"
                "The main job, `x2ct train`, trains the tiny latent diffusion model on spine\n"
                "phantoms for 5 minutes into runs/latent; rerunning it continues the run."
            )
            return 0
        if argv[i] == "--print":
            show_only, i = True, i + 1
            continue
        try:
            processes = int(argv[i + 1])
        except (IndexError, ValueError):
            print("x2ct train: error: --processes takes a number of processes", file=sys.stderr)
            return 2
        if processes < 1:
            print("x2ct train: error: --processes must be >= 1", file=sys.stderr)
            return 2
        i += 2
    stage = "latent"
    if i < len(argv) and argv[i] in TRAIN_STAGES:
        stage, i = argv[i], i + 1
    rest = argv[i:]
    if "-h" in rest or "--help" in rest:  # the script's own help, without a launcher
        module = importlib.import_module(TRAIN_STAGES[stage])
        sys.argv[0] = f"x2ct train {stage}"
        return _run(module.main, rest)
    command = train_command(stage, rest, processes)
    print(shlex.join(command), flush=True)
    if show_only:
        return 0
    # The launcher of this interpreter (the one x2ct is installed in), whatever PATH says.
    return subprocess.call([sys.executable, "-m", "accelerate.commands.launch", *command[2:]])


def _models(argv: list[str]) -> int:
    from x2ct.models import MODELS_ENV, describe_model, list_models, model_kind, model_search_path

    if argv:
        asked = argv in (["-h"], ["--help"])
        print(f"usage: x2ct models\n\n{MODELS_SUMMARY}: name, kind, title; searched in "
              f"${MODELS_ENV}, then the checkout's models/",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    models = list_models()
    if not models:
        print(f"no models found by name; set {MODELS_ENV} to a folder of models "
              "(a checkout's models/)")
        return 0
    width = max(map(len, models))
    for name, folder in models.items():
        print(f"{name:<{width}}  {model_kind(folder):<11}  {describe_model(folder)}")
    print("searched: " + ", ".join(str(d) for d in model_search_path()))
    return 0


# --------------------------------------------------------------------------- dispatch
def _exit_code(result) -> int:
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from x2ct import __version__

        print(f"x2ct {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "train":
        return _train(rest)
    if name == "models":
        return _models(rest)
    if name not in JOBS:
        close = difflib.get_close_matches(name, [*JOBS, "train", "models"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"x2ct: error: unknown job {name!r}{hint}; `x2ct --help` lists the jobs",
              file=sys.stderr)
        return 2
    module = importlib.import_module(JOBS[name].module)
    sys.argv[0] = f"x2ct {name}"  # argparse's prog where a job does not set its own
    return _run(module.main, rest)


def _run(job_main, argv: list[str]) -> int:
    """A job's exit code; its bad-input errors as one line and status 2 (x2ct.cli)."""
    from x2ct.cli import EXIT_BAD_INPUT, input_error, one_line

    try:
        return _exit_code(job_main(argv))
    except Exception as e:
        cause = input_error(e)
        if cause is None or os.environ.get("X2CT_DEBUG"):
            raise
        print(f"error: {one_line(cause)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
