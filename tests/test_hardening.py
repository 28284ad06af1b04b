"""Hostile and broken inputs (issue 13): no code from a checkpoint, one clear line for every
bad input, no mixed or lost outputs.

Every bad input goes to the library call and to the command line; the command line must
print one line naming the file and the problem (no traceback), exit with 2 and write
nothing into --out.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import tracemalloc
import zlib
from contextlib import nullcontext
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from latent_helpers import one_thread, tiny_autoencoder, train_args  # noqa: F401

from x2ct.cli import input_error, run_main
from x2ct.data import load_ct, load_xray
from x2ct.fileio import prepare_out_dir
from x2ct.train.checkpoint import (
    OldCheckpointError,
    find_latest_checkpoint,
    resume_latest,
    save_checkpoint,
)
from x2ct.train.ema import EMA
from x2ct.train.run import StepCounter


# --------------------------------------------------------------------------- 1. no pickle
class _Payload:
    """Unpickling this creates ``marker``: what a planted checkpoint file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path) -> Path:
    torch.save({"step": _Payload(marker)}, path)
    return path


def test_planted_pickle_is_live(tmp_path):
    """The oracle for the tests below: the payload runs when unpickled."""
    path = plant_pickle(tmp_path / "x.pkl", tmp_path / "marker")
    torch.load(path, weights_only=False)
    assert (tmp_path / "marker").exists()


def _tiny_state():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    ema, counter = EMA(model, 0.9), StepCounter()
    model, opt = accelerator.prepare(model, opt)
    state = dict(model=model, optimizer=opt, scheduler=sched, ema=ema, step=counter)
    return accelerator, state


@pytest.mark.parametrize(
    "planted",
    [
        "custom_checkpoint_2.pkl",  # what Accelerate's load_state unpickled
        "random_states_0.pkl",
        "optimizer.bin",
        "training_state.safetensors",  # a pickle under the name of a real state file
        "rng_state_0.safetensors",
    ],
)
def test_checkpoint_never_unpickles_a_planted_file(tmp_path, planted):
    accelerator, state = _tiny_state()
    for step in (1, 2):
        state["step"].step = step
        save_checkpoint(accelerator, tmp_path / "ckpt", step, state)
    latest = find_latest_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "marker"
    plant_pickle(latest / planted, marker)
    state["step"].step = 0
    corrupt = planted.endswith("safetensors")
    with pytest.warns(UserWarning, match="skipping unreadable") if corrupt else nullcontext():
        resumed = resume_latest(accelerator, tmp_path / "ckpt", state)
    assert not marker.exists()
    # a planted real state file makes the checkpoint unreadable: the one before is used
    expected = 1 if corrupt else 2
    assert resumed.name == f"step_000000{expected}" and state["step"].step == expected


def test_checkpoint_holds_no_pickle(tmp_path):
    accelerator, state = _tiny_state()
    folder = save_checkpoint(accelerator, tmp_path, 1, state)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["checkpoint.json", "rng_state_0.safetensors", "training_state.safetensors"]
    from safetensors import safe_open

    for p in folder.iterdir():  # each file is what its name says, none a pickle or a zip
        if p.suffix == ".json":
            json.loads(p.read_text())
        else:
            with safe_open(str(p), "pt") as f:
                assert list(f.keys())
        assert not p.read_bytes().startswith(b"PK\x03\x04")


def test_old_pickled_checkpoint_is_refused_unread(tmp_path):
    accelerator, state = _tiny_state()
    old = tmp_path / "step_0000005"
    old.mkdir()
    marker = tmp_path / "marker"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        plant_pickle(old / name, marker)
    with pytest.raises(OldCheckpointError, match="earlier x2ct.*new --run-dir"):
        resume_latest(accelerator, tmp_path, state)
    assert not marker.exists()


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    return tiny_autoencoder().save_pretrained(tmp_path_factory.mktemp("ae") / "ae")


