"""Expanding a hyper-parameter grid into its points, the one expansion behind the model-YAML grid search
(recbole_ext/grid_search.py) and a leaderboard spec's ``grid:`` (recbole_ext/leaderboard/spec.py)."""
from __future__ import annotations

import itertools
from collections.abc import Mapping


def grid_points(grid: Mapping[str, list]) -> list[dict]:
    """Every combination of ``grid``'s values, as ``{key: value}`` dicts.

    Order: the Cartesian product in the mapping's own key order, the last key varying fastest, each key's values
    in their listed order (as MMRec iterates its ``hyper_parameters``). The order matters wherever the first of
    equally good points is kept, so a caller that wants another order passes the mapping in that order: the grid
    search keeps the YAML's declaration order, a leaderboard sorts the keys by name. An empty grid has one point,
    ``{}`` (the defaults).
    """
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
