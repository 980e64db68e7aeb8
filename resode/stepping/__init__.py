"""Fixed-step Runge--Kutta stepping on pytrees: `step`, `integrate` and their `StepStats`."""

from ._integrate import integrate, step
from ._stats import StepStats

__all__ = ["StepStats", "integrate", "step"]
