"""Workflow templates per model: load them, describe their capabilities, fill in a request."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagegate.providerkit.types import GenerationRequest, ModelSpec, PriceUnit, SizeRule

DEFAULT_WORKFLOWS = Path(__file__).with_name("workflows.yaml")
# Request parameters a template may route into its graph.
PARAMETERS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "num_images",
)


class WorkflowError(ValueError):
    """A workflows file that cannot serve requests (raised at start-up)."""


@dataclass(frozen=True)
class Target:
    """Where one parameter goes: a node id and one of its inputs."""

    node: str
    """Node id in the graph."""
    input: str
    """Input name of that node."""


@dataclass(frozen=True)
class Workflow:
    """One model's template and where each request parameter goes in it."""

    model: str
    """Provider model id (the template's key)."""
    graph: dict[str, Any]
    """API-format graph."""
    targets: dict[str, Target]
    """Parameter -> node input."""
    spec: ModelSpec
    """What the template can honour."""
    steps: tuple[int, int] | None
    """Inclusive steps range, when settable."""
    guidance: tuple[float, float] | None
    """Inclusive guidance range, when settable."""

    def fill(
        self, request: GenerationRequest, *, seed: int, steps: int | None, guidance: float | None
    ) -> dict[str, Any]:
        """A copy of the graph with the request's values in their nodes."""
        graph = copy.deepcopy(self.graph)
        values: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": seed,
            "width": request.width,
            "height": request.height,
            "num_images": request.num_images,
        }
        if steps is not None:
            values["steps"] = steps
        if guidance is not None:
            values["guidance_scale"] = guidance
        for name, value in values.items():
            target = self.targets.get(name)
            if target is not None:
                graph[target.node]["inputs"][target.input] = value
        for node in graph.values():
            # _meta is for people; ComfyUI ignores it, proxies may not.
            node.pop("_meta", None)
        return graph


def _resolve(graph: dict[str, Any], where: str, path: str) -> Target:
    node_name, _, input_name = str(path).rpartition(".")
    if not node_name or not input_name:
        raise WorkflowError(f"{where}: {path!r} is not '<node>.<input>'")
    if node_name in graph:
        node_id = node_name
    else:
        titled = [k for k, n in graph.items() if n.get("_meta", {}).get("title") == node_name]
        if len(titled) != 1:
            raise WorkflowError(f"{where}: no single node with id or title {node_name!r}")
        node_id = titled[0]
    if input_name not in graph[node_id].get("inputs", {}):
        raise WorkflowError(f"{where}: node {node_id} has no input {input_name!r}")
    return Target(node_id, input_name)


def load_workflows(path: Path | None = None) -> dict[str, Workflow]:
    """Reads and checks a workflows file (the bundled one when `path` is None)."""
    path = path or DEFAULT_WORKFLOWS
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise WorkflowError(f"cannot read workflows {path}: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise WorkflowError(f"{path}: expected a mapping with 'models'")
    out: dict[str, Workflow] = {}
    for model, entry in raw["models"].items():
        where = f"{path}: model {model}"
        graph = entry.get("workflow")
        if not isinstance(graph, dict) or not all(
            isinstance(n, dict) and "class_type" in n for n in graph.values()
        ):
            raise WorkflowError(f"{where}: workflow must be an API-format graph")
        graph = {str(k): v for k, v in graph.items()}
        if not any(n["class_type"] == "SaveImage" for n in graph.values()):
            raise WorkflowError(f"{where}: workflow has no SaveImage node")
        inputs = entry.get("inputs") or {}
        unknown = sorted(set(inputs) - set(PARAMETERS))
        if unknown:
            raise WorkflowError(f"{where}: unknown parameters {unknown}")
        for needed in ("prompt", "width", "height"):
            if needed not in inputs:
                raise WorkflowError(f"{where}: inputs.{needed} is required")
        targets = {name: _resolve(graph, where, p) for name, p in inputs.items()}
        sizes = entry.get("sizes") or {}
        steps = tuple(entry["steps"]) if "steps" in targets and entry.get("steps") else None
        guidance = (
            tuple(entry["guidance"])
            if "guidance_scale" in targets and entry.get("guidance")
            else None
        )
        spec = ModelSpec(
            id=str(model),
            sizes=SizeRule(
                min_side=int(sizes.get("min_side", 64)),
                max_side=int(sizes.get("max_side", 2048)),
                multiple=int(sizes.get("multiple", 8)),
            ),
            max_images=4 if "num_images" in targets else 1,
            seed="seed" in targets,
            negative_prompt="negative_prompt" in targets,
            steps="steps" in targets,
            guidance="guidance_scale" in targets,
            price_unit=PriceUnit.FREE,
        )
        out[str(model)] = Workflow(
            model=str(model),
            graph=graph,
            targets=targets,
            spec=spec,
            steps=(int(steps[0]), int(steps[1])) if steps else None,
            guidance=(float(guidance[0]), float(guidance[1])) if guidance else None,
        )
    if not out:
        raise WorkflowError(f"{path}: no models")
    return out
