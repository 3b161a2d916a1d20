"""The monitoring policy file: per model, which output is the prediction and the score, the task,
and the alert thresholds.

Pure logic apart from :meth:`MonitoringPolicy.load` (reads one file). The file is YAML
(``PROVLINE_MONITORING__POLICY`` names it)::

    defaults:                      # applies to every model not listed, and under each listed one
      performance_margin: 0.05     # alert when a metric is worse than the evaluation by more than this
      min_samples: 30              # no performance alert on a window with fewer labelled predictions
    models:
      iris:
        task: classification       # or regression
        prediction: predict        # the output field holding the predicted class / value
        score: null                # the output field holding the positive class's score (for ROC AUC)
        positive_label: null       # null: multiclass, macro averages
        metrics: [accuracy]        # the metrics compared with the evaluation
        performance_margin: 0.1

A model with no ``prediction`` takes the first of :data:`DEFAULT_PREDICTION_FIELDS` its trace
has (KServe V2 / MLServer ``predict``, a V2 server's ``output-0``, MLflow's and TF Serving's
``predictions`` stored as ``output``), and likewise :data:`DEFAULT_SCORE_FIELDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provline.sink.errors import PolicyError

DEFAULT_PREDICTION_FIELDS = ("predict", "prediction", "output-0", "output", "label")
DEFAULT_SCORE_FIELDS = ("score", "probability", "predict_proba[1]", "output-0[1]")
DEFAULT_PERFORMANCE_MARGIN = 0.05
DEFAULT_MIN_SAMPLES = 30


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    performance_margin: float = Field(DEFAULT_PERFORMANCE_MARGIN, ge=0)
    min_samples: int = Field(DEFAULT_MIN_SAMPLES, ge=1)


class ModelPolicy(Thresholds):
    task: Literal["classification", "regression"] = "classification"
    prediction: str | None = None
    score: str | None = None
    positive_label: str | None = None
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"])


class MonitoringPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: Thresholds = Field(default_factory=Thresholds)
    models: dict[str, ModelPolicy] = Field(default_factory=dict)

    def for_model(self, name: str) -> ModelPolicy:
        """The model's policy; a model not listed gets the defaults (classification, accuracy)."""
        if name in self.models:
            return self.models[name]
        return ModelPolicy(**self.defaults.model_dump())

    @classmethod
    def load(cls, path: Path | None) -> MonitoringPolicy:
        """Reads and validates the file (blocks on the read); None gives the defaults."""
        if path is None:
            return cls()
        try:
            text = path.read_text()
        except OSError as exc:
            raise PolicyError(f"cannot read monitoring policy {path}: {exc}; fix PROVLINE_MONITORING__POLICY") from exc
        return parse_policy(text, source=str(path))


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The 1-based line of every mapping key in a YAML document, by its path of keys."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*path, str(key.value))
                lines[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                lines[(*path, str(index))] = value.start_mark.line + 1
                walk(value, (*path, str(index)))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def parse_policy(text: str, *, source: str = "<policy>") -> MonitoringPolicy:
    """The policy in ``text`` (YAML), or a :class:`PolicyError` naming each wrong key with its line."""
    import yaml

    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source} is not valid YAML: {exc}; fix the file's syntax") from exc
    if not isinstance(document, dict):
        raise PolicyError(f"{source}: the policy must be a mapping with 'defaults' and 'models', "
                          f"not a {type(document).__name__}")
    try:
        return MonitoringPolicy.model_validate(document)
    except ValidationError as exc:
        lines = _key_lines(text)
        problems = []
        for error in exc.errors():
            path = tuple(str(part) for part in error["loc"])
            line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
            where = f"line {line}" if line else "top level"
            problems.append(f"{source} {where}, key {'.'.join(path)}: {error['msg']}")
        raise PolicyError("; ".join(problems) + "; fix these keys (see docs/operations.md, monitoring policy)") from exc


def pick_field(outputs: dict[str, Any], configured: str | None, defaults: tuple[str, ...]) -> Any:
    """The value of the configured output field, else of the first default field the outputs have."""
    if configured is not None:
        return outputs.get(configured)
    for name in defaults:
        if name in outputs and outputs[name] is not None:
            return outputs[name]
    return None
