"""Prefect flows: the Cityscapes pipeline DAG and its deployments."""
