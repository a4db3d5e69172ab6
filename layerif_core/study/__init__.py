"""Comparative studies (architecture §9): arms × grid × seeds of run configs, shared work done once,
resumable cells, and a report with confidence intervals and paired tests.

>>> from layerif_core.study.runner import run_study
>>> from layerif_core.study.report import build_report
>>> outcome = run_study("examples/studies/smoke.yaml")
>>> build_report(outcome.directory)
"""
