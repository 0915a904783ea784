"""loadtest: measure whether a distilled student can replace its teacher on a real Triton serving stack."""

__version__ = "0.1.0"
