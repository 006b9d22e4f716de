"""The analysis: tables, plots and the report, read from the results database only.

load (SQL: runs, final metrics via the run_final view's SELECT, curves) -> cells (which settings
varied) -> stats (mean/std over seeds, Welch's test against a baseline, distance ratio) -> tables and
formats (Markdown, LaTeX, HTML) and plots (seaborn) -> sections and document -> report
(`python -m analysis.report`). benchmark times the report on 2 M metric rows; browser_check
renders the page in headless Chromium.
"""
