"""The one retry policy of the orchestrator.

Retry only what can make progress on another attempt, and only at one level:

- network and S3 failures are retried inside the library, where the partial work is kept
  (`segflow.download`: 6 attempts with doubling waits, resuming the bytes it has; boto3's standard
  retry mode for S3), so the tasks that download, upload or publish are not retried again;
- a training is retried by its task, because the next attempt resumes from its last checkpoint;
- a training flow run on the GPU pool is retried by the pipeline's task when it crashed;
- a SegflowError (bad input, wrong credentials, corrupt data) is never retried: it fails the
  same way every time, so it fails once, with its one clear message.
"""

from __future__ import annotations

from segflow.errors import SegflowError


def not_a_segflow_error(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry unless the attempt failed with a SegflowError."""
    try:
        state.result()
    except SegflowError:
        return False
    except Exception:
        return True
    return True


# Training resumes from its checkpoint: two more attempts, after 10 s and 60 s.
TRAINING = dict(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=not_a_segflow_error)
