"""The deployments on a real `prefect server start`: `segflow serve` registers `pipeline` and the
scheduled `nightly`, and a run of `pipeline` triggered through the API runs in the served process
and publishes its results."""

import json
from pathlib import Path

import pytest
from servers import PIPELINE_FLOW, serve_env, serving, tail, task_runs

from segflow.config import PipelineParams, demo_params


@pytest.mark.slow
def test_served_pipeline_runs_when_triggered_through_the_api(prefect_api, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, prefect_env = prefect_api
    env = serve_env(
        prefect_env, tmp_path, SEGFLOW_SOURCE="synthetic", SEGFLOW_NIGHTLY_CRON="30 3 * * 1-5", SEGFLOW_TIMEZONE="Europe/Berlin"
    )
    results, work, log = tmp_path / "results", tmp_path / "work", tmp_path / "serve.log"
    with serving(api, env, log) as deployments:
        # Defaults come from the environment; only `nightly` has a schedule, the one asked for.
        defaults = PipelineParams(source="synthetic", results_uri=str(results), work_dir=str(work))
        for deployment in deployments.values():
            assert deployment["parameters"] == {"params": defaults.model_dump(mode="json")}
        assert deployments["pipeline"]["schedules"] == []
        [nightly] = deployments["nightly"]["schedules"]
        assert nightly["active"]
        assert (nightly["schedule"]["cron"], nightly["schedule"]["timezone"]) == ("30 3 * * 1-5", "Europe/Berlin")
        # The UI's form: one `params` object whose fields keep their defaults and descriptions.
        schema = deployments["pipeline"]["parameter_openapi_schema"]
        assert list(schema["properties"]) == ["params"]
        fields = schema["definitions"]["PipelineParams"]["properties"]
        assert fields["recipe"]["default"] == "cityscapes" and fields["training"]["$ref"] == "#/definitions/TrainSettings"
        epochs = schema["definitions"]["TrainSettings"]["properties"]["epochs"]
        assert epochs["default"] == 50 and epochs["description"] == "Number of epochs."

        params = demo_params(architectures=["unet"], seed=3, results_uri=str(results), work_dir=str(work),
                             epochs=2, steps_per_epoch=8, width=0.125, batch_size=4, synthetic_images=(16, 4))  # tiny
        with temporary_settings({PREFECT_API_URL: api}):
            flow_run = run_deployment(
                f"{PIPELINE_FLOW}/pipeline", parameters={"params": params.model_dump(mode="json")}, timeout=600, poll_interval=2
            )

    assert flow_run.state.is_final(), f"still {flow_run.state.name} after 600 s:\n{tail(log)}"
    assert (flow_run.state.type.value, flow_run.state.name) == ("COMPLETED", "Completed"), f"{flow_run.state}\n{tail(log)}"
    assert flow_run.state.message == "1 architectures trained and evaluated"
    # The server recorded every task run: start, data, records, train and evaluate, champion, run
    # record, report, publish, promote, finish.
    tasks = task_runs(api, str(flow_run.id), count=10)
    assert len(tasks) == 10 and set(tasks.values()) == {"COMPLETED"}, tasks
    assert {"get data: synthetic", "train and evaluate unet", "decide champion: unet", "promote champion: unet"} <= tasks.keys(), tasks
    # Published under a run id, the pointer last; the run record names this flow run.
    latest = json.loads((results / "latest.json").read_text())
    run_dir = Path(latest["uri"])
    assert run_dir == results / "runs" / latest["run_id"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["flow_run_id"] == str(flow_run.id)
    assert record["parameters"] == params.model_dump(mode="json")
    assert record["architectures"] == {"unet": {"status": "completed", "error": None}}
    assert (run_dir / "unet" / "model.keras").stat().st_size > 0
    assert "unet" in (run_dir / "report" / "report.html").read_text()
