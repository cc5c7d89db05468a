"""``python run.py list models|datasets|metrics``: what a user can run, read from the registry, never hard-coded.

* **models**: the recbole-ext models (each track's ``MODELS`` table and runtime registrations) and RecBole's general
  recommenders. The tasks a model runs on are decided as a run decides them: the class's ``required_task`` and each
  task's own ``check_model``; whether it has user/item vectors for FAISS retrieval is
  ``retrieval.vectors.class_supports_vectors``. No model is instantiated and no data is read.
* **datasets**: RecBole's bundled ml-100k, every folder under the dataset root (``dataset_atomic/`` or
  ``$RECBOLE_EXT_DATA``) and every ``properties/dataset/<name>.yaml``, with its task (the YAML's ``task:``, or what
  the folder holds), whether it is prepared (its files are there) and otherwise the command that prepares it (the
  one the YAML's comments name).
* **metrics**: RecBole's metric tables after the registry added ours, with the tasks each applies to (each task's
  ``check_metrics``; value metrics such as AUC need a labelled evaluation, which only the general task has), the
  better direction and whether it is computed at each top-K cut-off.
"""
from __future__ import annotations

import inspect
import json
import re
import textwrap
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser

KINDS = ("models", "datasets", "metrics")
TASK_ORDER = ("general", "mmrec", "medrec")
RECBOLE_BUILT_IN = "RecBole built-in"

# A RecBole model family a user can name with --model but that the table leaves out (one line under the table).
OTHER_RECBOLE_FAMILIES = ("RecBole's context-aware (FM, ...), sequential and knowledge-aware models also run on the "
                          "general task with --model=NAME, on a dataset with the fields they read (ml-100k has them) "
                          "and their RecBole settings (SASRec's CE loss: --train_neg_sample_args=None).")


# ------------------------------------------------------------------------------------------------------- models
def _tasks_of(model_class) -> list[str]:
    """The tasks ``model_class`` passes, checked as ``config.build_config`` checks a run's model."""
    from recbole_ext.registry import get_task

    needs = getattr(model_class, "required_task", None)
    tasks = []
    for name in TASK_ORDER:
        if needs and needs != name:
            continue
        try:
            get_task(name).check_model(model_class)
        except UserError:
            continue
        tasks.append(name)
    return tasks


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0].strip()


def _recbole_general_models() -> list[type]:
    """RecBole's general recommenders, in name order (the classes its ``general_recommender`` package exports)."""
    import recbole.model.general_recommender as package
    from recbole.model.abstract_recommender import AbstractRecommender

    return sorted((cls for _, cls in inspect.getmembers(package, inspect.isclass)
                   if issubclass(cls, AbstractRecommender) and cls.__module__.startswith(package.__name__ + ".")),
                  key=lambda cls: cls.__name__.lower())


def list_models() -> list[dict]:
    """One dict per model: name, tasks, source, type, paper, vectors, year, uses, parity (what shows that it computes
    what its official code computes; recbole-ext's models state it as class attributes, like ``paper``)."""
    from recbole_ext.registry import ext_models, resolve_ext_model
    from recbole_ext.retrieval.vectors import class_supports_vectors

    rows = []
    ext_names = list(ext_models())
    for name in ext_names:
        cls = resolve_ext_model(name)
        own = vars(cls)  # a model's own facts, never its base class's
        paper = own.get("paper") or _first_line(cls.__doc__)
        rows.append({"name": name, "tasks": _tasks_of(cls), "source": "recbole-ext",
                     "type": cls.type.name.lower(), "paper": paper, "vectors": class_supports_vectors(cls),
                     "year": own.get("year"), "uses": own.get("uses"), "parity": own.get("parity")})
    for cls in _recbole_general_models():
        if cls.__name__ in ext_names:
            continue
        kind = cls.type.name.lower()
        rows.append({"name": cls.__name__, "tasks": _tasks_of(cls), "source": RECBOLE_BUILT_IN, "type": kind,
                     "paper": f"{RECBOLE_BUILT_IN} ({kind})", "vectors": class_supports_vectors(cls),
                     "year": None, "uses": "interactions", "parity": "RecBole's own class"})
    return rows


# What a model's row shows with ``--results``: the headline test metric on its task's bundled dataset.
BUNDLED_RESULT = {"mmrec": ("synth-mm", "recall@20", "R@20"), "medrec": ("synth-ehr-small", "jaccard", "Jaccard")}
BOARD_COLUMNS = ("dataset", "model", "metric", "mean", "std")