AE_TINY = ["--config", "kl-tiny", "--n-train", "2", "--n-val", "0", "--shape", "16", "16",
           "16", "--crop", "0", "--batch-size", "1", "--scaling-volumes", "1",
           "--no-tensorboard", "--save-every", "1"]


@pytest.mark.parametrize("script", ["autoencoder", "latent"])
def test_rerun_after_planting_runs_no_code(tmp_path, script, autoencoder_dir):
    """Issue 13.1: a torch.save'd object written over custom_checkpoint_2.pkl of the newest
    checkpoint ran os.system when the same training command was rerun."""
    run = tmp_path / "run"
    if script == "autoencoder":
        from x2ct.train.autoencoder import main

        args = AE_TINY + ["--run-dir", str(run), "--max-steps", "2"]
    else:
        from x2ct.train.latent import main

        args = train_args(run, autoencoder_dir, "--max-steps", "2", "--save-every", "1",
                          "--n-val", "0")
    main(args + ["--stop-after-steps", "1"])
    latest = find_latest_checkpoint(run / "checkpoints")
    assert latest.name == "step_0000001"
    marker = tmp_path / "marker"
    plant_pickle(latest / "custom_checkpoint_2.pkl", marker)
    main(args)
    assert not marker.exists()
    assert find_latest_checkpoint(run / "checkpoints").name == "step_0000002"


# --------------------------------------------------------------------------- bad files
def _nifti(path: Path, data, zooms=(2.0, 2.0, 2.0), unit="mm", pixdim=None) -> Path:
    img = nib.Nifti1Image(np.asarray(data), np.diag([*zooms, 1.0]))
    img.header.set_xyzt_units(unit, "sec")
    nib.save(img, path)
    if pixdim is not None:  # as another writer might store them: nibabel repairs zero or
        # negative pixdim on save, so the header's bytes are patched (pixdim at byte 76)
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[80:92] = struct.pack("<3f", *pixdim)
        path.write_bytes(gzip.compress(bytes(raw)))
    return path


def _ct() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 200, (16, 16, 16)).astype(np.float32)


def _spine_ct(path: Path) -> Path:
    """A small CT with a vertebral column (reconstruct.py --ct locates the spine first)."""
    from x2ct.data import save_ct, spine_phantom

    ph = spine_phantom((20, 20, 24), (6.0, 6.0, 6.0), seed=7)
    return save_ct(path, ph.hu, spacing=ph.spacing)


