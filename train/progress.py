"""A training progress bar that ends where the run really stops.

A run stops at ``--max-steps`` or when ``--max-minutes`` have passed, whichever comes
first. :class:`BudgetBar` fills toward that stop and gives an honest ETA from this run's
own pace (validation and checkpoints included):

    latent diffusion:  43%|████▎     | step 52, ~120 at the 5:00 budget | 2:09 left | loss 0.41

With a step limit that comes first it reads ``step 52/200``. It has the three methods the
loops call on a tqdm bar (``update``, ``set_postfix``, ``close``).
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

__all__ = ["BudgetBar", "budget_line", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """1:05 (m:ss) or 1:02:05 (h:mm:ss)."""
    s = max(0, int(round(seconds)))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def budget_line(step: int, max_steps: int, minutes: float | None,
                init_from: str | None = None) -> str:
    """What a run will do, said before it starts (``init_from``: the model whose weights a
    new run starts from, ``--init-from``)."""
    if minutes is None:
        until = f"until step {max_steps}"
    else:
        until = (f"for {format_seconds(60 * minutes)} (m:ss) or until step {max_steps}, "
                 "whichever comes first")
    if step:
        start = f"from step {step}"
    else:
        start = f"from the weights of {init_from}" if init_from else "from scratch"
    return f"training {until}, {start}; rerun the same command to continue"


class BudgetBar:
    """Progress toward the first of ``max_steps`` and ``deadline``.

    Args:
        desc: the bar's name.
        step: the step this run starts at (a resumed run's).
        max_steps: the step limit.
        deadline: monotonic time at which the run stops (``Deadline.end``), or None.
        disable: no bar (other processes than the main one).
    """

    def __init__(self, desc: str, step: int, max_steps: int, deadline: float | None,
                 disable: bool = False):
        self.start_step = self.step = int(step)
        self.max_steps = int(max_steps)
        self.deadline = deadline
        self.t0 = time.monotonic()
        self.postfix = ""
        self.bar = tqdm(total=1.0, desc=desc, disable=disable, dynamic_ncols=True)
        self._refresh()

    # ---------------------------------------------------------------- the estimate
    def estimate(self, now: float | None = None) -> dict:
        """{"fraction": of the way to the stop, "left": seconds to it or None (pace not yet
        known), "binding": "time" or "steps", "final_step": the step it will stop at
        (estimated when time binds)}."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0
        done = self.step - self.start_step
        rate = done / elapsed if done > 0 and elapsed > 0 else None  # steps / s
        steps_left = self.max_steps - self.step
        time_left = None if self.deadline is None else max(0.0, self.deadline - now)
        step_fraction = done / max(self.max_steps - self.start_step, 1)
        if time_left is None or (rate is not None and steps_left / rate <= time_left):
            left = None if rate is None else steps_left / rate
            return {"fraction": step_fraction, "left": left, "binding": "steps",
                    "final_step": self.max_steps}
        budget = self.deadline - self.t0
        final = None if rate is None else min(self.max_steps, self.step + int(rate * time_left))
        return {"fraction": min(1.0, elapsed / budget) if budget > 0 else 1.0,
                "left": time_left, "binding": "time", "final_step": final}

    def _refresh(self) -> None:
        e = self.estimate()
        if e["binding"] == "steps":
            where = f"step {self.step}/{self.max_steps}"
        else:
            budget = format_seconds(self.deadline - self.t0)
            final = "?" if e["final_step"] is None else f"~{e['final_step']}"
            where = f"step {self.step}, {final} at the {budget} budget"
        left = "measuring pace" if e["left"] is None else f"{format_seconds(e['left'])} left"
        parts = [where, left] + ([self.postfix] if self.postfix else [])
        text = " | ".join(parts).replace("{", "{{").replace("}", "}}")
        self.bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| " + text
        self.bar.n = e["fraction"]
        self.bar.refresh()

    # ---------------------------------------------------------------- tqdm's interface
    def update(self, n: int = 1) -> None:
        self.step += n
        self._refresh()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        self._refresh()

    def close(self) -> None:
        self.bar.close()
