"""The one entry point for a run: ``run(model, dataset, ...) -> RunResult``.

The CLI, the leaderboard, the tests and RecBole's own ``run_recbole`` (re-bound on import) all come through here,
so a fix lands everywhere. A run: build the config (YAML overlay, type checks) -> the task makes the dataset and
its splits -> the model -> the task's trainer (optionally with FAISS evaluation) -> fit on validation -> test
the best checkpoint -> write ``config.yaml`` and ``result.json`` in the run directory.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from logging import getLogger
from pathlib import Path

import yaml

from recbole_ext.compat import NO_FILES_MARKER, RUN_LOG_MARKER
from recbole_ext.errors import UserError
from recbole_ext.utils.io import atomic_file, make_dirs, new_folders_removed_on
from recbole_ext.utils.paths import shown_path
from recbole_ext.version import __version__, library_versions


@dataclass
class RunResult:
    model: str
    dataset: str
    task: str
    run_dir: str | None
    checkpoint: str | None
    config: dict
    best_valid_score: float | None
    best_valid_result: dict
    test_result: dict
    history: list = field(default_factory=list)
    wall_time_s: float = 0.0
    peak_rss_mb: float = 0.0
    protocol: dict = field(default_factory=dict)
    stopped_at_epoch: int | None = None  # set when ``on_valid`` stopped training (a pruned tuning trial)
    # {"users": [token, ...], "metrics": {metric: [value per user, ...]}} of the test evaluation; {} when the
    # evaluation has no per-user metric. Written to per_user_test.json, not result.json (one value per user).
    per_user_test: dict = field(default_factory=dict)
    best_epoch: int | None = None  # the selected (best validated) epoch, 0-based as in history; None if none ran
    epochs_trained: int = 0
    versions: dict = field(default_factory=dict)  # recbole-ext and the libraries that shape results

    def to_dict(self) -> dict:
        return asdict(self)


def _check_cutoffs(config, dataset) -> None:
    """A top-K cutoff above the number of items failed in torch.topk after the first training epoch."""
    from recbole_ext.config import computed_metrics

    n_items = getattr(dataset, "item_num", None)
    topk = config["topk"] or []
    if n_items is None or not any("@" in m for m in computed_metrics(config["metrics"], topk)):
        return  # no top-K metric (medication sets, AUC, ...)
    if max(topk) > n_items - 1:  # RecBole's item ids start at 1 (0 is padding)
        fitting = [k for k in topk if k <= n_items - 1]
        raise UserError(f"topk {max(topk)} exceeds the {n_items - 1} items of dataset '{config['dataset']}'",
                        fix=f"set --topk={fitting or [min(10, n_items - 1)]} (and valid_metric to one of them)")


def _plain_line(result) -> str:
    """``key value`` pairs for the log: numpy 2's repr would print ``OrderedDict([('recall@10', np.float64(...))])``."""
    from recbole_ext.training.history import plain_floats

    return "    ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in plain_floats(result).items()) or "-"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


_EXT_HANDLER = RUN_LOG_MARKER  # the shim tensorboard_beside_run_log writes log_tensorboard/ beside this file


def _init_logging(config, run_dir: Path | None, quiet: bool = False) -> None:
    """Log everything to ``run_dir/run.log``; the console gets the quiet view of utils/console.py (``verbose``: all
    of it). Safe to call for many runs in one process. ``quiet``: warnings only, no file at all (not even RecBole's
    tensorboard folder): a data-parallel rank other than 0."""
    from recbole.utils.logger import RemoveColorFilter

    from recbole_ext.options import config_flag
    from recbole_ext.utils.console import console_handler

    root = logging.getLogger()
    for h in list(root.handlers):
        # the console handler too: it is made again below for this run's verbosity and today's sys.stderr
        if getattr(h, _EXT_HANDLER, False) or getattr(h, _EXT_HANDLER + "_console", False) or \
                isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
    level = logging.WARNING if quiet else getattr(logging, str(config["state"] or "INFO").upper(), logging.INFO)
    root.setLevel(level)
    # before the file handler: its RemoveColorFilter rewrites the record, and a terminal keeps RecBole's colours
    sh = console_handler(sys.stderr, verbose=config_flag(config, "verbose", False))
    sh.setLevel(level)
    setattr(sh, _EXT_HANDLER + "_console", True)
    setattr(sh, NO_FILES_MARKER, quiet)
    root.addHandler(sh)
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S"))
        fh.addFilter(RemoveColorFilter())
        setattr(fh, _EXT_HANDLER, True)
        root.addHandler(fh)


