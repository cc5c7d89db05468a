"""Leaderboard outputs: Markdown, CSV and LaTeX tables, PNG plots and one self-contained HTML page.

Every file is written atomically; the HTML page needs no network (inline CSS/JS, plots embedded as base64 PNG).
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

from recbole_ext.leaderboard import tuning_report
from recbole_ext.leaderboard.report_format import (fmt, fmt_effect, fmt_p, fmt_signed, grid_text, pyplot, safe_name,
                                                   save_figure)
from recbole_ext.leaderboard.stats import BOOTSTRAP_ROUNDS, DatasetTable, metric_direction
from recbole_ext.utils.io import atomic_dir, atomic_file

ACCURACY_FOR_DDI_PLOT = ("jaccard", "f1", "prauc")


TEST_TEXT = ("Tests of the best model of each column against every other model, one-sided in the metric's "
             "direction. Per user (primary): the unit is the test user (patient); each user's value is the mean of "
             "that model's per-user values over the seeds both models ran, and the users both models evaluated are "
             "paired; paired t-test / Wilcoxon signed-rank test, p adjusted by Holm over all per-user comparisons "
             "of the dataset's table (every model against the best, every metric with a direction); d_z = mean / sd "
             "of the per-user differences; Δ = mean over users of best − model (negative on ↓ metrics when the "
             f"best is better) with a 95 % bootstrap interval ({BOOTSTRAP_ROUNDS} resamples of users). Per seed "
             "(secondary): paired t / Wilcoxon over the seed means, uncorrected. n/a: no per-user values for that "
             "pair (a metric that is not a mean over users, such as ItemCoverage or AUC, or runs of a run function "
             "that does not record them).")


def user_p_text(test) -> str:
    return "n/a" if test is None else f"{fmt_p(test.t_p_holm)} / {fmt_p(test.wilcoxon_p_holm)}"


def diff_text(test) -> str:
    if test is None:
        return "n/a"
    return f"{fmt_signed(test.mean_diff)} [{fmt_signed(test.ci_low)}, {fmt_signed(test.ci_high)}]"


def family_size(table: DatasetTable) -> int:
    """Per-user comparisons with a p-value (fewer than two paired users give none): the Holm family."""
    return sum(not math.isnan(t.t_p) for t in table.user_tests.values())


def compared(table: DatasetTable) -> list[tuple[str, str]]:
    """(model, metric) pairs compared with the best model, in table order (models, then metrics)."""
    return [(model, metric) for model in table.models for metric in table.metrics
            if (model, metric) in table.tests or (model, metric) in table.user_tests]


def cell_text(table: DatasetTable, model: str, metric: str) -> tuple[str, bool]:
    cell = table.cells.get((model, metric))
    if cell is None:
        return "—", False
    std = "" if math.isnan(cell.std) else f" ± {fmt(cell.std)}"
    return f"{fmt(cell.mean)}{std}", cell.best


def arrow(metric: str) -> str:
    return {1: "↑", -1: "↓", 0: ""}[metric_direction(metric)]


def provenance(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    libs = {}
    for r in rows:
        for k, v in (r.get("library_versions") or {}).items():
            libs.setdefault(k, set()).add(v)
    protocols = {}
    for r in ok:
        protocols.setdefault(r["dataset"], set()).add(json.dumps(r.get("protocol") or {}, sort_keys=True))
    hashes = {}
    for r in rows:
        hashes.setdefault(r["dataset"], set()).add((r.get("dataset_sha256"), r.get("ddi_sha256")))
    return {"code_versions": sorted({r.get("code_version") or "unknown" for r in rows}),
            "libraries": {k: sorted(v) for k, v in sorted(libs.items())},
            "protocols": {d: [json.loads(p) for p in sorted(v)] for d, v in protocols.items()},
            "dataset_hashes": {d: sorted(v, key=str) for d, v in hashes.items()},
            "runs": len(rows), "failed": sum(r["status"] != "ok" for r in rows),
            "wall_time_s": sum(r.get("wall_time_s") or 0 for r in rows)}


# ----------------------------------------------------------------------------------------------------- Markdown
def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(title: str, tables: list[DatasetTable], prov: dict, plots: list[str], tuning_lines=()) -> str:
    lines = [f"# Leaderboard: {title}", "",
             "Mean ± sample std over seeds of the test metrics of the configuration chosen on validation. "
             "**Bold**: best per column (↑ higher is better, ↓ lower is better).", "", TEST_TEXT, ""]
    for t in tables:
        header = ["Model", *(f"{m} {arrow(m)}".strip() for m in t.metrics), "seeds"]
        lines += [f"## {t.dataset}", "", _md_row(header), "|---" * len(header) + "|"]
        for model in t.models:
            cells = []
            for metric in t.metrics:
                text, best = cell_text(t, model, metric)
                cells.append(f"**{text}**" if best else text)
            n = max((t.cells[(model, m)].n for m in t.metrics if (model, m) in t.cells), default=0)
            failed = f" ({t.failed[model]} failed)" if t.failed.get(model) else ""
            lines.append(_md_row([model, *cells, f"{n}{failed}"]))
        pairs = compared(t)
        if pairs:
            header = ["Model", "Metric", "best", "users", "Δ best − model [95% CI]", "d_z",
                      "p per user, Holm (t / W)", "p per seed (t / W)"]
            lines += ["", f"Tests against the best model ({family_size(t)} per-user comparisons in the Holm "
                      "family):", "", _md_row(header), "|---" * len(header) + "|"]
            for model, metric in pairs:
                user, seed = t.user_tests.get((model, metric)), t.tests.get((model, metric))
                lines.append(_md_row([model, metric, t.best.get(metric, ""), "n/a" if user is None else str(user.n),
                                      diff_text(user), fmt_effect(None if user is None else user.effect),
                                      user_p_text(user), "n/a" if seed is None else
                                      f"{fmt_p(seed.t_p)} / {fmt_p(seed.wilcoxon_p)}"]))
        lines += ["", "Chosen configurations: " + "; ".join(f"{m}: {grid_text(t.chosen.get(m))}" for m in t.models),
                  ""]
    lines += list(tuning_lines)
    lines += ["## Provenance", "", f"- runs: {prov['runs']} ({prov['failed']} failed), total worker time "
              f"{prov['wall_time_s'] / 60:.1f} min", f"- code: {', '.join(prov['code_versions'])}"]
    for d, hs in prov["dataset_hashes"].items():
        lines.append(f"- {d}: files sha256 " + ", ".join(f"{h[0] or 'absent'}" + (f" (DDI {h[1]})" if h[1] else "")
                                                          for h in hs))
    for d, ps in prov["protocols"].items():
        lines.append(f"- {d} protocol: " + "; ".join(json.dumps(p, sort_keys=True) for p in ps))
    lines.append("- libraries: " + ", ".join(f"{k} {'/'.join(v)}" for k, v in prov["libraries"].items()
                                             if k != "platform"))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------- LaTeX
def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def latex(title: str, tables: list[DatasetTable]) -> str:
    out = [f"% Leaderboard {title}: mean $\\pm$ std over seeds; bold = best per column.", ""]
    for t in tables:
        out += [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex_escape(title)}: {_tex_escape(t.dataset)}}}",
                r"\begin{tabular}{l" + "c" * len(t.metrics) + "}", r"\toprule",
                "Model & " + " & ".join(_tex_escape(m) + {1: r" $\uparrow$", -1: r" $\downarrow$", 0: ""}[
                    metric_direction(m)] for m in t.metrics) + r" \\", r"\midrule"]
        for model in t.models:
            cells = []
            for metric in t.metrics:
                text, best = cell_text(t, model, metric)
                text = text.replace("±", r"$\pm$").replace("—", "--")
                cells.append(f"\\textbf{{{text}}}" if best else text)
            out.append(_tex_escape(model) + " & " + " & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------- CSV
def _user_columns(test) -> list:
    if test is None:
        return [""] * 10
    return [test.n, " ".join(str(s) for s in test.seeds), test.mean_diff, test.ci_low, test.ci_high, test.effect,
            test.t_p, test.wilcoxon_p, test.t_p_holm, test.wilcoxon_p_holm]


def write_csvs(out_dir: Path, tables: list[DatasetTable], rows: list[dict], chosen_keys: set):
    with atomic_file(out_dir / "leaderboard.csv", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "model", "metric", "direction", "mean", "std", "n_seeds", "best", "best_model",
                    "t_p_vs_best", "wilcoxon_p_vs_best", "chosen_config",
                    # per-user comparison with best_model (empty where not tested or without per-user values)
                    "n_users", "user_seeds", "user_mean_diff", "user_diff_ci_low", "user_diff_ci_high",
                    "user_effect_dz", "user_t_p", "user_wilcoxon_p", "user_t_p_holm", "user_wilcoxon_p_holm"])
        for t in tables:
            for model in t.models:
                for metric in t.metrics:
                    cell = t.cells.get((model, metric))
                    test = t.tests.get((model, metric))
                    w.writerow([t.dataset, model, metric, metric_direction(metric),
                                "" if cell is None else cell.mean, "" if cell is None else cell.std,
                                0 if cell is None else cell.n, int(bool(cell and cell.best)), t.best.get(metric, ""),
                                "" if test is None else test.t_p, "" if test is None else test.wilcoxon_p,
                                json.dumps(t.chosen.get(model), sort_keys=True)] + _user_columns(
                                    t.user_tests.get((model, metric))))
    metrics = sorted({k for r in rows for k in (r.get("test_result") or {})})
    with atomic_file(out_dir / "runs.csv", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run_key", "status", "model", "dataset", "seed", "grid_point", "chosen", "valid_metric",
                    "best_valid_score"] + [f"test_{m}" for m in metrics]
                   + ["wall_time_s", "peak_rss_mb", "code_version", "dataset_sha256", "ddi_sha256", "error"])
        for r in rows:
            w.writerow([r["run_key"], r["status"], r["model"], r["dataset"], r["seed"],
                        json.dumps(r["grid_point"], sort_keys=True), int(r["run_key"] in chosen_keys),
                        r.get("valid_metric") or "", r.get("best_valid_score")]
                       + [(r.get("test_result") or {}).get(m, "") for m in metrics]
                       + [r.get("wall_time_s"), r.get("peak_rss_mb"), r.get("code_version"), r.get("dataset_sha256"),
                          r.get("ddi_sha256"), r.get("error") or ""])


# ----------------------------------------------------------------------------------------------------- plots
def _bars(metric: str, tables: list[DatasetTable], colours: dict):
    """Bars with error bars of one metric: datasets on x, one bar per model."""
    plt = pyplot()
    shown = [t for t in tables if metric in t.metrics]
    names = list(dict.fromkeys(m for t in shown for m in t.models if (m, metric) in t.cells))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.6 * len(names) * len(shown)), 3.4))
    width = 0.8 / max(1, len(names))
    for i, model in enumerate(names):
        xs, ys, es = [], [], []
        for j, t in enumerate(shown):
            cell = t.cells.get((model, metric))
            if cell is not None:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(cell.mean)
                es.append(0 if math.isnan(cell.std) else cell.std)
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=model, color=colours[model])
    ax.set_xticks(range(len(shown)), [t.dataset for t in shown])
    ax.set_ylabel(f"{metric} {arrow(metric)}".strip())
    ax.set_title(f"{metric} (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=min(3, max(1, len(names))))
    return fig


def _accuracy_vs_ddi(t: DatasetTable, colours: dict):
    """Safety against accuracy of one dataset, one point per model; None where no DDI rate (or accuracy) is
    reported."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    acc = next((m for m in ACCURACY_FOR_DDI_PLOT if m in t.metrics), None)
    ddi = next((m for m in t.metrics if metric_direction(m) < 0), None)
    if acc is None or ddi is None:
        return None
    fig, ax = pyplot().subplots(figsize=(5, 4))
    for model in t.models:
        a, d = t.cells.get((model, acc)), t.cells.get((model, ddi))
        if a is None or d is None:
            continue
        ax.errorbar(d.mean, a.mean, xerr=np.nan_to_num(d.std), yerr=np.nan_to_num(a.std), fmt="o",
                    capsize=3, color=colours[model], label=model)
        ax.annotate(model, (d.mean, a.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(f"{ddi} ↓")
    ax.set_ylabel(f"{acc} ↑")
    ax.set_title(f"{t.dataset}: accuracy against DDI rate")
    return fig


def _training_curves(t: DatasetTable, colours: dict):
    """Training loss and validation score per epoch of the chosen configurations, every seed; None without
    histories."""
    import numpy as np

    if not any(t.history.values()):
        return None
    fig, (ax_loss, ax_valid) = pyplot().subplots(1, 2, figsize=(9, 3.4))
    valid_name = t.valid_metric
    for model, histories in t.history.items():
        for k, hist in enumerate(histories):
            epochs = [h.get("epoch", i) for i, h in enumerate(hist)]
            label = model if k == 0 else None
            loss = [h.get("train_loss") for h in hist]
            if any(v is not None for v in loss):
                ax_loss.plot(epochs, [np.nan if v is None else v for v in loss], color=colours[model], alpha=0.7,
                             lw=1, label=label)
            valid = [{k2.lower(): v2 for k2, v2 in (h.get("valid") or {}).items()} for h in hist]
            keys = [k2 for v in valid for k2 in v]
            if keys:
                valid_name = valid_name or keys[0]
                ax_valid.plot(epochs, [v.get(valid_name, np.nan) for v in valid], color=colours[model],
                              alpha=0.7, lw=1, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    ax_valid.set_xlabel("epoch")
    ax_valid.set_ylabel(f"valid {valid_name or ''}")
    ax_loss.legend(fontsize=7)
    fig.suptitle(f"{t.dataset}: training curves (chosen configurations, all seeds)")
    return fig


def make_plots(plot_dir: Path, tables: list[DatasetTable]) -> list[str]:
    """Every plot of the tables into ``plot_dir``: a bar chart per metric, then per dataset accuracy against DDI
    rate and the training curves (where they apply); returns the file names in that order."""
    plt = pyplot()
    models = list(dict.fromkeys(m for t in tables for m in t.models))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    metrics = list(dict.fromkeys(m for t in tables for m in t.metrics))
    written = [save_figure(_bars(metric, tables, colours), plot_dir, f"bars_{safe_name(metric)}.png")
               for metric in metrics]
    for t in tables:
        fig = _accuracy_vs_ddi(t, colours)
        if fig is not None:
            written.append(save_figure(fig, plot_dir, f"accuracy_vs_ddi_{safe_name(t.dataset)}.png"))
    for t in tables:
        fig = _training_curves(t, colours)
        if fig is not None:
            written.append(save_figure(fig, plot_dir, f"curves_{safe_name(t.dataset)}.png"))
    return written


# ----------------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" ▲"} th[aria-sort=descending]::after{content:" ▼"}
td:first-child,th:first-child{text-align:left} td.best{font-weight:bold;background:#e8f5e9}
tr.failed td{color:#a00} td.err{text-align:left;max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
img{max-width:100%;border:1px solid #ddd;margin:6px} .muted{color:#666;font-size:12px}
"""

# Sorting: a click on a header sorts by that column (numbers by their data-sort value), a second click reverses.
# '#sort=<tableId>:<column>[:desc]' in the URL replays those clicks on load, so a sorted view can be linked.
_JS = """
function sortTable(th){
  var table=th.closest('table'), idx=Array.prototype.indexOf.call(th.parentNode.children, th);
  var asc=th.getAttribute('aria-sort')!=='ascending';
  Array.prototype.forEach.call(th.parentNode.children,function(h){h.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort', asc?'ascending':'descending');
  var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
  function key(r){var c=r.cells[idx], v=c.getAttribute('data-sort'); if(v===null)v=c.textContent.trim();
    var n=parseFloat(v); return (v!==''&&!isNaN(n)&&isFinite(v))?[0,n]:[1,v];}
  rows.sort(function(a,b){var x=key(a),y=key(b); if(x[0]!==y[0])return x[0]-y[0];
    var r=x[1]<y[1]?-1:(x[1]>y[1]?1:0); return asc?r:-r;});
  rows.forEach(function(r){body.appendChild(r);});
}
document.addEventListener('DOMContentLoaded',function(){
  document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){sortTable(th);});});
  var m=/sort=([\\w-]+):(\\d+)(:desc)?/.exec(decodeURIComponent(location.hash));
  if(m){var t=document.getElementById(m[1]); if(t){var th=t.tHead.rows[0].cells[+m[2]];
    if(th){th.click(); if(m[3])th.click(); document.body.setAttribute('data-sorted', m[1]+':'+m[2]+(m[3]?':desc':''));}}}
});
"""


def _td(text, sort=None, cls=None):
    attrs = ""
    if sort is not None:
        attrs += f' data-sort="{html.escape(str(sort))}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{html.escape(str(text))}</td>"


def _user_td(test):
    """``num(field, formatter)`` -> a cell of one number of a per-user test, sorting by its value."""
    def num(name, text=fmt_p):
        value = None if test is None else getattr(test, name)
        return _td(text(value), "" if value is None or math.isnan(value) else value)
    return num


def _html_head(title: str) -> list[str]:
    e = html.escape
    return [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Leaderboard: {e(title)}</title>",
            f"<style>{_CSS}</style><script>{_JS}</script></head><body>",
            f"<h1>Leaderboard: {e(title)}</h1>",
            "<p class='muted'>Mean ± sample std over seeds of test metrics for the configuration chosen on "
            "validation. Bold: best per column (↑ higher better, ↓ lower better). p: per-user tests against the "
            "best model, Holm-adjusted (t / Wilcoxon); the table below each summary gives the effect size, the "
            "interval and the per-seed tests. Click a header to sort.</p>",
            f"<p class='muted'>{e(TEST_TEXT)}</p>"]


def _html_summary(i: int, t: DatasetTable) -> list[str]:
    """Dataset ``t``'s table: per model, each metric's mean ± std and its per-user p against the best, the config."""
    e = html.escape
    parts = [f"<h2>{e(t.dataset)}</h2><table class='sortable summary' id='summary-{i}'><thead><tr>"
             "<th>Model</th>" + "".join(f"<th>{e(m)} {arrow(m)}</th><th>p per user, Holm (t / W)</th>"
                                        for m in t.metrics) + "<th>config</th></tr></thead><tbody>"]
    for model in t.models:
        cells = [_td(model)]
        for metric in t.metrics:
            cell = t.cells.get((model, metric))
            text, best = cell_text(t, model, metric)
            cells.append(_td(text, "" if cell is None else cell.mean, "best" if best else None))
            user = t.user_tests.get((model, metric))
            tested = (model, metric) in t.tests or user is not None
            cells.append(_td("best" if t.best.get(metric) == model else user_p_text(user) if tested else "—",
                             "" if user is None or math.isnan(user.t_p_holm) else user.t_p_holm))
        cells.append(_td(grid_text(t.chosen.get(model))))
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _html_tests(i: int, t: DatasetTable) -> list[str]:
    """Dataset ``t``'s tests against the best model, one row per compared (model, metric); nothing if none."""
    e = html.escape
    pairs = compared(t)
    if not pairs:
        return []
    heads = ["model", "metric", "best", "users", "Δ best − model", "95% CI", "d_z", "p t (Holm)",
             "p W (Holm)", "p t", "p W", "p seeds t / W"]
    parts = [f"<p>Tests against the best model: {family_size(t)} per-user comparisons in the Holm "
             f"family.</p><table class='sortable' id='tests-{i}'><thead><tr>"
             + "".join(f"<th>{e(h)}</th>" for h in heads) + "</tr></thead><tbody>"]
    for model, metric in pairs:
        user, seed = t.user_tests.get((model, metric)), t.tests.get((model, metric))
        num = _user_td(user)
        ci = "n/a" if user is None else f"[{fmt_signed(user.ci_low)}, {fmt_signed(user.ci_high)}]"
        cells = [_td(model), _td(metric), _td(t.best.get(metric, "")),
                 _td("n/a" if user is None else user.n, "" if user is None else user.n),
                 num("mean_diff", fmt_signed), _td(ci), num("effect", fmt_effect), num("t_p_holm"),
                 num("wilcoxon_p_holm"), num("t_p"), num("wilcoxon_p"),
                 _td("n/a" if seed is None else f"{fmt_p(seed.t_p)} / {fmt_p(seed.wilcoxon_p)}",
                     "" if seed is None or math.isnan(seed.t_p) else seed.t_p)]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _html_runs(tables: list[DatasetTable], rows: list[dict], chosen_keys: set) -> list[str]:
    """Every run, failed ones marked, with the tables' metric columns."""
    e = html.escape
    # the tables' columns (runs.csv keeps every metric)
    metrics = list(dict.fromkeys(m for t in tables for m in t.metrics)) or sorted(
        {k for r in rows for k in (r.get("test_result") or {}) if not k.endswith("_std")})
    parts = [f"<h2>All runs ({len(rows)})</h2><table class='sortable' id='runs'><thead><tr>"
             + "".join(f"<th>{e(h)}</th>" for h in ["model", "dataset", "seed", "config", "chosen", "status",
                                                      "valid score"] + [f"test {m}" for m in metrics]
                       + ["wall s", "peak MB", "error"]) + "</tr></thead><tbody>"]
    for r in rows:
        cls = " class='failed'" if r["status"] != "ok" else ""
        test = r.get("test_result") or {}
        cells = [_td(r["model"]), _td(r["dataset"]), _td(r["seed"], r["seed"]), _td(grid_text(r["grid_point"])),
                 _td("yes" if r["run_key"] in chosen_keys else "no"), _td(r["status"]),
                 _td(fmt(r.get("best_valid_score")), r.get("best_valid_score") if r.get("best_valid_score")
                     is not None else "")]
        cells += [_td(fmt(test.get(m)), test.get(m) if test.get(m) is not None else "") for m in metrics]
        cells += [_td(fmt(r.get("wall_time_s"), 1), r.get("wall_time_s") or ""),
                  _td(fmt(r.get("peak_rss_mb"), 0), r.get("peak_rss_mb") or ""),
                  f"<td class='err' title='{e(r.get('error') or '')}'>{e(r.get('error') or '')}</td>"]
        parts.append(f"<tr{cls} data-run-key='{e(r['run_key'])}'>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _html_plots(plot_dir: Path, plots: list[str]) -> list[str]:
    """The plots embedded as base64 PNG (the page needs no other file); nothing if there are none."""
    if not plots:
        return []
    parts = ["<h2>Plots</h2>"]
    for name in plots:
        data = base64.b64encode((plot_dir / name).read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    return parts


def html_page(title: str, tables: list[DatasetTable], rows: list[dict], chosen_keys: set, prov: dict,
              plot_dir: Path, plots: list[str], tuning_html: str = "") -> str:
    parts = _html_head(title)
    for i, t in enumerate(tables):
        parts += _html_summary(i, t) + _html_tests(i, t)
    if tuning_html:
        parts.append(tuning_html)
    parts += _html_runs(tables, rows, chosen_keys) + _html_plots(plot_dir, plots)
    parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(prov, indent=1, sort_keys=True, default=str))
                 + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, title: str, task: str, tables: list[DatasetTable], rows: list[dict],
                 chosen_keys: set, studies=None, tuning=None) -> list[Path]:
    """``studies`` / ``tuning``: a tuned board's study outcomes and budget (a 'Tuning' section, its plots and
    tuning.csv); ``rows`` then holds the trials' runs too (runs.csv, the HTML page's run table)."""
    out_dir = Path(out_dir)
    prov = provenance(rows)
    with atomic_dir(out_dir / "plots", overwrite=True) as tmp_plots:
        plots = make_plots(tmp_plots, tables)
        tuning_plots = tuning_report.plots(tmp_plots, studies) if tuning is not None else []
    plot_dir = out_dir / "plots"
    tuning_lines = tuning_report.markdown(studies, tuning, [f"plots/{p}" for p in tuning_plots]) \
        if tuning is not None else []
    tuning_html = tuning_report.html_section(studies, tuning) if tuning is not None else ""
    files = {"leaderboard.md": markdown(title, tables, prov, [f"plots/{p}" for p in plots], tuning_lines),
             "leaderboard.tex": latex(title, tables),
             "leaderboard.html": html_page(title, tables, rows, chosen_keys, prov, plot_dir, plots + tuning_plots,
                                           tuning_html)}
    for name, text in files.items():
        with atomic_file(out_dir / name, encoding="utf-8") as fh:
            fh.write(text)
    write_csvs(out_dir, tables, rows, chosen_keys)
    extra = [tuning_report.write_csv(out_dir, studies)] if tuning is not None else []
    return [out_dir / n for n in (*files, "leaderboard.csv", "runs.csv")] + extra + \
        [plot_dir / p for p in plots + tuning_plots]
