"""Every configuration key of a leaderboard spec is one its runs read, checked before the first run starts.

A spec's ``config``, ``dataset_config``, each model's ``config``, ``grid`` and search space (its ``search:`` or
``properties/search/<Model>.yaml``) reach ``quick_start.run`` of every (model, dataset) they apply to, which
refuses a key the run does not know (``recbole_ext.config_keys``): a board would otherwise fail run by run in its
workers. The check needs the models' classes, so it runs where the leaderboard runs the real ``quick_start.run``
(``leaderboard.cli``), not in ``parse_spec`` (tests parse specs of stand-in models).
"""
from __future__ import annotations

from recbole_ext.config_keys import KeyOrigin, UnknownKeyError, allows_unknown_keys, find_unknown
from recbole_ext.leaderboard.plan import run_config
from recbole_ext.leaderboard.tuning_spec import space_for


def check_spec_keys(spec) -> None:
    """Raise ``UnknownKeyError`` naming each spec entry that sets a key one of its runs does not know (a shared
    ``config:`` key counts for every model it reaches), unless the run sets ``allow_unknown_keys``."""
    from recbole_ext.registry import model_class

    problems, seen = [], set()
    for index, model in enumerate(spec.models):
        cls = model_class(model.name)
        for dataset in filter(model.runs_on, spec.datasets):
            given = run_config(spec, model, dataset, {}, spec.seeds[0])
            if allows_unknown_keys(given):
                continue
            sources = [(KeyOrigin("spec", f"{spec.source}: config"), list(spec.config)),
                       (KeyOrigin("spec", f"{spec.source}: dataset_config.{dataset}"),
                        list(spec.dataset_config.get(dataset, {}))),
                       (KeyOrigin("spec", f"{spec.source}: models[{index}].config"), list(model.config)),
                       (KeyOrigin("spec", f"{spec.source}: models[{index}].grid"), list(model.grid))]
            if spec.tuning is not None:
                space = space_for(model, spec.source)
                sources.append((KeyOrigin("spec", space.origin), space.names()))
            for problem in find_unknown(model.name, cls, dataset, sources, given):
                if (problem.origin, problem.key) not in seen:  # a shared key: once, for the first model it fails
                    seen.add((problem.origin, problem.key))
                    problems.append(problem)
    if problems:
        raise UnknownKeyError(problems)