def precedence_lines(config) -> list[str]:
    """One log line per key that both the dataset YAML and the model YAML set: which value the run uses and why."""
    from recbole_ext.registry import yaml_conflicts

    lines = []
    for key, from_dataset, from_model, dataset_file, model_file in yaml_conflicts(config["model"],
                                                                                 config["dataset"]):
        if key in config.external_config_dict:
            used = f"{config[key]!r} from the run's config files / command line, which win over both"
        else:
            used = f"{from_model!r}: the model YAML wins over the dataset YAML"
        lines.append(f"config precedence: {key} is {from_dataset!r} in {dataset_file} and {from_model!r} in "
                     f"{model_file}; used {used}")
    return lines


def _trainer_class(task, config, model_cls):
    from recbole_ext.registry import load_object
    from recbole_ext.training.history import with_history
    from recbole_ext.training.precision import with_precision

    cls = load_object(model_cls.ext_trainer) if getattr(model_cls, "ext_trainer", None) else \
        task.trainer_class(config, model_cls)
    if str(config["retrieval"] or "dense").lower() == "faiss":
        from recbole_ext.retrieval.evaluation import with_faiss_eval

        cls = with_faiss_eval(cls)
    elif str(config["retrieval"] or "dense").lower() != "dense":
        raise UserError(f"retrieval must be 'dense' or 'faiss', got {config['retrieval']!r}",
                        fix="set --retrieval=faiss or --retrieval=dense")
    from recbole_ext.utils import distributed

    if distributed.active():
        from recbole_ext.training.distributed import with_distributed

        cls = with_distributed(cls)
    cls = with_precision(cls)  # precision: bf16 runs each batch's loss under autocast; fp32 changes nothing
    return with_history(cls)  # outermost: it records what the whole trainer does in each epoch


def run(model: str, dataset: str, config_dict: dict | None = None, config_files: list[str] | None = None,
        saved: bool = True, on_valid=None) -> RunResult:
    """Train on the training split, select on validation, test the selected model once (unless the config sets
    ``evaluate_test: False``, as tuning trials do: then the test split is never scored).

    ``on_valid(epoch, score, bigger)``, if given, is called after each validation (``bigger``: the direction of
    ``valid_metric``); returning True stops training there
    (the result then carries ``stopped_at_epoch`` and the best validation score so far)."""
    from recbole_ext.config import build_config
    from recbole_ext.registry import model_class
    from recbole_ext.run_status import status_marked

    from recbole_ext.utils import distributed as dist

    start = time.time()
    config, task = build_config(model, dataset, _with_visible_gpus(config_dict), config_files)
    launched = _join_process_group(config)
    try:
        run_dir = Path(_decided_by_rank0(lambda: _new_run_dir(config, model, dataset)))
        if not dist.is_main():  # the other ranks train and evaluate; they write nothing
            return _run_elsewhere(config, task, model_class(model), run_dir, saved, start, on_valid)
        # a user mistake leaves nothing half-written, not even the runs/ folder this run created
        with new_folders_removed_on(run_dir, UserError):
            make_dirs(run_dir, "run directory")
            config["run_dir"] = str(run_dir)
            config["checkpoint_dir"] = str(run_dir)
            try:
                with status_marked(run_dir):  # status.json: running, then complete / interrupted / failed
                    return _run_in(config, task, model_class(model), run_dir, saved, start, on_valid)
            except UserError as exc:
                if exc.mistake:
                    shutil.rmtree(run_dir, ignore_errors=True)  # even when it existed (empty) before
                raise
    finally:
        if launched:
            dist.stop()


