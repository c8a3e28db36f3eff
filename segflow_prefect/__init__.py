"""segflow's Prefect layer: `flows` (the pipeline DAG and its deployments) and `tasks` (thin Prefect
tasks around the `segflow` library: retries, caching, artifacts).

Namespaced under one installed top-level package so that installing segflow never claims the
generic names `flows` and `tasks`, which other projects (and users' own `tasks.py`) use too.
Deployment entrypoints are paths inside this folder, e.g. `segflow_prefect/flows/pipeline.py:cityscapes_pipeline`.
"""
