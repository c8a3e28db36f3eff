"""Deployments of the pipeline: `pipeline` (triggered by hand from the UI or API) and `nightly`
(the scheduled retraining that promotes champions). `segflow serve` serves both from this process
against the Prefect server named by PREFECT_API_URL.

The nightly schedule comes from SEGFLOW_NIGHTLY_CRON (default 02:00) in SEGFLOW_TIMEZONE
(default UTC); its parameters are PipelineParams' defaults plus SEGFLOW_* overrides, so the
schedule retrains on the real data with the results store of the environment, with the training
recipe named by SEGFLOW_RECIPE (default: PipelineParams' `cityscapes`, see `segflow recipes`).
SEGFLOW_DEMO=1 starts from demo_params() instead: tiny models on synthetic data, for trying the
UI on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from flows.pipeline import cityscapes_pipeline
from flows.train_architecture import train_architecture_flow
from segflow.config import PipelineParams, demo_params

SCALE_OUT_PLAN = Path(__file__).resolve().parents[1] / "infra" / "scale-out.yaml"

DEFAULT_CRON = "0 2 * * *"


def nightly_schedule() -> Cron:
    return Cron(os.environ.get("SEGFLOW_NIGHTLY_CRON", DEFAULT_CRON), timezone=os.environ.get("SEGFLOW_TIMEZONE", "UTC"))


def environment_params() -> PipelineParams:
    """Defaults (demo_params() if SEGFLOW_DEMO=1), with the results store, work dir, source and
    training recipe taken from the environment if set."""
    overrides = {
        field: os.environ[variable]
        for field, variable in (
            ("results_uri", "SEGFLOW_RESULTS_URI"),
            ("work_dir", "SEGFLOW_WORK_DIR"),
            ("source", "SEGFLOW_SOURCE"),
            ("recipe", "SEGFLOW_RECIPE"),
        )
        if os.environ.get(variable)
    }
    defaults = demo_params if os.environ.get("SEGFLOW_DEMO") == "1" else PipelineParams
    return defaults(**overrides)


def deployments(params: PipelineParams | None = None, *, schedule: bool = True) -> list:
    params = params or environment_params()
    parameters = {"params": params.model_dump(mode="json")}
    return [
        cityscapes_pipeline.to_deployment(
            name="pipeline",
            parameters=parameters,
            description="Run the whole pipeline once; every parameter is in the form.",
            tags=["segflow"],
        ),
        cityscapes_pipeline.to_deployment(
            name="nightly",
            parameters=parameters,
            schedules=[nightly_schedule()] if schedule else [],
            description="Nightly retraining; a model becomes champion only if its val mIoU beats the current one.",
            tags=["segflow", "nightly"],
        ),
    ]


def serve_deployments(params: PipelineParams | None = None, *, schedule: bool = True, limit: int | None = None) -> None:
    """Register the deployments and run their flow runs from this process until interrupted."""
    serve(*deployments(params, schedule=schedule), limit=limit)


def deploy_to_work_pools(image: str, plan_path: Path = SCALE_OUT_PLAN, params: PipelineParams | None = None) -> list:
    """Register the scale-out layout of `infra/scale-out.yaml` on the Prefect server: the pipeline
    (with its nightly schedule) on the CPU pool, and one `train-architecture` deployment per
    architecture on the GPU pool, which the pipeline starts with `run_deployment`. `image` is the
    worker image built from docker/Dockerfile (already pushed where the workers can pull it).
    """
    import yaml

    plan = yaml.safe_load(plan_path.read_text())
    training = plan["training"]
    deployment_ids = [
        train_architecture_flow.deploy(
            name=spec["name"],
            work_pool_name=training["work_pool"],
            image=image,
            build=False,
            push=False,
            job_variables=spec.get("job_variables") or {},
            tags=["segflow", "gpu", architecture],
            print_next_steps=False,
        )
        for architecture, spec in training["deployments"].items()
    ]
    params = (params or environment_params()).model_copy(
        update={
            "training_deployment": f"{training['flow']}/train-{{architecture}}",
            "max_parallel_training": len(training["deployments"]),
        }
    )
    deployment_ids.append(
        cityscapes_pipeline.deploy(
            name=plan["pipeline"]["deployment"],
            work_pool_name=plan["pipeline"]["work_pool"],
            image=image,
            build=False,
            push=False,
            parameters={"params": params.model_dump(mode="json")},
            schedules=[nightly_schedule()],
            tags=["segflow", "nightly"],
            print_next_steps=False,
        )
    )
    return deployment_ids