def board_results(folder: str | Path) -> dict[tuple[str, str, str], tuple[float, float]]:
    """``(dataset, model, metric) -> (mean, std)`` from every ``FOLDER/*/leaderboard.csv`` (leaderboard outputs)."""
    import csv
    import math

    folder = Path(folder)
    files = sorted(folder.glob("*/leaderboard.csv"))
    if not files:
        raise UserError(f"no leaderboard output under {folder}",
                        fix="pass the folder that holds the boards' output folders (each with a leaderboard.csv)")
    found: dict[tuple[str, str, str], tuple[float, float]] = {}
    for path in files:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in BOARD_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} is not a leaderboard table: no column {', '.join(missing)}",
                                fix="regenerate it with python run.py leaderboard SPEC --report-only")
            for row in reader:
                try:
                    value = (float(row["mean"]), float(row["std"] or "nan"))
                except ValueError:
                    raise UserError(f"{path}: {row['model']} {row['metric']} has a non-numeric mean or std",
                                    fix="regenerate it with python run.py leaderboard SPEC --report-only") from None
                key = (row["dataset"], row["model"], row["metric"])
                if key in found and found[key] != value and not all(map(math.isnan, found[key] + value)):
                    raise UserError(f"two boards under {folder} disagree on {' '.join(key)}",
                                    fix="keep one board per dataset in that folder")
                found[key] = value
    return found


def _result_cell(row: dict, results: dict) -> str:
    for task in row["tasks"]:
        if task in BUNDLED_RESULT:
            dataset, metric, label = BUNDLED_RESULT[task]
            if (dataset, row["name"], metric) in results:
                mean, std = results[(dataset, row["name"], metric)]
                return f"{dataset} {label} {mean:.4f} ± {std:.4f}"
    return "-"


# ----------------------------------------------------------------------------------------------------- datasets
_PREPARE_COMMAND = re.compile(r"python run\.py prepare [^`)\n]+")


def _yaml_text(path: Path | None) -> str:
    return path.read_text(encoding="utf-8") if path is not None and path.is_file() else ""


def _yaml_task(path: Path | None) -> str:
    import yaml

    data = yaml.safe_load(_yaml_text(path)) or {}
    return str(data.get("task") or "general") if isinstance(data, dict) else "general"


def _prepare_command(name: str, task: str, yaml_path: Path | None) -> str:
    """The command that makes ``name``: the one its dataset YAML documents, else the usual one for its task."""
    from recbole_ext.utils.paths import bundled_elsewhere

    elsewhere = bundled_elsewhere(name)
    if elsewhere:
        return elsewhere
    documented = _PREPARE_COMMAND.search(_yaml_text(yaml_path))
    if documented:
        return documented.group(0).strip().rstrip(".,;")
    return {"mmrec": f"python run.py prepare mmrec --src <MMRec folder> --name {name}",
            "medrec": f"python run.py prepare mimic3|mimic4|synthetic-ehr --name {name} ..."}.get(
        task, f"put RecBole atomic files into <dataset root>/{name}/")


def _is_prepared(folder: Path, name: str, task: str) -> bool:
    """The files a run of ``task`` reads first are there."""
    from recbole_ext.data.mmrec_format import MANIFEST_NAME

    if task == "medrec":
        return (folder / f"{name}.visit").is_file()
    if task == "mmrec":
        return (folder / f"{name}.inter").is_file() and (folder / MANIFEST_NAME).is_file()
    return (folder / f"{name}.inter").is_file()


def _shown_path(path: Path) -> str:
    from recbole_ext.utils.paths import PROJECT_ROOT

    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _dataset_row(name: str, root: Path) -> dict:
    from recbole_ext.data.multimodal import is_derived_on_first_use, mmrec_source_folder
    from recbole_ext.registry import dataset_property_file
    from recbole_ext.utils.paths import PROPERTIES_DIR

    own_yaml = PROPERTIES_DIR / "dataset" / f"{name}.yaml"
    task = _yaml_task(dataset_property_file(name))
    folder = root / name
    row = {"name": name, "task": task, "source": "dataset root", "path": str(folder), "where": _shown_path(folder),
           "prepared": _is_prepared(folder, name, task), "properties": str(own_yaml) if own_yaml.is_file() else None,
           "prepare": None}
    if not folder.is_dir():
        row.update(source="not prepared", where=f"{_shown_path(own_yaml)} (not prepared)")
        if is_derived_on_first_use(name):  # ml-100k-mm: built from RecBole's ml-100k by the first run naming it
            row.update(source="derived", where="built from RecBole's ml-100k on first run (features extra)")
        if task == "mmrec":  # a multimodal run converts an MMRec source folder by itself (data/multimodal.py)
            import yaml

            options = yaml.safe_load(_yaml_text(own_yaml)) or {}
            src = mmrec_source_folder({"mmrec_src": options.get("mmrec_src"), "data_path": str(folder),
                                       "dataset": name})
            if src.is_dir():
                row.update(source="MMRec source", path=str(src), prepared=True,
                           where=f"MMRec source {_shown_path(src)} (converted on first run)")
    if not row["prepared"]:
        row["prepare"] = _prepare_command(name, task, own_yaml)
    return row


