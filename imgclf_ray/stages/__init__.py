"""The pipeline's stages as plain batch callables (``dict[str, np.ndarray]`` in and out).

They know nothing of Ray: ``runner.build`` maps them over a Dataset; tests call them directly. Each
stage catches failures per row: a row that fails gets ``status="error"`` and
``error="<stage>: <cause>"`` and travels on untouched, so every listed input reaches the sink once.

One module per stage: ``load`` (CPU tasks), ``predict`` (the actor pool); ``common`` what they
share.
"""

from imgclf_ray.stages.common import Reporter, StageError
from imgclf_ray.stages.load import LoadConfig, LoadStage, Part
from imgclf_ray.stages.predict import PredictConfig, PredictStage

__all__ = ["LoadConfig", "LoadStage", "Part", "PredictConfig", "PredictStage", "Reporter", "StageError"]
