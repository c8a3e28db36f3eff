#!/bin/sh
# Runs once per `docker compose up` in the minio/mc image: creates the results bucket with
# versioning and the lifecycle rules, and the worker and TensorBoard users with their policies.
# Every step is idempotent, so restarting the stack changes nothing that is already in place.
# The policy and lifecycle documents are rendered by compose.yaml (`configs:`) from docker/.env.
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

mc mb --ignore-existing "local/$SEGFLOW_BUCKET"
mc version enable "local/$SEGFLOW_BUCKET"
mc ilm import "local/$SEGFLOW_BUCKET" < /segflow/lifecycle.json

# A policy attached twice makes `mc` fail with "already in effect": that one error is success.
attach_policy() {
    if ! output=$(mc admin policy attach local "$1" --user "$2" 2>&1); then
        case "$output" in
            *"already in effect"*) ;;
            *) echo "$output" >&2; exit 1 ;;
        esac
    fi
}

mc admin policy create local segflow-worker /segflow/worker-policy.json
mc admin user add local "$SEGFLOW_S3_ACCESS_KEY_ID" "$SEGFLOW_S3_SECRET_ACCESS_KEY"
attach_policy segflow-worker "$SEGFLOW_S3_ACCESS_KEY_ID"

mc admin policy create local segflow-reader /segflow/reader-policy.json
mc admin user add local "$SEGFLOW_TENSORBOARD_ACCESS_KEY_ID" "$SEGFLOW_TENSORBOARD_SECRET_ACCESS_KEY"
attach_policy segflow-reader "$SEGFLOW_TENSORBOARD_ACCESS_KEY_ID"

echo "bucket $SEGFLOW_BUCKET ready: versioned, lifecycle rules, worker and reader users"