def _new_run_dir(config, model: str, dataset: str) -> str:
    from recbole_ext.config import new_run_dir

    run_dir = Path(config["run_dir"]) if config["run_dir"] else new_run_dir(model, dataset, config["runs_root"])
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} already exists and is not empty",
                        fix="choose another --run_dir or remove it")
    return str(run_dir)


# ---- data-parallel runs (torchrun): training/distributed.py holds the trainer side ---------------------------


def _with_visible_gpus(config_dict: dict | None) -> dict | None:
    """Under torchrun, every GPU stays visible (RecBole's ``gpu_id``, default "0", would otherwise set
    CUDA_VISIBLE_DEVICES=0 in every rank); each rank then takes ``cuda:LOCAL_RANK``."""
    from recbole_ext.utils.distributed import launch_from_environment

    if launch_from_environment() is None or "gpu_id" in (config_dict or {}):
        return config_dict
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(str(i) for i in range(torch.cuda.device_count()))
    return {**(config_dict or {}), "gpu_id": visible}


def _join_process_group(config) -> bool:
    """Join torchrun's process group when this process is one of several; True if it joined."""
    import torch

    from recbole_ext.options import POSITIVE, number_value
    from recbole_ext.utils import distributed as dist

    launch = dist.launch_from_environment()
    if launch is None:
        return False
    timeout = number_value(config, "dist_timeout", 600.0, float, POSITIVE)
    cuda = config["device"].type == "cuda"
    if cuda:
        torch.cuda.set_device(launch.local_rank)
        config["device"] = torch.device("cuda", launch.local_rank)
    dist.start(launch, "nccl" if cuda else "gloo", timeout)
    # MMRecTrainer's Adam step inside backward would update a table before DDP has averaged its gradient; the
    # plain step is the same update (it costs a full-size gradient of the table)
    config["row_update_features"] = False
    if launch.rank != 0:
        config["show_progress"] = False
    return True


def _decided_by_rank0(decide):
    """``decide()`` run by rank 0 alone, its value (or its UserError) on every rank."""
    from recbole_ext.utils import distributed as dist

    value, error = None, None
    if dist.is_main():
        try:
            value = decide()
        except UserError as exc:
            if not dist.active():
                raise
            error = (exc.message, exc.fix)
    value, error = dist.broadcast_object((value, error), "agreeing on the run directory")
    if error:
        raise UserError(*error)
    return value


def _run_elsewhere(config, task, model_cls, run_dir: Path, saved: bool, start: float, on_valid) -> RunResult:
    """A rank other than 0: the same run, with RecBole's checkpoint folder in a temporary directory it removes and
    no file of its own (rank 0 writes ``run_dir``)."""
    import tempfile

    config["run_dir"] = str(run_dir)
    with tempfile.TemporaryDirectory(prefix="recbole-ext-rank") as scratch:
        config["checkpoint_dir"] = scratch
        return _run_in(config, task, model_cls, run_dir, saved, start, on_valid, writes=False)