def list_datasets() -> list[dict]:
    """One dict per dataset: name, task, source, path, prepared, properties (its YAML), prepare (the command)."""
    import recbole

    from recbole_ext.utils.paths import PROPERTIES_DIR, dataset_root

    package = Path(recbole.__file__).resolve().parent
    ml100k = package / "dataset_example" / "ml-100k"
    rows = [{"name": "ml-100k", "task": "general", "source": RECBOLE_BUILT_IN, "path": str(ml100k),
             "where": f"{RECBOLE_BUILT_IN} ({ml100k.relative_to(package.parent)})",
             "prepared": (ml100k / "ml-100k.inter").is_file(), "properties": None, "prepare": None}]
    root = dataset_root()
    names = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} if root.is_dir() else set()
    names = {n for n in names if n != "mmrec" or (root / n / "mmrec.inter").is_file()}  # mmrec/: MMRec sources
    names |= {p.stem for p in (PROPERTIES_DIR / "dataset").glob("*.yaml")}
    rows += [_dataset_row(name, root) for name in names - {"ml-100k"}]
    rank = {task: i for i, task in enumerate(TASK_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["task"], len(rank)), not r["prepared"], r["name"]))


# ------------------------------------------------------------------------------------------------------ metrics
def _metric_tasks(name: str, is_value_metric: bool) -> list[str]:
    from recbole_ext.registry import get_task

    tasks = []
    for task in TASK_ORDER:
        if is_value_metric and task != "general":  # the MMRec protocol ranks every item: no labels to score
            continue
        try:
            get_task(task).check_metrics({"metrics": [name], "dataset": "any"})
        except UserError:
            continue
        tasks.append(task)
    return tasks


def list_metrics() -> list[dict]:
    """One dict per metric RecBole knows after ``import recbole_ext``: name, tasks, better, topk, kind, source."""
    from recbole.evaluator import register
    from recbole.utils import EvaluatorType

    rows = []
    for key, cls in register.metrics_dict.items():
        is_value = register.metric_types[key] == EvaluatorType.VALUE
        better = "none" if getattr(cls, "descriptive", False) else (
            "lower" if key in register.smaller_metrics else "higher")
        needs = set(register.metric_information[key])
        # the medication metrics are RANKING to RecBole's collector, but they score predicted sets
        kind = "value" if is_value else "set" if any(n.startswith("medrec.") for n in needs) else "ranking"
        rows.append({"name": cls.__name__, "tasks": _metric_tasks(cls.__name__, is_value), "better": better,
                     # RecBole reports a metric at every cut-off of `topk` when it reads the top-K lists
                     "topk": bool(needs & {"rec.topk", "rec.items"}), "kind": kind,
                     "source": "recbole-ext" if cls.__module__.startswith("recbole_ext.") else RECBOLE_BUILT_IN})
    return rows


# ---------------------------------------------------------------------------------------------------- rendering
LISTERS = {"models": list_models, "datasets": list_datasets, "metrics": list_metrics}
COLUMNS = {  # (heading, key) of the text table of each kind
    "models": [("model", "name"), ("tasks", "tasks"), ("vectors", "vectors"), ("paper", "paper")],
    "datasets": [("dataset", "name"), ("task", "task"), ("prepared", "prepared"), ("where", "where"),
                 ("to prepare", "prepare")],
    "metrics": [("metric", "name"), ("tasks", "tasks"), ("better", "better"), ("top-K", "topk"),
                ("kind", "kind"), ("source", "source")],
}
# the markdown model table is the README's zoo table: the facts a reader compares models by
MARKDOWN_COLUMNS = {**COLUMNS, "models": [("model", "name"), ("tasks", "tasks"), ("paper", "paper"), ("year", "year"),
                                          ("uses", "uses"), ("vectors", "vectors"),
                                          ("parity with the official code", "parity")]}
RESULT_COLUMN = ("bundled data, tuned: test mean ± std", "result")