def _lying_header(path: Path, shape) -> Path:
    """A tiny .nii.gz whose header declares ``shape`` (int16) and holds no voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0,) * len(shape))
    header.set_xyzt_units("mm", "sec")
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path) -> Path:
    _nifti(path, _ct())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG signature and IHDR declaring width x height 8-bit grey pixels, then IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


# name -> (writer(tmp_path) -> path, the message's problem)
BAD_CTS = {
    "empty": (lambda d: _write(d / "ct.nii.gz", b""), "empty"),
    "truncated": (lambda d: _truncated(d / "ct.nii.gz"), "truncated"),
    "2d": (lambda d: _nifti(d / "ct.nii.gz", _ct()[0]), "3-D"),
    "4d": (lambda d: _nifti(d / "ct.nii.gz", np.stack([_ct()] * 2, -1)), "3-D"),
    "nan": (lambda d: _nifti(d / "ct.nii.gz", np.where(_ct() > 300, np.nan, _ct())),
            "non-finite"),
    "zero spacing": (lambda d: _nifti(d / "ct.nii.gz", _ct(), pixdim=(2.0, 0.0, 2.0)),
                     "positive"),
    "negative spacing": (lambda d: _nifti(d / "ct.nii.gz", _ct(), pixdim=(-2.0, 2.0, 2.0)),
                         "positive"),
    "not nifti": (lambda d: _write(d / "ct.nii.gz", b"hello"), "NIfTI"),
    "wrong suffix": (lambda d: _write(d / "ct.png", b"x"), "NIfTI"),
    "metres out of range": (lambda d: _nifti(d / "ct.nii.gz", _ct(), (2.0,) * 3, "meter"),
                            "outside"),
    "nanometre voxels": (lambda d: _nifti(d / "ct.nii.gz", _ct(), (1e-6,) * 3), "outside"),
    "huge voxels": (lambda d: _nifti(d / "ct.nii.gz", _ct(), (50.0,) * 3), "outside"),
    "header lies 1200^3": (lambda d: _lying_header(d / "ct.nii.gz", (1200,) * 3), "voxels"),
    "header lies 300^3": (lambda d: _lying_header(d / "ct.nii.gz", (300,) * 3), "cannot hold"),
    "header lies 30000^3": (lambda d: _lying_header(d / "ct.nii.gz", (30000,) * 3), "voxels"),
    "uncompressed lie": (lambda d: _lying_header(d / "ct.nii", (64,) * 3), "cannot hold"),
}

BAD_XRAYS = {
    "empty png": (lambda d: _write(d / "ap.png", b""), "empty"),
    "garbage png": (lambda d: _write(d / "ap.png", b"\x89PNG garbage"), "cannot read"),
    "decompression bomb": (lambda d: _png_header(d / "ap.png", 20000, 20000), "pixels"),
    "big png": (lambda d: _png_header(d / "ap.png", 9000, 9000), "pixels"),
    "3d npy": (lambda d: np.save(d / "ap.npy", np.zeros((3, 4, 4))) or d / "ap.npy",
               "dimensions"),
    "nan npy": (lambda d: np.save(d / "ap.npy", np.full((4, 4), np.nan)) or d / "ap.npy",
                "non-finite"),
    "object npy": (lambda d: np.save(d / "ap.npy", np.array([{}], dtype=object),
                                     allow_pickle=True) or d / "ap.npy", "numeric"),
    "huge npy header": (lambda d: _npy_header(d / "ap.npy", (100000, 100000)), "pixels"),
    "truncated npy": (lambda d: _npy_header(d / "ap.npy", (64, 64)), "NumPy"),
}


def _npy_header(path: Path, shape) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return path


@pytest.mark.parametrize("name", sorted(BAD_CTS))
def test_load_ct_names_the_file_and_the_problem(tmp_path, name):
    write, problem = BAD_CTS[name]
    path = write(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises((ValueError, OSError)) as info:
            load_ct(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and problem in str(info.value)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB to refuse {name}"


@pytest.mark.parametrize("name", sorted(BAD_XRAYS))
def test_load_xray_names_the_file_and_the_problem(tmp_path, name):
    write, problem = BAD_XRAYS[name]
    path = write(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            load_xray(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and problem in str(info.value)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB to refuse {name}"


def test_load_ct_honours_the_spatial_unit(tmp_path):
    ct = _ct()
    metres = load_ct(_nifti(tmp_path / "m.nii.gz", ct, (0.0007, 0.0008, 0.0009), "meter"))
    assert metres.spacing == pytest.approx((0.7, 0.8, 0.9), rel=1e-5)
    assert np.linalg.norm(metres.affine[:3, :3], axis=0) == pytest.approx((0.7, 0.8, 0.9),
                                                                          rel=1e-5)
    microns = load_ct(_nifti(tmp_path / "u.nii.gz", ct, (700.0, 700.0, 1500.0), "micron"))
    assert microns.spacing == pytest.approx((0.7, 0.7, 1.5), rel=1e-5)
    mm = load_ct(_nifti(tmp_path / "mm.nii.gz", ct, (0.7, 0.7, 1.5), "mm"))
    np.testing.assert_array_equal(mm.hu, microns.hu)
    np.testing.assert_allclose(mm.affine, microns.affine, rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="no spatial unit.*mm"):
        unknown = load_ct(_nifti(tmp_path / "x.nii.gz", ct, (0.7, 0.7, 1.5), "unknown"))
    assert unknown.spacing == pytest.approx(mm.spacing)


# --------------------------------------------------------------------------- command lines
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from latent_helpers import tiny_reconstructor

    return tiny_reconstructor().save_pretrained(tmp_path_factory.mktemp("m") / "model")


def cli(main, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of a command line run as its __main__ does."""
    with pytest.raises(SystemExit) as info:
        run_main(main, argv)
    return info.value.code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for e in expected:
        assert e in lines[0], lines[0]