def _run_in(config, task, model_cls, run_dir: Path, saved: bool, start: float, on_valid=None,
            resume_state: dict | None = None, writes: bool = True) -> RunResult:
    """The run itself; ``resume_state`` (a loaded ``last.pth``) continues an interrupted run after its last saved
    epoch instead of starting at epoch 0 (:func:`resume`). ``writes=False``: a data-parallel rank other than 0,
    which logs warnings to the console only and writes no file."""
    from recbole.utils import init_seed

    from recbole_ext.checkpoint import id_maps_of, to_plain
    from recbole_ext.evaluation.per_user import evaluate_per_user
    from recbole_ext.training.history import StopTraining, plain_floats
    from recbole_ext.training.resume_state import EpochResumeState, resume_every
    from recbole_ext.utils.console import PROGRESS, is_terminal

    _init_logging(config, run_dir if writes else None, quiet=not writes)
    logger = getLogger()
    epochs = config["epochs"]
    logger.info(f"{config['model']} on {config['dataset']} ({task.name}), up to {epochs} epoch"
                f"{'' if epochs == 1 else 's'}; full log: {shown_path(run_dir / 'run.log')}", extra=PROGRESS)
    init_seed(config["seed"], config["reproducibility"])
    logger.info(config)
    for line in precedence_lines(config):
        logger.info(line)
    dataset = task.create_dataset(config)
    logger.info(dataset)
    _check_cutoffs(config, dataset)
    train_data, valid_data, test_data = task.data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_cls(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = _trainer_class(task, config, model_cls)(config, model)
    trainer.saved_model_file = str(run_dir / "model.pth")  # written by rank 0 only in a data-parallel run
    trainer.ext_id_maps = id_maps_of(dataset)
    trainer.on_valid, trainer.valid_bigger = on_valid, bool(config["valid_metric_bigger"])

    # last.pth after validated epochs (with model.pth only: a resume tests the best weights that file holds)
    epoch_state = EpochResumeState(trainer, {"train": train_data, "valid": valid_data, "test": test_data}, run_dir,
                                   start, every=resume_every(config) if saved and writes else 0)
    if resume_state is not None:
        epoch_state.restore(resume_state)
        logger.info(f"resumed from {epoch_state.path} after epoch {trainer.start_epoch - 1}")

    # per-batch bars only on a terminal: redirected to a file, each bar is hundreds of carriage-return updates
    show = bool(config["show_progress"]) and is_terminal(sys.stderr)
    stopped_at = None
    try:
        if resume_state is None or epoch_state.training_left():
            best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                              show_progress=show, callback_fn=epoch_state)
        else:
            best_valid_score, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
    except StopTraining as stop:
        stopped_at = stop.epoch
        best_valid_score, best_valid_result = trainer.best_so_far()
        logger.info(f"training stopped after epoch {stop.epoch} by the caller (pruned)")
    if config["evaluate_test"] is False:  # tuning trials: nothing about the test split may reach a choice
        test_result, per_user = {}, {}
        logger.info("test split not evaluated (evaluate_test: False)")
    else:
        test_result, per_user = evaluate_per_user(trainer, test_data, dataset, load_best_model=saved,
                                                  show_progress=show)
    logger.info(f"best valid : {_plain_line(best_valid_result)}")
    logger.info(f"test result: {_plain_line(test_result)}")

    checkpoint = trainer.saved_model_file if saved and os.path.isfile(trainer.saved_model_file) else None
    best = trainer.best_entry()
    result = RunResult(
        model=str(config["model"]), dataset=str(config["dataset"]), task=task.name, run_dir=str(run_dir),
        checkpoint=checkpoint, config=to_plain(config.final_config_dict),
        best_valid_score=None if best_valid_score is None else float(best_valid_score),
        best_valid_result=plain_floats(best_valid_result), test_result=plain_floats(test_result),
        history=trainer.history,
        wall_time_s=time.time() - start, peak_rss_mb=_peak_rss_mb(), protocol=to_plain(task.protocol(config)),
        stopped_at_epoch=stopped_at,
        per_user_test=per_user,
        best_epoch=None if best is None else best["epoch"],
        epochs_trained=len(trainer.history),
        versions={"recbole-ext": __version__, **library_versions()},
    )
    if not writes:
        getattr(trainer, "tensorboard", None) and trainer.tensorboard.close()
        return result
    with atomic_file(run_dir / "config.yaml") as fh:
        yaml.safe_dump(result.config, fh, sort_keys=True)
    summary = result.to_dict()
    summary.pop("per_user_test")
    with atomic_file(run_dir / "result.json") as fh:
        json.dump(summary, fh, indent=2, default=str)
    if per_user:
        with atomic_file(run_dir / "per_user_test.json") as fh:
            json.dump(per_user, fh)
    getattr(trainer, "tensorboard", None) and trainer.tensorboard.close()
    return result


def _stored_config(state: dict, overrides: dict | None = None):
    """``(config, task)`` rebuilt from a checkpoint's stored external config through the same YAML defaults, with
    ``overrides`` on top. The stored keys were accepted when the run was made (a later version may no longer know
    one of them); only the overrides are checked. The stored run directory is dropped: the caller sets its own."""
    from recbole_ext.config import build_config

    external = {**state["external_config"], **(overrides or {})}
    external.pop("run_dir", None)
    stored_keys = set(state["external_config"]) - set(overrides or {})
    return build_config(state["model"], state["dataset"], external, trusted_keys=stored_keys)