def _columns(kind: str, markdown: bool, rows: list[dict]) -> list[tuple[str, str]]:
    columns = (MARKDOWN_COLUMNS if markdown else COLUMNS)[kind]
    return columns + [RESULT_COLUMN] if rows and "result" in rows[0] else columns


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value) if value else "-"
    return "" if value is None else str(value)


def text_table(kind: str, rows: list[dict]) -> str:
    """The rows as an aligned table under a heading line (the last column is not padded)."""
    columns = _columns(kind, False, rows)
    cells = [[heading for heading, _ in columns]]
    cells += [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def markdown_table(kind: str, rows: list[dict]) -> str:
    """The rows as a GitHub markdown table (the README's model and dataset tables are this output)."""
    columns = _columns(kind, True, rows)

    def cell(key: str, value) -> str:
        text = _cell(value).replace("|", "\\|")  # a pipe inside a cell would split it
        # a command is code (its <placeholders> would otherwise be read as HTML tags and vanish)
        return f"`{text}`" if key == "prepare" and text else text

    lines = ["| " + " | ".join(heading for heading, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(key, row.get(key)) for _, key in columns) + " |" for row in rows]
    return "\n".join(lines)


SOURCES = {"recbole-ext": "recbole-ext", "recbole": RECBOLE_BUILT_IN}


LIST_EPILOG = ("models: TASKS are the tasks the model runs on (checked as a run checks them); VECTORS says whether it "
               "exposes final user/item vectors, which FAISS retrieval needs (`--retrieval=faiss`, the index of "
               "`run.py recommend`; other models are scored densely). datasets: PREPARED says whether its files are in place; otherwise TO PREPARE is the "
               "command that makes it. metrics: BETTER is the direction that wins model selection; TOP-K metrics "
               "are reported at every cut-off of `topk` (recall@10, ...).")


def build_parser() -> CommandParser:
    parser = CommandParser(prog="run.py list", epilog=LIST_EPILOG,
                           description="List the models, datasets or metrics recbole-ext can run, with the task "
                                       "each belongs to. Nothing is trained or loaded: it reads the registry, the "
                                       "model classes, properties/dataset/ and the dataset root.")
    parser.add_argument("what", choices=KINDS, help="what to list")
    parser.add_argument("--task", choices=TASK_ORDER,
                        help="only what runs on this task: general (RecBole's protocol), mmrec (multimodal, MMRec "
                             "protocol) or medrec (medication sets)")
    parser.add_argument("--source", choices=tuple(SOURCES),
                        help="models and metrics: only recbole-ext's own or only RecBole's built-in ones")
    parser.add_argument("--results", metavar="DIR",
                        help="models: add each model's test result on its task's bundled dataset (synth-mm "
                             "Recall@20, synth-ehr-small Jaccard) from the leaderboard outputs under DIR "
                             "(e.g. docs/results)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    output.add_argument("--markdown", action="store_true", help="print a markdown table (as in the README)")
    return parser


def catalog(what: str, task: str | None = None, source: str | None = None,
            results: str | Path | None = None) -> list[dict]:
    """The rows of ``run.py list WHAT [--task TASK] [--source SOURCE] [--results DIR]``."""
    if what not in LISTERS:
        raise UserError(f"cannot list '{what}'", fix=f"use one of: {', '.join(KINDS)}")
    if task is not None and task not in TASK_ORDER:
        raise UserError(f"unknown task '{task}'", fix=f"use one of: {', '.join(TASK_ORDER)}")
    if source is not None and (source not in SOURCES or what == "datasets"):
        raise UserError(f"--source {source} does not apply to {what}",
                        fix=f"list models or metrics with --source {' or '.join(SOURCES)}")
    rows = LISTERS[what]()
    if task is not None:
        rows = [r for r in rows if task in (r["tasks"] if "tasks" in r else [r["task"]])]
    if source is not None:
        rows = [r for r in rows if r["source"] == SOURCES[source]]
    if results is not None:
        if what != "models":
            raise UserError(f"--results does not apply to {what}", fix="list models with --results DIR")
        scores = board_results(results)
        rows = [{**r, "result": _result_cell(r, scores)} for r in rows]
    return rows


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    rows = catalog(args.what, args.task, args.source, args.results)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.markdown:
        print(markdown_table(args.what, rows))
        return 0
    print(text_table(args.what, rows))
    if args.what == "models" and args.task in (None, "general") and args.source != "recbole-ext":
        print("\n" + textwrap.fill(OTHER_RECBOLE_FAMILIES, width=110))
    return 0
