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

from segflow_prefect.flows.pipeline import cityscapes_pipeline
from segflow_prefect.flows.train_architecture import train_architecture_flow
from segflow.config import PipelineParams, demo_params
from segflow.errors import SegflowError

SCALE_OUT_PLAN = Path(__file__).resolve().parents[2] / "infra" / "scale-out.yaml"

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


POOL_TYPES = ("process", "docker", "kubernetes")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PIPELINE_ENTRYPOINT = "segflow_prefect/flows/pipeline.py:cityscapes_pipeline"
TRAINING_ENTRYPOINT = "segflow_prefect/flows/train_architecture.py:train_architecture_flow"

# A training flow run whose worker died says nothing more: it sends a heartbeat event every
# HEARTBEAT_SECONDS (Prefect's minimum, 30 s; its default 180 s), and the automation
# CRASH_AUTOMATION marks it Crashed when none came for SILENCE_SECONDS (three missed heartbeats).
# The pipeline's `train_on_deployment` task then starts the deployment again, on any worker of the
# GPU pool, and the training resumes from the checkpoints in the store (segflow_prefect/tasks/remote.py).
HEARTBEAT_SECONDS = 30
SILENCE_SECONDS = 90
CRASH_AUTOMATION = "segflow: crash silent trainings"


def work_pool_names(plan: dict, pool_type: str) -> tuple[str, str]:
    """(CPU pool, GPU pool) of `plan` for `pool_type`: the Kubernetes GPU pool for `kubernetes`,
    else the Docker pools' names, which `process` pools of a one-machine trial take over."""
    gpu_pool = plan["training"]["work_pool"]
    if pool_type == "kubernetes":
        gpu_pool = next(name for name, pool in plan["work_pools"].items() if pool["type"] == "kubernetes")
    return plan["pipeline"]["work_pool"], gpu_pool


def deploy_to_work_pools(
    image: str | None,
    plan_path: Path = SCALE_OUT_PLAN,
    params: PipelineParams | None = None,
    *,
    pool_type: str = "docker",
    cpu_pool: str | None = None,
    gpu_pool: str | None = None,
) -> list:
    """Register the scale-out layout of `infra/scale-out.yaml` on the Prefect server: the pipeline
    (with its nightly schedule) on the CPU pool, and one `train-architecture` deployment per
    architecture on the GPU pool, which the pipeline starts with `run_deployment`.

    `pool_type` (POOL_TYPES): `docker` uses the plan's Docker pools, `kubernetes` its Kubernetes
    GPU pool (the pipeline stays on the Docker CPU pool); both run `image` (built from
    docker/Dockerfile, already pushed where the workers can pull it). `process` pools (of the
    Docker pools' names unless given) run the flows
    from this project's folder on the workers' machine (no image: the one-machine trial). Entry
    points, names and parameters are the same for all three. `cpu_pool`/`gpu_pool` replace the
    plan's pool names. Returns the deployment ids, the trainings' first.

    Raises SegflowError, before registering anything, for an unknown pool type, a missing or
    unexpected image, or a pool that does not exist or is of another type.
    """
    import yaml
    from prefect import Flow

    if pool_type not in POOL_TYPES:
        raise SegflowError(f"pool type must be one of {', '.join(POOL_TYPES)}; got {pool_type!r}")
    if pool_type != "process" and not image:
        raise SegflowError(f"--image is required for {pool_type} pools (the worker image built from docker/Dockerfile)")
    if pool_type == "process" and image:
        raise SegflowError(f"--image {image!r} does not apply to process pools: they run the flows from {PROJECT_ROOT}")
    plan = yaml.safe_load(plan_path.read_text())
    planned = dict(zip(("cpu", "gpu"), work_pool_names(plan, pool_type)))
    pools = {"cpu": cpu_pool or planned["cpu"], "gpu": gpu_pool or planned["gpu"]}
    _check_pools({
        pools[role]: "process" if pool_type == "process" else plan["work_pools"][planned[role]]["type"] for role in pools
    })
    training = plan["training"]

    def register(flow, entrypoint: str, **options) -> str:
        # Without an image a worker needs to know where the code is: this project's folder.
        # `to_deployment(...).apply(image=...)` is what `flow.deploy(build=False, push=False)`
        # does, without its check for online workers, which Prefect 3.8.8's client sends with
        # limit/offset null and its own server refuses (422).
        source = flow if image else Flow.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint)
        return source.to_deployment(**options).apply(image=image)

    deployment_ids = [
        register(
            train_architecture_flow,
            TRAINING_ENTRYPOINT,
            name=spec["name"],
            work_pool_name=pools["gpu"],
            job_variables=_with_heartbeat(spec.get("job_variables") or {}),
            tags=["segflow", "gpu", architecture],
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
        register(
            cityscapes_pipeline,
            PIPELINE_ENTRYPOINT,
            name=plan["pipeline"]["deployment"],
            work_pool_name=pools["cpu"],
            parameters={"params": params.model_dump(mode="json")},
            schedules=[nightly_schedule()],
            tags=["segflow", "nightly"],
        )
    )
    register_crash_automation()
    return deployment_ids


def _with_heartbeat(job_variables: dict) -> dict:
    env = {**job_variables.get("env", {}), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
    return {**job_variables, "env": env}


def register_crash_automation() -> None:
    """Create (or replace) CRASH_AUTOMATION: a `train-architecture` flow run that sent a heartbeat
    and then neither another one nor a final state within SILENCE_SECONDS becomes Crashed.
    Prefect's documented pattern for flow runs whose infrastructure vanished; needs the server's
    triggers service (on by default)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(CRASH_AUTOMATION):
            client.delete_automation(old.id)
    Automation(
        name=CRASH_AUTOMATION,
        description="A training whose worker died sends no more heartbeats: mark it Crashed so the pipeline starts it again.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "train-architecture"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},  # fmt: skip
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENCE_SECONDS),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, name="Crashed",
                                    message=f"no heartbeat for {SILENCE_SECONDS} s: its worker is gone")],  # fmt: skip
    ).create()


def _check_pools(expected: dict[str, str]) -> None:
    """Raise SegflowError unless each named work pool exists on the server with its type."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name, pool_type in expected.items():
            try:
                pool = client.read_work_pool(name)
            except ObjectNotFound:
                raise SegflowError(
                    f"work pool {name!r} does not exist; create it: prefect work-pool create {name} --type {pool_type}"
                ) from None
            if pool.type != pool_type:
                raise SegflowError(f"work pool {name!r} is of type {pool.type!r}, not {pool_type!r}")
