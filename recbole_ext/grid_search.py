"""Hyper-parameter grids declared in model YAMLs (``hyper_grid:``), selected on validation only.

The official MambaRec/MMRec loop reports the grid point with the best **test** Recall@20 (spec §2.3, Q13). Here
every grid point is trained and early-stopped through :func:`recbole_ext.quick_start.run`, the point with the best
validation score (``valid_metric``) wins, and only the chosen point's test result is reported. Ties keep the
earlier grid point (the Cartesian product in YAML key order, last key fastest, as MMRec iterates:
:func:`recbole_ext.utils.grids.grid_points`).

CLI (formerly ``python -m recbole_ext.models.multimodal.grid``)::

    python -m recbole_ext.grid_search --model=MambaRec --dataset=baby [--out=grid.json] [--key=value ...]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field

import yaml

from recbole_ext.config_keys import UnknownKeyError
from recbole_ext.errors import UserError, run_as_script
from recbole_ext.utils.grids import grid_points
from recbole_ext.utils.io import atomic_file
from recbole_ext.utils.paths import PROPERTIES_DIR


@dataclass
class GridResult:
    model: str
    dataset: str
    valid_metric: str
    points: list = field(default_factory=list)  # [{"params", "best_valid_score", "best_valid_result", "run_dir"}]
    chosen: dict = field(default_factory=dict)  # the chosen point's params
    chosen_run_dir: str | None = None
    test_result: dict = field(default_factory=dict)  # of the chosen point only

    def to_dict(self) -> dict:
        return asdict(self)


def declared_grid(model: str) -> dict[str, list]:
    """``hyper_grid`` of ``properties/model/<model>.yaml`` (empty when the model declares none)."""
    path = PROPERTIES_DIR / "model" / f"{model}.yaml"
    if not path.is_file():
        return {}
    grid = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("hyper_grid") or {}
    return check_grid(grid, str(path))


def check_grid(grid, where: str) -> dict[str, list]:
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"hyper_grid in {where} must map each key to a non-empty list of values",
                        fix="write e.g. `hyper_grid: {mmd_weight: [0.1, 0.2]}`")
    return {str(k): list(v) for k, v in grid.items()}


def run_grid(model: str, dataset: str, grid: dict[str, list] | None = None, config_dict: dict | None = None,
             config_files: list[str] | None = None, runner=None) -> GridResult:
    """Train every grid point; choose on the validation score; return the chosen point's test result only."""
    from recbole_ext import registry
    from recbole_ext.options import check_options

    model_class = registry.model_class(model)  # an unknown name is said as such, not as "declares no hyper_grid"
    if runner is None:
        from recbole_ext.quick_start import run as runner
    grid = declared_grid(model) if grid is None else check_grid(grid, "the given grid")
    if not grid:
        raise UserError(f"model {model} declares no hyper_grid", fix=f"add hyper_grid to properties/model/{model}.yaml")
    base = dict(config_dict or {})
    clash = sorted(set(base) & set(grid))
    if clash:
        raise UserError(f"{clash} are both fixed and searched", fix="drop them from the fixed options or the grid")
    for point in grid_points(grid):  # a bad value fails now, not after the points before it have trained
        check_options(model_class, {**base, **point})
    out = GridResult(model=model, dataset=dataset, valid_metric="")
    best_index, best_score, bigger = None, None, True
    runs = []
    for i, params in enumerate(grid_points(grid)):
        result = runner(model, dataset, config_dict={**base, **params}, config_files=config_files)
        bigger = bool(result.config.get("valid_metric_bigger", True))
        out.valid_metric = str(result.config.get("valid_metric", ""))
        score = result.best_valid_score
        out.points.append({"params": params, "best_valid_score": score,
                           "best_valid_result": dict(result.best_valid_result), "run_dir": result.run_dir})
        runs.append(result)
        if score is not None and (best_score is None or (score > best_score if bigger else score < best_score)):
            best_index, best_score = i, score
    if best_index is None:
        raise UserError("no grid point produced a validation score", fix="check eval_step and the valid split")
    out.chosen = dict(out.points[best_index]["params"])
    out.chosen_run_dir = runs[best_index].run_dir
    out.test_result = dict(runs[best_index].test_result)
    return out


def format_grid(result: GridResult) -> str:
    keys = list(result.chosen)
    header = "  ".join(f"{k:>20}" for k in keys) + f"  {'valid ' + result.valid_metric:>20}"
    lines = [header, "-" * len(header)]
    for p in result.points:
        mark = " <- chosen" if p["params"] == result.chosen else ""
        score = "" if p["best_valid_score"] is None else f"{p['best_valid_score']:.4f}"
        lines.append("  ".join(f"{p['params'][k]!s:>20}" for k in keys) + f"  {score:>20}{mark}")
    lines.append("test result of the chosen point (selected on validation only): "
                 + ", ".join(f"{k}={v:.4f}" for k, v in result.test_result.items() if isinstance(v, float)))
    return "\n".join(lines)


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config_files", default="")
    parser.add_argument("--out", default=None, help="write the grid result as JSON here")
    args, rest = parser.parse_known_args(argv)
    fixed = {}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            raise UserError(f"cannot parse option {item!r}", fix="write options as --key=value")
        key, value = item[2:].split("=", 1)
        fixed[key] = _parse_value(value)
    files = [f for f in args.config_files.split(",") if f]
    try:
        result = run_grid(args.model, args.dataset, config_dict=fixed, config_files=files or None)
    except UnknownKeyError as exc:  # raised by the first point's run, before it trains: the keys were --options
        raise exc.for_command_line() from None
    print(format_grid(result))
    if args.out:
        with atomic_file(args.out) as fh:
            json.dump(result.to_dict(), fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    run_as_script(main)
