"""``report.html``: one self-contained page (inline CSS, figures as base64 PNG, no script, no
external resource) built from the ``summary.json`` document and the figures."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from fimvar.estimators.design import ESTIMATORS, LABELS
from fimvar.results.groups import MODEL_GROUP

CAPTIONS = {
    "fisher_std": "Mean Fisher per layer next to the standard deviation of one draw of Î1 and Î2 and "
                  "the input noise sqrt Var_x I(θ|x) (log scale). Hollow markers at the bottom: exactly 0.",
    "bound_tightness": "Tightness Σ bound / Σ exact of each upper bound per layer (1 = tight).",
    "relative_std": "Histogram over parameters of the relative standard deviation of one draw, "
                    "sqrt(v)/I(θ_i).",
    "sample_size": "Inputs needed for relative error ρ of each layer's diagonal Fisher "
                   "(‖Î−I‖/‖I‖ ≤ ρ with probability 1−δ): solid normal approximation, dashed Chebyshev.",
}

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
table.run td{white-space:normal;word-break:break-word;text-align:left}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.model td{font-weight:600;background:#fafafa}
.ok{color:#1b7e3b}.bad{color:#b00020;font-weight:600}.muted{color:#666;font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}code{background:#f5f5f5;padding:0 .2em}
.scroll{overflow-x:auto}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}"


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _table(headers: list[str], rows: list[list[str]], left: int = 1, classes: list[str] | None = None,
           css: str = "") -> str:
    head = "".join(f"<th class=\"l\">{h}</th>" if i < left else f"<th>{h}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        row_class = f" class=\"{classes[r]}\"" if classes and classes[r] else ""
        cells = "".join(f"<td class=\"l\">{c}</td>" if i < left else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr{row_class}>{cells}</tr>")
    table = f"<table class=\"{css}\">" if css else "<table>"
    return (f"<div class=\"scroll\">{table}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _names(groups: list[str]) -> str:
    return ", ".join(f"<code>{_e(g)}</code>" for g in groups)


def _findings(summary: dict) -> list[str]:
    groups = summary["groups"]
    layers = [g for g in groups if g["group"] != MODEL_GROUP] if len(groups) > 1 else groups
    whole = groups[-1]
    run = summary["run"]
    out = []
    wins = {e: [g["group"] for g in layers if g["better"] == e] for e in ("i1", "i2")}
    out.append(f"Î2 has the lower variance in {len(wins['i2'])} of {len(layers)} layers"
               + (f" ({_names(wins['i2'])})" if wins["i2"] else "")
               + f"; Î1 in {len(wins['i1'])}.")
    exact = [g["group"] for g in layers if g["std_i2"] == 0]
    if exact:
        out.append(f"Î2 has zero label variance in {_names(exact)}: a linear output layer "
                   "([B] Remark 4.4) — there Î2 equals the exact Fisher of each input.")
    out.append(f"Whole model: one draw has relative std {_num(whole['relative_std_i1'])} (Î1) and "
               f"{_num(whole['relative_std_i2'])} (Î2); with M={run['samples']} draws per input, "
               f"{_pct(whole['input_noise_share_i1'])} of Î1's variance comes from the inputs.")
    rec = whole["recommended"]["normal"]
    plan = summary["plan"]
    if rec:
        draws = "draw" if rec["draws"] == 1 else "draws"
        design = (f"{rec['inputs']:,} inputs" if rec["estimator"] == "exact"
                  else f"{rec['inputs']:,} inputs × {rec['draws']} {draws}")
        out.append(f"For relative error ≤ {plan['rho']:g} with probability ≥ {1 - plan['delta']:g} "
                   f"(whole model, normal approximation), the cheapest choice is "
                   f"<b>{_e(LABELS[rec['estimator']])}</b> with {design} (cost ≈ {_num(rec['cost'])} "
                   "backward passes).")
    failed = [b["name"] for b in summary["bounds"] + summary["group_bounds"] if not b["holds"]]
    total = len(summary["bounds"]) + len(summary["group_bounds"])
    if total:
        out.append(f"<span class=\"ok\">All {total} bounds hold.</span>" if not failed else
                   f"<span class=\"bad\">Violated bounds: {_e(', '.join(failed))}.</span>")
    if run.get("labels") and whole.get("empirical") and whole["empirical"]["relative_bias"] is not None:
        out.append(f"The empirical Fisher (data labels) differs from the Fisher by "
                   f"{_pct(whole['empirical']['relative_bias'])} over the whole model (it is biased, "
                   "[B] §6).")
    return out


def render(summary: dict, figures: dict[str, Path] | None = None) -> str:
    """The HTML page of a summary document; ``figures`` maps figure names to PNG files."""
    run = summary["run"]
    groups = summary["groups"]
    plan = summary["plan"]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>fimvar report: {_e(run.get('model', run['family']))}</title><style>{CSS}</style>"
             f"</head><body>"]
    parts.append("<h1>fimvar report</h1>")
    parts.append(f"<p class=\"muted\">Diagonal Fisher information and the variance of its estimators "
                 f"Î1 (squared score) and Î2 (negative Hessian), labels sampled from the model "
                 f"(Soen &amp; Sun, NeurIPS 2021 and 2024). fimvar {_e(summary['fimvar_version'])}, "
                 f"{_e(summary['created'])}, summary schema v{summary['schema_version']}.</p>")
    meta_rows = [[_e(k), _num(v) if isinstance(v, (bool, float)) else
                  "<br>".join(_e(n) for n in v) if isinstance(v, list) else _e(v)] for k, v in run.items()
                 if v is not None]
    parts.append("<h2 id=\"run\">Run</h2>"
                 + _table(["setting", "value"], meta_rows, left=2, css="run"))
    parts.append("<h2 id=\"findings\">Findings</h2><ul>"
                 + "".join(f"<li>{f}</li>" for f in _findings(summary)) + "</ul>")

    headers = ["layer", "params", "Fisher", "std Î1", "std Î2", "rel Î1", "rel Î2",
               "input Î1", "input Î2", "winner", "α*", "UB/V1", "UB/V2", "UB/I",
               f"N@{100 * plan['rho']:g}%"]
    rows, classes = [], []
    for g in groups:
        t = g["tightness"]
        target = g["target"]
        rows.append([_e(g["group"]), _num(g["parameters"]), _num(g["fisher"]), _num(g["std_i1"]),
                     _num(g["std_i2"]), _num(g["relative_std_i1"]), _num(g["relative_std_i2"]),
                     _pct(g["input_noise_share_i1"]), _pct(g["input_noise_share_i2"]),
                     _e(LABELS[g["better"]]), _num(g["alpha_star"], 2), _num(t.get("thm4.1_v1_upper")),
                     _num(t.get("thm4.1_v2_upper")), _num(t.get("thm4.1_fisher_upper")),
                     "—" if not target else f"{target['inputs']:,}"])
        classes.append("model" if g["group"] == MODEL_GROUP else "")
    parts.append("<h2 id=\"layers\">Per-layer summary</h2>" + _table(headers, rows, classes=classes))
    parts.append(
        f"<p class=\"muted\">Means over each layer's parameters. std: one draw (one input, one sampled "
        f"label), sqrt of the mean label variance v1 = Var[(u·ε)²], v2 = wᵀIw ([B] Lemma 3.1); rel: "
        f"std / Fisher. input: share of the inputs in the variance, "
        f"Var_x I(θ|x) / (Var_x I(θ|x) + v/M) with M={run['samples']} ([B] Thm 4.7). α*: weight "
        f"of Î1 in the minimum-variance combination. UB/·: Σ bound / Σ exact of [B] Thm 4.1's upper "
        f"bounds. N: inputs for relative error ≤ {plan['rho']:g} with probability {1 - plan['delta']:g} "
        f"with the winner and M={run['samples']} (normal approximation).</p>")
    if run.get("labels"):
        erows = [[_e(g["group"]), _num(g["fisher"]), _num(g["empirical"]["fisher"]),
                  _pct(g["empirical"]["relative_bias"])] for g in groups if g.get("empirical")]
        parts.append("<h2 id=\"empirical\">Empirical Fisher (data labels)</h2>"
                     + _table(["layer", "Fisher", "empirical Fisher", "relative bias"], erows))

    prow, pclass = [], []
    for g in plan["groups"]:
        best = g["recommended"].get("normal")
        for e in ESTIMATORS:
            designs = {d["method"]: d for d in g["designs"] if d["estimator"] == e}
            if not designs:
                continue
            n, c = designs.get("normal"), designs.get("chebyshev")
            prow.append([_e(g["group"]), _e(LABELS[e]) + (" ★" if e == best else ""),
                         _design(n), _num(n["cost"]) if n else "—", _design(c), _num(c["cost"]) if c else "—",
                         _num(n["relative_rmse"]) if n else "—"])
            pclass.append("model" if e == best else "")
    cost = plan["cost_model"]
    parts.append(f"<h2 id=\"plan\">Plan: relative error ≤ {plan['rho']:g} with probability ≥ "
                 f"{1 - plan['delta']:g}</h2>"
                 + _table(["layer", "estimator", "normal: inputs × draws", "cost",
                           "Chebyshev: inputs × draws", "cost", "predicted RMS rel. error"],
                          prow, left=2, classes=pclass)
                 + f"<p class=\"muted\">Target ‖Î_g−I_g‖₂/‖I_g‖₂ ≤ ρ per layer. Required inputs "
                   f"N_x ≥ k (a + b/M)/(ρ²‖I_g‖²), a = Σ Var_x I(θ_i|x), b = Σ label variance of one draw, "
                   f"k = 1/δ (Chebyshev) or z²₁₋δ/₂ (normal approximation) (docs/theory.md §8.2). "
                   f"Cost in backward "
                   f"passes of one input: forward {cost['forward']:g}, Î1 {cost['backward']:g} per draw, "
                   f"Î2 and the combination {cost['hessian']:g} per draw (Hessian-diagonal pass), exact "
                   f"T={cost['outputs']} backward passes per input. ★ cheapest.</p>"
                 + "".join(f"<p class=\"muted\">Note: {_e(n)}</p>" for n in plan["notes"]))

    if summary["bounds"]:
        names = [g["group"] for g in groups]
        brow = []
        for b in summary["bounds"]:
            status = "<span class=\"ok\">holds</span>" if b["holds"] else \
                f"<span class=\"bad\">{b['violations']} violations</span>"
            brow.append([_e(b["name"]), _e(b["source"]), _e(b["quantity"]), _e(b["side"]), status]
                        + [_num(b["tightness"].get(n)) for n in names])
        parts.append("<h2 id=\"bounds\">Bounds and their tightness (Σ bound / Σ exact)</h2>"
                     + _table(["bound", "source", "quantity", "side", "status"] + [_e(n) for n in names],
                              brow, left=5))
    if summary["group_bounds"]:
        grow = []
        for b in summary["group_bounds"]:
            for group, v in b["groups"].items():
                grow.append([_e(b["name"]), _e(b["source"]), _e(group), _num(v["bound"]), _num(v["exact"]),
                             _num(v["tightness"]),
                             _status(b["holds"])])
        parts.append("<h3>Trace and Frobenius bounds</h3>"
                     + _table(["bound", "source", "layer", "bound", "exact", "tightness", "status"],
                              grow, left=3))

    if figures:
        parts.append("<h2 id=\"figures\">Figures</h2>")
        for name, path in figures.items():
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f"<figure id=\"fig-{_e(name)}\"><img alt=\"{_e(CAPTIONS.get(name, name))}\" "
                         f"src=\"data:image/png;base64,{data}\"><figcaption>{_e(CAPTIONS.get(name, name))}"
                         f"</figcaption></figure>")
    files = summary.get("files") or {}
    if files:
        listed = [files.get("summary", "summary.json"), files.get("tensors")] + list(files.get("figures", []))
        parts.append("<h2 id=\"files\">Files</h2><ul>"
                     + "".join(f"<li><code>{_e(f)}</code></li>" for f in listed if f) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _status(holds: bool) -> str:
    return "<span class=\"ok\">holds</span>" if holds else "<span class=\"bad\">no</span>"


def _design(d: dict | None) -> str:
    if not d:
        return "—"
    if d["estimator"] == "exact":
        return f"{d['inputs']:,}"
    return f"{d['inputs']:,} × {d['draws']}"


def write(summary: dict, path: str | Path, figures: dict[str, Path] | None = None) -> None:
    Path(path).write_text(render(summary, figures), encoding="utf-8")
