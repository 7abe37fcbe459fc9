"""Pipelines: raw text, audio or images in, HF's pipeline outputs back, in either framework.

``d2v_torch.pipeline`` and ``d2v_tf.pipeline`` build a ``Pipeline`` from a task name, a model
(folder, hub id or model object) and its processors; everything but the forward lives here:
the task registry (``TASKS``), input reading, chunk planning for long audio, label scores and
result formatting. See docs/pipelines.md.
"""

from d2v_common.pipelines import tasks  # noqa: F401 - registers the tasks
from d2v_common.pipelines.audio import ChunkPlan, load_waveform, read_audio, resample
from d2v_common.pipelines.base import TASKS, Pipeline, PipelineRunner, Task, build_pipeline, register_task

__all__ = ["ChunkPlan", "Pipeline", "PipelineRunner", "TASKS", "Task", "build_pipeline", "load_waveform",
           "read_audio", "register_task", "resample"]
