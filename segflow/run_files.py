"""The names of the files in a training run's folder, in one module with no dependencies, so the
orchestrator, the report and the trainer agree on them without importing Keras.

    config.json        the TrainConfig of the run
    history.json       one entry per finished epoch
    metrics.json       the exported model's official evaluation
    samples/           its predictions on the first val images, as the report shows them
    model.keras        the exported model
    saved_model/       the same model as a TF SavedModel
    checkpoints/       step-NNNNNNNNN/ and best/
    tensorboard/       TensorBoard logs
    train.log          the training process's output
"""

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
SAMPLES_DIR = "samples"
SAMPLES_FILE = "samples.json"  # in SAMPLES_DIR, written last
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LOG_FILE = "train.log"
RUN_FILE = "run.json"