def resume(run_dir: str | os.PathLike, epochs: int | None = None) -> RunResult:
    """Continue an interrupted (or failed) run in its own directory from its resume state (``last.pth``), then test
    and write its results exactly as :func:`run` would: with the same seed, the result equals an uninterrupted run's.

    The configuration is rebuilt from the stored external config through the same YAML defaults (as
    :func:`load_run` does); ``epochs`` replaces the configured number of epochs (to train longer than planned)."""
    from recbole_ext import checkpoint as ckpt
    from recbole_ext.registry import model_class
    from recbole_ext.run_status import check_resumable, status_marked
    from recbole_ext.training.resume_state import check_resume_state

    from recbole_ext.utils.distributed import launch_from_environment

    if launch_from_environment() is not None:
        raise UserError("resume runs in one process", fix="run `python run.py resume RUN_DIR` without torchrun")
    run_dir = Path(run_dir)
    resume_file = check_resumable(run_dir)
    state = ckpt.load(resume_file)
    check_resume_state(state, resume_file)
    config, task = _stored_config(state, None if epochs is None else {"epochs": epochs})
    config["run_dir"] = config["checkpoint_dir"] = str(run_dir)
    start = time.time() - float(state["resume"]["elapsed_s"])  # wall_time_s counts the epochs kept
    with status_marked(run_dir):
        return _run_in(config, task, model_class(state["model"]), run_dir, True, start, resume_state=state)


def load_run(checkpoint_path: str | os.PathLike, config_overrides: dict | None = None):
    """Rebuild ``(config, model, dataset, train, valid, test)`` from a recbole-ext checkpoint.

    The configuration is rebuilt from the stored external config through the same YAML defaults; the dataset is
    re-read and its id maps must equal the stored ones, so a changed dataset is an error, not silent garbage.
    """
    from recbole.utils import init_seed

    from recbole_ext import checkpoint as ckpt
    from recbole_ext.registry import model_class

    state = ckpt.load(checkpoint_path, mmap=True)  # the optimiser state is never read
    config, task = _stored_config(state, config_overrides)
    init_seed(config["seed"], config["reproducibility"])
    dataset = task.create_dataset(config)
    train_data, valid_data, test_data = task.data_preparation(config, dataset)
    ckpt.check_id_maps(state, ckpt.id_maps_of(dataset))
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(state["model"])(config, train_data._dataset).to(config["device"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:  # torch's first line only says "Error(s) in loading state_dict for X:"
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3]) or str(exc).strip()
        raise UserError(f"checkpoint weights do not fit model {state['model']}: {detail[:300]}",
                        fix="the model's configuration or the dataset's item features (their width) changed since "
                            "training") from None
    model.load_other_parameter(ckpt.other_parameter_of(state))
    model.eval()
    return config, model, dataset, train_data, valid_data, test_data


# ---- RecBole's own entry points, re-bound on import of recbole_ext (install_recbole_entry_points) -------------


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    """``recbole.quick_start.run_recbole`` with recbole-ext tasks, models and safe checkpoints."""
    result = run(model, dataset, config_dict=config_dict, config_files=config_file_list, saved=saved)
    out = {"best_valid_score": result.best_valid_score,
           "valid_score_bigger": bool(result.config.get("valid_metric_bigger", True)),
           "best_valid_result": result.best_valid_result, "test_result": result.test_result}
    if queue is not None:
        queue.put(out)
    return out


def load_data_and_model(model_file):
    """``recbole.quick_start.load_data_and_model`` for recbole-ext checkpoints (weights_only loading)."""
    return load_run(model_file)


def install_recbole_entry_points() -> None:
    """Re-bind ``recbole.quick_start.run_recbole`` / ``load_data_and_model`` (in the package and the module that
    define them) to the versions above, which run the same code path as :func:`run`. Idempotent."""
    import recbole.quick_start as qs_pkg
    import recbole.quick_start.quick_start as qs

    for module in (qs_pkg, qs):
        if not hasattr(module.run_recbole, "__ext_original__"):
            run_recbole.__ext_original__ = module.run_recbole
        module.run_recbole = run_recbole
        module.load_data_and_model = load_data_and_model


