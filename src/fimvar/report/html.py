"""``report.html``: one self-contained page (inline CSS, figures as base64 PNG, no script, no
external resource) built from the ``summary.json`` document and the figures."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from fimvar.estimators.design import ESTIMATORS, LABELS
from fimvar.results.audit import LABELS as AUDIT_LABELS
from fimvar.results.groups import MODEL_GROUP

CAPTIONS = {
    "fisher_std": "Mean Fisher per layer next to the standard deviation of one draw of Î1 and Î2 and "
                  "the input noise sqrt Var_x I(θ|x) (log scale). Hollow markers at the bottom: exactly 0.",
    "bound_tightness": "Tightness Σ bound / Σ exact of each upper bound per layer (1 = tight).",
    "relative_std": "Histogram over parameters of the relative standard deviation of one draw, "
                    "sqrt(v)/I(θ_i).",
    "sample_size": "Inputs needed for relative error ρ of each layer's diagonal Fisher "
                   "(‖Î−I‖/‖I‖ ≤ ρ with probability 1−δ): solid normal approximation, dashed Chebyshev.",
    "audit": "Per layer (in model order; rightmost, behind the grey line: the whole model) and estimator: "
             "(a) relative bias "
             "‖E[Î] − I‖₂/‖I‖₂, (b) relative standard deviation √(Σ Var Î)/‖I‖₂ of one run of this design, "
             "(c) inputs needed for the target (normal approximation), on log scales. Hollow markers: "
             "exactly 0 (bottom edge of (a): unbiased) or unreachable (top edge of (c): the bias alone "
             "exceeds the target, or the layer's Fisher is 0).",
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
    if 1e-3 <= abs(value) < 1e3:
        return f"{value:.{digits}g}"
    if 1e3 <= abs(value) < 1e4:  # .3g would write 2e+03
        return f"{round(value):,}"
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
        parts += _figures(figures)
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


def _figures(figures: dict[str, Path] | None) -> list[str]:
    parts = []
    for name, path in (figures or {}).items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<figure id=\"fig-{_e(name)}\"><img alt=\"{_e(CAPTIONS.get(name, name))}\" "
                     f"src=\"data:image/png;base64,{data}\"><figcaption>{_e(CAPTIONS.get(name, name))}"
                     f"</figcaption></figure>")
    return parts


def _audit_findings(document: dict) -> list[str]:
    target = document["target"]
    rho, confidence = target["rho"], 1 - target["delta"]
    whole = [r for r in document["layers"] if r["group"] == MODEL_GROUP]
    out = []
    best = document["recommended"].get("normal")
    if best:
        row = next(r for r in whole if r["estimator"] == best)
        out.append(f"Cheapest estimator that meets relative error ≤ {rho:g} with probability ≥ "
                   f"{confidence:g} over the whole model (normal approximation): "
                   f"<b>{_e(AUDIT_LABELS[best])}</b>, with {_num(row['inputs']['normal'])} inputs "
                   f"(cost ≈ {_num(row['cost']['normal'])} backward passes).")
    else:
        out.append(f"No audited estimator meets relative error ≤ {rho:g} with probability ≥ {confidence:g} "
                   "over the whole model at a known cost.")
    biased = [r for r in whole if r["relative_bias"] is None or r["relative_bias"] >= rho]
    if biased:
        out.append("<span class=\"bad\">Biased beyond the target</span> (no number of inputs helps): "
                   + ", ".join(f"{_e(AUDIT_LABELS[r['estimator']])} ({_pct(r['relative_bias'])})"
                               for r in biased) + ".")
    n = document["inputs"]
    enough = [_e(AUDIT_LABELS[r["estimator"]]) for r in whole
              if r["inputs"]["normal"] is not None and r["inputs"]["normal"] <= n]
    out.append(f"With this design's N = {n:,} inputs, "
               + (", ".join(enough) + " meet" if enough else "no audited estimator meets")
               + " the target over the whole model.")
    return out


def render_audit(document: dict, figures: dict[str, Path] | None = None) -> str:
    """The HTML page of an audit document (:meth:`fimvar.AuditResult.to_dict` with ``run``,
    ``fimvar_version``, ``created`` and ``files``); ``figures`` maps figure names to PNG files."""
    run = document.get("run") or {}
    target = document["target"]
    rho, confidence = target["rho"], 1 - target["delta"]
    title = run.get("model", document["family"])
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>fimvar estimator audit: {_e(title)}</title><style>{CSS}</style></head><body>"]
    parts.append("<h1>fimvar estimator audit</h1>")
    parts.append("<p class=\"muted\">What the estimators people call “the Fisher” (EWC, Sophia’s GNB, "
                 "the empirical Fisher, Monte Carlo Fisher, Î1, Î2, their combination, the exact Fisher) "
                 "compute: their bias against the diagonal Fisher, their relative standard deviation at this "
                 f"design and the inputs they need for the target (docs/theory.md §15). fimvar "
                 f"{_e(document.get('fimvar_version', ''))}, {_e(document.get('created', ''))}.</p>")
    setting = {"family": document["family"], "inputs N": document["inputs"],
               "batch size (EWC, GNB)": document["batch_size"], "label draws per input": document["samples"],
               "target": f"relative error ≤ {rho:g} with probability ≥ {confidence:g}"} | run
    meta_rows = [[_e(k), _num(v) if isinstance(v, (bool, int, float)) else _e(v)]
                 for k, v in setting.items() if v is not None]
    parts.append("<h2 id=\"run\">Run</h2>" + _table(["setting", "value"], meta_rows, left=2, css="run"))
    parts.append("<h2 id=\"findings\">Findings</h2><ul>"
                 + "".join(f"<li>{f}</li>" for f in _audit_findings(document)) + "</ul>")

    erows = [[_e(AUDIT_LABELS[k]), _e(e["description"]), _e(e["randomness"]), _num(e["cost_per_input"])]
             for k, e in document["estimators"].items()]
    parts.append("<h2 id=\"estimators\">Audited estimators</h2>"
                 + _table(["estimator", "what it computes", "variance over", "cost per input"], erows, left=3,
                          css="run"))

    best = document.get("recommended_per_group", {})
    rows, classes = [], []
    for r in document["layers"]:
        star = best.get(r["group"], {}).get("normal") == r["estimator"]
        rows.append([_e(r["group"]), _e(AUDIT_LABELS[r["estimator"]]) + (" ★" if star else ""),
                     _num(r["relative_bias"]), _num(r["relative_std"]), _num(r["inputs"]["normal"]),
                     _num(r["cost"]["normal"]), _num(r["inputs"]["chebyshev"]), _num(r["cost"]["chebyshev"])])
        classes.append("model" if r["group"] == MODEL_GROUP else "")
    threshold = document.get("std_threshold", {}).get("normal")
    parts.append("<h2 id=\"audit\">Per layer and estimator</h2>"
                 + _table(["layer", "estimator", "rel. bias", "rel. std", "normal: inputs", "cost",
                           "Chebyshev: inputs", "cost"], rows, left=2, classes=classes)
                 + "<p class=\"muted\">rel. bias: ‖E[Î] − I‖₂/‖I‖₂ over the layer’s parameters (a "
                   "systematic error no number of inputs removes). rel. std: √(Σ Var Î)/‖I‖₂ of one run "
                   "of this design: over the shuffle (and the labels) of these inputs for EWC and GNB, over "
                   "the inputs as a sample of the data (and the labels) for the others"
                   + (f"; at or below {_num(threshold)} an unbiased estimator meets the target"
                      if threshold else "")
                   + f". inputs: how many inputs drawn independently from the data (batch estimators: "
                   f"independent batches) give ‖Î − I‖₂ ≤ {rho:g}·‖I‖₂ with probability ≥ {confidence:g}; "
                   f"— where the bias alone exceeds the target. cost: backward passes. ★ cheapest that "
                   f"meets the target in that layer (normal approximation).</p>"
                 + "".join(f"<p class=\"muted\">Note: {_e(n)}</p>" for n in document.get("notes", [])))
    if figures:
        parts.append("<h2 id=\"figures\">Figure</h2>")
        parts += _figures(figures)
    files = document.get("files") or {}
    if files:
        listed = [files.get("audit"), *files.get("figures", [])]
        parts.append("<h2 id=\"files\">Files</h2><ul>"
                     + "".join(f"<li><code>{_e(f)}</code></li>" for f in listed if f) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_audit(document: dict, path: str | Path, figures: dict[str, Path] | None = None) -> None:
    Path(path).write_text(render_audit(document, figures), encoding="utf-8")
