"""The tuning section of a tuned leaderboard: budget, trials per model, chosen configuration, best validation
score, wall time, every trial in ``tuning.csv``, and best-so-far curves (was the budget enough?)."""
from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

from recbole_ext.leaderboard.report_format import fmt, grid_text, pyplot, safe_name, save_figure
from recbole_ext.utils.io import atomic_file


def _config_text(point: dict | None) -> str:
    return "no finished trial" if point is None else grid_text(point)


def budget_text(tuning) -> str:
    text = (f"{tuning.trials} trials per model ({tuning.sampler} sampler, seed {tuning.seed}), at most "
            f"{tuning.max_epochs} epochs per trial, pruner {tuning.pruner}")
    for dataset, own in sorted(tuning.per_dataset.items()):
        text += f"; on {dataset}: " + ", ".join(f"{k} {v}" for k, v in sorted(own.items()))
    return text


def _counts(outcome) -> str:
    states = [t.state for t in outcome.trials]
    done = f"{len(states)}/{outcome.budget}"
    extra = [f"{states.count(s)} {s.lower()}" for s in ("PRUNED", "FAIL") if states.count(s)]
    if outcome.exhausted:
        extra.append("space exhausted")
    if outcome.repeats:
        extra.append(f"{outcome.repeats} repeated proposals not run")
    return done + (f" ({', '.join(extra)})" if extra else "")


def rows(studies) -> list[list[str]]:
    """One row per (dataset, model): dataset, model, trials, chosen configuration, best valid, wall time."""
    return [[o.dataset, o.model, _counts(o), _config_text(o.chosen), fmt(o.best_value),
             f"{o.wall_time_s / 60:.1f}"] for o in studies]


HEADER = ["dataset", "model", "trials", "chosen configuration", "best valid", "tuning min"]


def markdown(studies, tuning, plots: list[str]) -> list[str]:
    lines = ["## Tuning", "", f"Budget, the same for every model: {budget_text(tuning)}. Selection on the validation "
             "metric only; trials never score the test split. Search spaces and their sources: "
             "docs/leaderboard.md, 'Search spaces'.", "",
             "| " + " | ".join(HEADER) + " |", "|---" * len(HEADER) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(studies)]
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return lines + [""]


def html_section(studies, tuning) -> str:
    e = html.escape
    parts = [f"<h2>Tuning</h2><p class='muted'>Budget, the same for every model: {e(budget_text(tuning))}. "
             "Selection on validation only; trials never score the test split.</p>",
             "<table class='sortable' id='tuning'><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEADER)
             + "</tr></thead><tbody>"]
    for r in rows(studies):
        parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


def write_csv(out_dir: Path, studies) -> Path:
    path = Path(out_dir) / "tuning.csv"
    with atomic_file(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "model", "study", "trial", "state", "best_valid_score", "params", "chosen", "run_key",
                    "wall_time_s"])
        for o in studies:
            for t in o.trials:
                w.writerow([o.dataset, o.model, o.study_name, t.number, t.state, "" if t.value is None else t.value,
                            json.dumps(t.params, sort_keys=True), int(o.chosen is not None and t.params == o.chosen
                                                                      and t.state == "COMPLETE"),
                            t.run_key or "", "" if t.wall_time_s is None else t.wall_time_s])
    return path


def best_so_far(outcome) -> list[float]:
    """After each finished trial (by number), the best validation score of the complete trials so far."""
    best, out, bigger = None, [], outcome.bigger
    for t in outcome.trials:
        if t.state == "COMPLETE" and t.value is not None:
            best = t.value if best is None else (max(best, t.value) if bigger else min(best, t.value))
        out.append(math.nan if best is None else best)
    return out


def plots(plot_dir: Path, studies) -> list[str]:
    """One PNG per dataset: best-so-far validation score against trials, one line per model."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    written = []
    for dataset in dict.fromkeys(o.dataset for o in studies):
        shown = [o for o in studies if o.dataset == dataset and o.trials]
        if not shown:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for i, o in enumerate(shown):
            ys = best_so_far(o)
            ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, lw=1.2, color=plt.get_cmap("tab10")(i % 10),
                    label=o.model)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trials finished")
        ax.set_ylabel("best validation score so far")
        ax.set_title(f"{dataset}: tuning progress (still rising at the end: the budget was short)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        written.append(save_figure(fig, plot_dir, f"tuning_{safe_name(dataset)}.png"))
    return written