def result_table(result: RunResult) -> str:
    """The two-row table the CLI prints."""
    keys = list(result.test_result) or list(result.best_valid_result)
    keys = [k for k in keys if not k.endswith("_std")]
    width = max([len(k) for k in keys] + [6])
    lines = [f"{'metric':<{width}}  {'valid':>10}  {'test':>17}", "-" * (width + 31)]
    for k in keys:
        valid = result.best_valid_result.get(k)
        test = result.test_result.get(k)
        std = result.test_result.get(f"{k}_std")
        test_s = "" if test is None else (f"{test:.4f} ± {std:.4f}" if std is not None else f"{test:.4f}")
        lines.append(f"{k:<{width}}  {'' if valid is None else f'{valid:.4f}':>10}  {test_s:>17}")
    return "\n".join(lines)


def _stop_reason(result: RunResult) -> str:
    """Why training ended, from what the result records (early stopping is inferred: fewer epochs than asked,
    none after the selected one improved on it)."""
    if result.stopped_at_epoch is not None:
        return f"pruned by the tuner after epoch {result.stopped_at_epoch + 1}"
    planned = result.config.get("epochs")
    if not result.history or planned is None or result.epochs_trained >= planned:
        return "reached epochs" if planned is None else f"reached epochs={planned}"
    last = result.history[-1]["epoch"]
    if result.best_epoch is None or last <= result.best_epoch:  # e.g. a NaN loss in the epoch after the best one
        return f"stopped after epoch {last + 1} (run.log says why)"
    return (f"early stopping: no better valid {str(result.config.get('valid_metric', '')).lower()} in the "
            f"{last - result.best_epoch} epochs after epoch {result.best_epoch + 1}")


def _next_command(result: RunResult) -> str | None:
    """A ``recommend`` command for this run's checkpoint, with a real user of the test split (or the example
    patient of the medication track); None when the run saved no checkpoint."""
    import shlex

    if not result.checkpoint or not result.run_dir:
        return None
    head = f"python run.py recommend --checkpoint {shlex.quote(shown_path(result.run_dir))}"
    if result.task == "medrec":
        return f"{head} --patient examples/patient.json"
    users = (result.per_user_test or {}).get("users") or []
    return f"{head} --user {shlex.quote(str(users[0])) if users else 'USER_TOKEN'}"


def run_summary(result: RunResult) -> str:
    """What the CLI prints after :func:`result_table`: the selected epoch (1-based, as in the per-epoch lines;
    result.json keeps it 0-based), the epochs trained and why training stopped, the wall time, what ± means when
    the test column has one, the run directory and a command to try next."""
    from recbole_ext.utils.console import format_duration

    rows = []
    if result.best_epoch is not None:
        metric = str(result.config.get("valid_metric", "")).lower()
        score = "" if result.best_valid_score is None else f" (valid {metric} {result.best_valid_score:.4f})"
        rows.append(("best epoch", f"{result.best_epoch + 1}{score}"))
    else:
        rows.append(("best epoch", "none validated"))
    planned = result.config.get("epochs")
    rows.append(("epochs", f"{result.epochs_trained}" + (f" of {planned}" if planned is not None else "")
                 + f", {_stop_reason(result)}"))
    rows.append(("wall time", format_duration(result.wall_time_s)))
    if any(k.endswith("_std") for k in result.test_result):
        how = (result.protocol or {}).get("test") or "standard deviation over the test evaluation's resamples"
        rows.append(("±", f"the test column is mean ± std ({how})"))
    if not result.test_result and result.config.get("evaluate_test") is False:
        rows.append(("test", "not evaluated (evaluate_test: False)"))
    if result.run_dir:
        rows.append(("run directory", shown_path(result.run_dir)))
    command = _next_command(result)
    if command:
        rows.append(("next", command))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {text}" for label, text in rows)