@pytest.mark.parametrize("name", sorted(BAD_CTS))
def test_reconstruct_ct_bad_input_is_one_line(tmp_path, name, model_dir, capsys):
    from x2ct.eval.reconstruct import main

    path = BAD_CTS[name][0](tmp_path)
    out = tmp_path / "out"
    code, err = cli(main, ["--model", str(model_dir), "--ct", str(path), "--out", str(out)],
                    capsys)
    assert_one_line(code, err, str(path), BAD_CTS[name][1])
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(BAD_XRAYS))
def test_reconstruct_xray_bad_input_is_one_line(tmp_path, name, model_dir, capsys):
    from x2ct.data import save_xray_png
    from x2ct.eval.reconstruct import main

    path = BAD_XRAYS[name][0](tmp_path)
    good = save_xray_png(tmp_path / "lat.png", np.zeros((16, 16)))
    out = tmp_path / "out"
    code, err = cli(main, ["--model", str(model_dir), "--ap", str(path), "--lateral",
                           str(good), "--out", str(out)], capsys)
    assert_one_line(code, err, str(path), BAD_XRAYS[name][1])
    assert not out.exists()


def test_projector_command_line_bad_ct_is_one_line(tmp_path, capsys):
    from x2ct.projector.__main__ import main

    path = _truncated(tmp_path / "ct.nii.gz")
    code, err = cli(main, [str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_line(code, err, str(path), "truncated")


def test_command_line_as_a_process(tmp_path, model_dir):
    """The real __main__: one line on stderr, status 2, nothing written."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    path = _nifti(tmp_path / "ct.nii.gz", _ct(), pixdim=(0.0, 2.0, 2.0))
    proc = subprocess.run(
        [sys.executable, str(repo / "eval" / "reconstruct.py"), "--model", str(model_dir),
         "--ct", str(path), "--out", str(tmp_path / "out")],
        cwd=repo, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert_one_line(proc.returncode, proc.stderr, str(path), "positive")
    assert not (tmp_path / "out").exists()


def test_input_error_unwraps_monai_transform_errors(tmp_path):
    from x2ct.data import preprocess

    path = _truncated(tmp_path / "ct.nii.gz")
    with pytest.raises(RuntimeError, match="applying transform") as info:
        preprocess((2.0,) * 3, (16,) * 3, normalise=False)({"image": str(path), "label": None})
    cause = input_error(info.value)
    assert isinstance(cause, ValueError) and str(path) in str(cause)
    assert input_error(RuntimeError("a bug")) is None


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--guidance", "nan"], "--guidance"),
        (["--steps", "0"], "--steps"),
        (["--num-samples", "0"], "--num-samples"),
    ],
)
def test_reconstruct_refuses_bad_numbers(tmp_path, model_dir, capsys, flags, expected):
    from x2ct.eval.reconstruct import main

    ct = _spine_ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    code, err = cli(main, ["--model", str(model_dir), "--ct", str(ct), "--out", str(out),
                           *flags], capsys)
    assert code == 2 and expected in err
    assert not out.exists()


# --------------------------------------------------------------------------- 5. --out
def test_out_folder_never_mixes_runs(tmp_path, model_dir, capsys):
    from x2ct.eval.reconstruct import main

    ct = _spine_ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    base = ["--model", str(model_dir), "--ct", str(ct), "--out", str(out), "--steps", "2"]
    main(base + ["--num-samples", "2"])
    capsys.readouterr()  # the first run's progress bars
    (out / "mine.txt").write_text("the user's")
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"ct.nii.gz", "std.nii.gz", "metrics.json"} <= set(first)
    code, err = cli(main, base + ["--seed", "1"], capsys)
    assert_one_line(code, err, str(out), "--overwrite", "std.nii.gz")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # untouched
    main(base + ["--seed", "1", "--overwrite"])
    now = sorted(p.name for p in out.iterdir())
    assert "std.nii.gz" not in now and "mine.txt" in now  # the earlier run's outputs gone
    assert (out / "ct.nii.gz").read_bytes() != first["ct.nii.gz"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("where", ["a file", "/proc", "read-only"])
def test_unwritable_out_fails_before_the_work(tmp_path, model_dir, capsys, monkeypatch, where):
    from x2ct.diffusion import Reconstructor
    from x2ct.eval.reconstruct import main

    def no_work(*a, **k):
        raise AssertionError("reconstructed before checking --out")

    monkeypatch.setattr(Reconstructor, "__call__", no_work)
    ct = _spine_ct(tmp_path / "ct.nii.gz")
    if where == "a file":
        out = tmp_path / "out"
        out.write_text("keep me")
    elif where == "/proc":
        out = Path("/proc/x2ct-out")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        out = ro / "out"
    code, err = cli(main, ["--model", str(model_dir), "--ct", str(ct), "--out", str(out)],
                    capsys)
    assert_one_line(code, err, str(out))
    if where == "a file":
        assert out.read_text() == "keep me"


def test_prepare_out_dir_checks_free_space_and_clears_temporaries(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".ct.nii.gz.0123abcd.tmp.nii.gz").write_bytes(b"half")  # a killed write
    (out / ".other.tmp").write_bytes(b"not ours")
    prepare_out_dir(out, ["ct.nii.gz"])
    assert sorted(p.name for p in out.iterdir()) == [".other.tmp"]
    with pytest.raises(ValueError, match="MiB free"):
        prepare_out_dir(out, ["ct.nii.gz"], need_bytes=2**62)


# --------------------------------------------------------------------------- 6. lock
_HOLD = """
import sys, time
from pathlib import Path
from x2ct.train.run import RunDir, lock_run_dir
lock_run_dir(RunDir(Path(sys.argv[1])))
print("locked", flush=True)
time.sleep(600)
"""


def test_second_trainer_in_one_run_folder_is_refused(tmp_path):
    import signal
    import subprocess
    import sys

    from x2ct.train.autoencoder import main
    from x2ct.train.run import RunLockedError

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"PID {holder.pid} "):
            main(AE_TINY + ["--run-dir", str(run), "--max-steps", "1"])
        assert not (run / "checkpoints").exists() and not (run / "args.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel releases the lock
        holder.wait()
    main(AE_TINY + ["--run-dir", str(run), "--max-steps", "1"])
    assert find_latest_checkpoint(run / "checkpoints").name == "step_0000001"


def test_killed_runs_leave_no_temporaries(tmp_path):
    from x2ct.train.autoencoder import main

    run = tmp_path / "run"
    args = AE_TINY + ["--run-dir", str(run), "--max-steps", "2"]
    main(args + ["--stop-after-steps", "1"])
    # what kill -9 leaves mid-write: a checkpoint folder and hidden atomic temporaries
    (run / "checkpoints" / "step_0000002.tmp").mkdir()
    (run / ".args.json.5f3a.tmp.json").write_text("{")
    (run / ".model.tmp-abc").mkdir()
    main(args)
    left = [p for p in run.rglob("*") if ".tmp" in p.name]
    assert left == []


# --------------------------------------------------------------------------- 7. corrupt state
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    accelerator, state = _tiny_state()
    for step in (1, 2):
        state["step"].step = step
        save_checkpoint(accelerator, tmp_path, step, state)
    _truncate(tmp_path / "step_0000002" / "training_state.safetensors")
    state["step"].step = 0
    with pytest.warns(UserWarning, match="step_0000002.*truncated"):
        assert resume_latest(accelerator, tmp_path, state).name == "step_0000001"
    assert state["step"].step == 1
    _truncate(tmp_path / "step_0000001" / "rng_state_0.safetensors", 0.9)
    with pytest.raises(ValueError, match="no readable checkpoint.*delete"):
        with pytest.warns(UserWarning):
            resume_latest(accelerator, tmp_path, state)


@pytest.mark.parametrize("damage", ["truncated", "nan", "garbage"])
def test_latent_cache_is_rebuilt_when_damaged(tmp_path, damage):
    from x2ct.train.cache import load_latent_cache

    accelerator = Accelerator(cpu=True)
    path = tmp_path / "latent_cache.safetensors"
    calls = []

    def build(cases):
        calls.append(1)
        return {"latents": torch.arange(64.0).reshape(2, 2, 2, 2, 4)[cases.start : cases.stop]}

    first = {k: v.clone() for k, v in load_latent_cache(accelerator, path, "k", 2, build).items()}
    assert len(calls) == 1
    torch.testing.assert_close(load_latent_cache(accelerator, path, "k", 2, build), first)
    assert len(calls) == 1  # intact: read back
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) - 40]))
    elif damage == "nan":  # the header intact, one value made NaN
        data[-4:] = np.array([np.nan], dtype="<f4").tobytes()
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning, match="rebuilding the latent cache"):
        again = load_latent_cache(accelerator, path, "k", 2, build)
    assert len(calls) == 2
    torch.testing.assert_close(again, first)


def test_latent_cache_is_built_in_parts_and_a_killed_build_resumes(tmp_path):
    """The cache is built in parts of chunk_size cases joined in case order. A build killed
    in its third part resumes from the two parts it wrote (only the third is built again)
    and equals the data; the parts folder is then removed. Parts written with another key
    are built again, and a part of the wrong length is refused, naming the cache."""
    from x2ct.train.cache import cache_parts, load_latent_cache

    accelerator = Accelerator(cpu=True)
    g = torch.Generator().manual_seed(0)
    data = {"latents": torch.randn(10, 3, generator=g),
            "views": torch.randn(10, 2, 15, generator=g, dtype=torch.float64)}
    built, kill = [], [True]

    def build(cases):
        built.append(cases)
        if kill[0] and len(built) == 3:
            raise KeyboardInterrupt
        return {k: v[cases.start : cases.stop] for k, v in data.items()}

    assert cache_parts(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    path = tmp_path / "latent_cache.safetensors"
    parts = tmp_path / "latent_cache.parts"
    with pytest.raises(KeyboardInterrupt):
        load_latent_cache(accelerator, path, "k", 10, build, chunk_size=4)
    assert not path.exists() and len(list(parts.glob("*.safetensors"))) == 2
    built.clear()
    kill[0] = False
    cache = load_latent_cache(accelerator, path, "k", 10, build, chunk_size=4)
    assert built == [range(8, 10)]
    for k, v in data.items():
        torch.testing.assert_close(cache[k], v, rtol=0, atol=0)
    assert not parts.exists()

    other = tmp_path / "other" / "latent_cache.safetensors"
    kill[0], built[:] = True, []
    with pytest.raises(KeyboardInterrupt):
        load_latent_cache(accelerator, other, "k", 10, build, chunk_size=4)
    kill[0], built[:] = False, []
    load_latent_cache(accelerator, other, "k2", 10, build, chunk_size=4)
    assert built == cache_parts(10, 4)  # the first key's parts are not this cache's

    with pytest.raises(ValueError, match=r"wrong.*cases 0-3.*expected 4"):
        load_latent_cache(accelerator, tmp_path / "wrong.safetensors", "k", 10,
                          lambda cases: {"latents": torch.zeros(3, 2)}, chunk_size=4)


def test_latent_cache_parts_are_dealt_out_to_the_processes(tmp_path, monkeypatch):
    """Two processes of one run (stood in for by two accelerators taking turns, the second
    told by the broadcast that the cache is missing): rank 1 builds parts 1 and 3, rank 0
    parts 0 and 2, and joins all four into the data; a parts folder left beside a valid
    cache (a build killed after writing it) is removed."""
    from types import SimpleNamespace

    import accelerate.utils

    from x2ct.train.cache import load_latent_cache

    data = {"latents": torch.arange(14.0 * 3).reshape(14, 3)}
    built = {0: [], 1: []}

    def rank(i):
        def build(cases):
            built[i].append(cases)
            return {k: v[cases.start : cases.stop] for k, v in data.items()}

        acc = SimpleNamespace(process_index=i, num_processes=2, is_main_process=i == 0,
                              wait_for_everyone=lambda: None, print=print)
        return acc, build

    def missing(objects):  # rank 0's verdict, the cache is missing, reaches rank 1
        objects[0] = "missing"

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", missing)
    path = tmp_path / "latent_cache.safetensors"
    acc1, build1 = rank(1)
    with pytest.raises(FileNotFoundError):  # rank 1 alone: nobody joins its parts
        load_latent_cache(acc1, path, "k", 14, build1, chunk_size=4)
    # rank 0 sends its own verdict
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objects: None)
    acc0, build0 = rank(0)
    cache = load_latent_cache(acc0, path, "k", 14, build0, chunk_size=4)
    assert built[1] == [range(4, 8), range(12, 14)] and built[0] == [range(0, 4), range(8, 12)]
    torch.testing.assert_close(cache["latents"], data["latents"], rtol=0, atol=0)
    parts = tmp_path / "latent_cache.parts"
    assert not parts.exists()
    parts.mkdir()
    (parts / "cases_0000000-0000003.safetensors").write_bytes(b"left over")
    load_latent_cache(acc0, path, "k", 14, build0, chunk_size=4)
    assert not parts.exists() and len(built[0]) == 2


# --------------------------------------------------------------------------- 8. model folders
def _edit_config(folder: Path, edit, sub: str = "") -> Path:
    path = folder / sub / "config.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    return path


BAD_MODELS = {
    "no geometry": (lambda d: d.pop("geometry"), "", "missing"),
    "detector_shape 64": (lambda d: d["geometry"].update(detector_shape=64), "",
                          "detector_shape"),
    "latent_size 4096^3": (lambda d: d.update(latent_size=[4096] * 3), "", "latent_size"),
    "string spacing": (lambda d: d.update(ct_spacing="2mm"), "", "ct_spacing"),
    "nan xray_scale": (lambda d: d.update(xray_scale=float("nan")), "", "xray_scale"),
    "list of lists": (lambda d: d.update(unet_channels=[[8], [16]]), "", "unet_channels"),
    "autoencoder channels huge": (lambda d: d.update(channels=[2**20] * 3), "autoencoder",
                                  "channels"),
    "autoencoder without spacing": (lambda d: d.pop("spacing"), "autoencoder", "spacing"),
}


@pytest.fixture
def model_copy(tmp_path, model_dir):
    import shutil

    return Path(shutil.copytree(model_dir, tmp_path / "model"))


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_bad_model_config_is_named_before_building(model_copy, name, capsys, tmp_path):
    from x2ct.diffusion import Reconstructor
    from x2ct.eval.reconstruct import main

    edit, sub, field = BAD_MODELS[name]
    path = _edit_config(model_copy, edit, sub)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            Reconstructor.from_pretrained(model_copy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and field in str(info.value)
    assert peak < 64 * 2**20
    ct = _nifti(tmp_path / "ct.nii.gz", _ct(), (8.0,) * 3)
    code, err = cli(main, ["--model", str(model_copy), "--ct", str(ct), "--out",
                           str(tmp_path / "out")], capsys)
    assert_one_line(code, err, str(path), field)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights", ["model.safetensors", "autoencoder/model.safetensors"])
def test_truncated_weights_are_named(model_copy, weights, capsys, tmp_path):
    from x2ct.diffusion import Reconstructor
    from x2ct.eval.reconstruct import main

    _truncate(model_copy / weights)
    with pytest.raises(ValueError, match=f"{model_copy / weights}.*truncated"):
        Reconstructor.from_pretrained(model_copy)
    ct = _nifti(tmp_path / "ct.nii.gz", _ct(), (8.0,) * 3)
    code, err = cli(main, ["--model", str(model_copy), "--ct", str(ct), "--out",
                           str(tmp_path / "out")], capsys)
    assert_one_line(code, err, str(model_copy / weights))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 9. smaller
def test_saved_files_get_the_usual_permissions(tmp_path, model_dir):
    from x2ct.state import write_safetensors

    old = os.umask(0o022)
    try:
        path = write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)})
        from latent_helpers import tiny_reconstructor

        folder = tiny_reconstructor().save_pretrained(tmp_path / "model")
    finally:
        os.umask(old)
    for p in [path, folder / "model.safetensors", folder / "autoencoder" / "model.safetensors"]:
        assert oct(p.stat().st_mode & 0o777) == oct(0o644), p


def test_a_moved_run_folder_resumes(tmp_path, autoencoder_dir):
    from x2ct.train.latent import main

    steps = ["--max-steps", "2", "--save-every", "1", "--n-val", "0"]
    main(train_args(tmp_path / "a", autoencoder_dir, *steps, "--stop-after-steps", "1"))
    os.rename(tmp_path / "a", tmp_path / "b")
    main(train_args(tmp_path / "b", autoencoder_dir, *steps))
    assert find_latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_0000002"
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["step"] == 2


# --------------------------------------------------------------------------- fuzzing
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_clear_errors(load, path: Path) -> None:
    try:
        load(path)
    except (ValueError, OSError) as e:
        assert str(path) in str(e), f"{type(e).__name__} without the path: {e}"


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".nii", ".nii.gz"]),
       gz=st.booleans())
def test_fuzz_load_ct_random_bytes(tmp_path, data, suffix, gz):
    path = tmp_path / f"ct{suffix}"
    path.write_bytes(gzip.compress(data) if gz else data)
    _only_clear_errors(load_ct, path)


@FUZZ
@given(
    dims=st.lists(st.integers(-2, 32767), min_size=1, max_size=7),
    pixdim=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3,
                    max_size=3),
    datatype=st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 2048, 7]),
    unit=st.integers(0, 255),
    vox_offset=st.floats(-10, 10000, width=32),
    slope=st.floats(allow_nan=True, allow_infinity=True, width=32),
    payload=st.integers(0, 5000),
    gz=st.booleans(),
)
def test_fuzz_load_ct_random_headers(tmp_path, dims, pixdim, datatype, unit, vox_offset,
                                     slope, payload, gz):
    header = nib.Nifti1Header()
    h = np.frombuffer(header.binaryblock, dtype=header.template_dtype).copy()
    h["dim"][0][0] = len(dims)
    h["dim"][0][1 : 1 + len(dims)] = dims
    h["pixdim"][0][1:4] = pixdim
    h["datatype"] = datatype
    h["xyzt_units"] = unit
    h["vox_offset"] = vox_offset
    h["scl_slope"] = slope
    block = h.tobytes() + b"\0" * 4 + np.random.default_rng(payload).bytes(payload)
    path = tmp_path / ("ct.nii.gz" if gz else "ct.nii")
    path.write_bytes(gzip.compress(block) if gz else block)
    _only_clear_errors(load_ct, path)


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".tif", ".npy"]),
       png_head=st.booleans())
def test_fuzz_load_xray_random_bytes(tmp_path, data, suffix, png_head):
    head = {".png": b"\x89PNG\r\n\x1a\n", ".tif": b"II*\x00", ".npy": b"\x93NUMPY\x01\x00"}
    path = tmp_path / f"ap{suffix}"
    path.write_bytes((head[suffix] if png_head else b"") + data)
    _only_clear_errors(load_xray, path)


@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1),
       depth=st.sampled_from([1, 2, 4, 8, 16]), colour=st.sampled_from([0, 2, 3, 4, 6]))
def test_fuzz_load_xray_random_png_headers(tmp_path, width, height, depth, colour):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path = tmp_path / "ap.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    _only_clear_errors(load_xray, path)
