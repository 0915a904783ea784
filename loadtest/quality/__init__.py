"""Distillation quality measured through the *served* teacher and student.

Quality is read from what Triton answers, not from the training checkpoints, so an export or serving
bug (a wrong input name, a truncated sequence, FP16 overflow) shows up as a quality loss here.
Modules: ``dataset`` (the frozen evaluation set), ``client`` (batched inference on Triton),
``metrics`` (the formulas of docs/method.md), ``slices``, ``scoring`` (metrics per slice with intervals),
``findings`` (what the numbers say), ``results`` (the run's ``quality/`` folder), ``runner``
(``loadtest eval``), ``gate`` (``loadtest gate``), ``plots`` and ``report`` (report.html's section).
"""
