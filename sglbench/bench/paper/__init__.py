"""The SGLang paper's workloads as sglbench programs on generated data, measured against baselines.

One module per workload (data shape in its docstring, `WORKLOADS` and a `main`), `suite` for all of
them; `runner.run_suite` gives one table, `report.results_html` an HTML fragment of it.
"""
