"""``report.html``: one self-contained page (inline CSS, figures as base64 PNG, no script, no
external resource) built from the ``summary.json`` document and the figures."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from fimvar.estimators.design import ESTIMATORS, LABELS
from fimvar.report.summary import COLUMNS, SAMPLED_COLUMNS
from fimvar.results.audit import LABELS as AUDIT_LABELS
from fimvar.results.groups import MODEL_GROUP

CAPTIONS = {
    "fisher_std": "Per layer, one point per quantity: the mean Fisher, the standard deviation of one draw of "
                  "Î1 and Î2 and the input noise sqrt Var_x I(θ|x) (log scale). Hollow markers on the bottom "
                  "edge: exactly 0 (named on the figure).",
    "bound_tightness": "Per layer, Σ bound / Σ exact of each upper bound (1 = tight; log scale). A bound has "
                       "no point in a layer where its exact value is 0 (said on the figure).",
    "relative_std": "Per layer, histograms over its parameters of the standard deviation of one draw "
                    "relative to the Fisher, sqrt(v)/I(θ_i), for Î1 and Î2 (outlines on common bins).",
    "sample_size": "Inputs needed for relative error ρ (‖Î−I‖/‖I‖ ≤ ρ with probability 1−δ), by the rule "
                   "of the accuracy section: left r.fisher per layer (● the inputs needed at the report's ρ, "
                   "□ the error this run's N reaches), right the whole model per estimator at the plan's "
                   "cheapest M (● the plan's inputs).",
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
th{white-space:normal;word-break:normal;overflow-wrap:normal;hyphens:none;vertical-align:bottom}
table.run td{white-space:normal;overflow-wrap:anywhere;text-align:left}
table.run td:first-child{white-space:nowrap}
details{margin:.6em 0}summary{cursor:pointer}
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


def _verdict(layers: list[dict], estimator: str) -> str:
    """Whether the estimator's accuracy is enough in every layer, or in which it is not (HTML)."""
    short = [g["layer"] for g in layers if not g["accuracy"][estimator]["enough"]]
    if not short:
        return "<span class=\"ok\">enough</span> in every layer"
    return (f"<span class=\"bad\">not enough</span> in {len(short)} of {len(layers)} layers "
            f"({_names(short)})")


def _names(groups: list[str]) -> str:
    return ", ".join(f"<code>{_e(g)}</code>" for g in groups)


def _times(value) -> str:
    """A relative standard deviation as a multiple of the Fisher (``13.9×``)."""
    text = _num(value)
    return text if text in ("—", "0") else f"{text}×"


def _error(value) -> str:
    """A relative error in percent, two significant digits (``6.4%``)."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:.2g}%" if 100 * value < 10 else f"{100 * value:,.0f}%"


def _layers(groups: list[dict]) -> list[dict]:
    return [g for g in groups if g["group"] != MODEL_GROUP] if len(groups) > 1 else groups


def _findings(summary: dict) -> list[str]:
    groups = summary["groups"]
    layers = _layers(groups)
    whole = groups[-1]
    run = summary["run"]
    plan = summary["plan"]
    out = []
    exact = whole["accuracy"].get("exact")
    if exact and exact["relative_error"] is not None:
        verdict = _verdict(layers, "exact")
        held = "analysed" if plan["available"] == run["inputs"] else "you have"
        out.append(f"<b>Your Fisher</b> (<code>r.fisher</code>, averaged over the N = {run['inputs']:,} "
                   f"inputs) has relative error {_error(exact['relative_error'])} (RMS) over the whole "
                   f"model: "
                   f"below {_error(exact['error_at_confidence'])} with probability {1 - plan['delta']:g}. "
                   f"Relative error ≤ {plan['rho']:g} needs {_num(exact['inputs_needed'])} inputs: the "
                   f"{plan['available']:,} inputs {held} are {verdict}.")
    if run.get("second_order", True):
        wins = {e: [g["layer"] for g in layers if g["better"] == e] for e in ("i1", "i2")}
        out.append(f"Of the sampled estimators, Î2 has the lower variance in {len(wins['i2'])} of "
                   f"{len(layers)} layers" + (f" ({_names(wins['i2'])})" if wins["i2"] else "")
                   + f"; Î1 in {len(wins['i1'])}" + (f" ({_names(wins['i1'])})" if wins["i1"] else "") + ".")
        zero = [g["layer"] for g in layers if g["std_i2"] == 0]
        if zero:
            out.append(f"Î2 has zero label variance in {_names(zero)}: a linear output layer "
                       "([B] Remark 4.4) — there Î2 equals the exact Fisher of each input.")
        second = f" and {_times(whole['relative_std_i2'])} (Î2)"
    else:
        out.append("A first-order analysis (<code>second_order=False</code>): Î2, its variance and the "
                   "combination were not computed (— in the tables); Î1 is the only sampled estimator.")
        second = ""
    out.append(f"Whole model: one draw has a standard deviation {_times(whole['relative_std_i1'])} the "
               f"Fisher (Î1){second}; with M={run['samples']} draws per input, "
               f"{_pct(whole['input_noise_share_i1'])} of Î1's variance comes from the inputs.")
    rec = whole["recommended"]["normal"]
    if rec:
        draws = "draw" if rec["draws"] == 1 else "draws"
        design = (f"{rec['inputs']:,} inputs" if rec["estimator"] == "exact"
                  else f"{rec['inputs']:,} inputs × {rec['draws']} {draws}")
        out.append(f"The cheapest way to relative error ≤ {plan['rho']:g} with probability ≥ "
                   f"{1 - plan['delta']:g} (whole model) is "
                   f"<b>{_e(LABELS[rec['estimator']])}</b> with {design} (cost ≈ {_num(rec['cost'])} "
                   "backward passes).")
    failed = [b["name"] for b in summary["bounds"] + summary["group_bounds"] if not b["holds"]]
    total = len(summary["bounds"]) + len(summary["group_bounds"])
    if total:
        vacuous = [b["name"] for b in summary["bounds"] if "vacuous" in _bound_status(b)]
        out.append(f"<span class=\"ok\">All {total} bounds hold</span>"
                   + (f"; {len(vacuous)} lower bounds are vacuous (0 in every layer)." if vacuous else ".")
                   if not failed else f"<span class=\"bad\">Violated bounds: {_e(', '.join(failed))}.</span>")
    if run.get("labels") and whole.get("empirical") and whole["empirical"]["relative_bias"] is not None:
        out.append(f"The empirical Fisher (data labels) differs from the Fisher by "
                   f"{_pct(whole['empirical']['relative_bias'])} over the whole model (it is biased, "
                   "[B] §6).")
    return out


def _rule(plan: dict) -> str:
    """The one sample-size rule, stated once in the page."""
    z, delta, rho = plan["z"], plan["delta"], plan["rho"]
    return (f"<p class=\"muted\"><b>The sample-size rule</b> of every number of inputs on this page, in "
            f"the plan and in the figures: with N inputs and M label draws per input, the layer's squared "
            f"error is E‖Î−I‖² = (a + b/M)/N, a = Σ Var_x I(θ_i|x) (input noise), b = Σ v (label noise of "
            f"one draw; 0 for <code>r.fisher</code>, exact over the labels). std error = sqrt((a + b/M)/N); "
            f"rel error = std error / ‖I‖₂ (RMS); err @{100 * (1 - delta):g}% = z · rel error with "
            f"<b>z = z<sub>1−δ/2</sub> = {z:.3g}</b> (normal approximation): with probability ≥ "
            f"{1 - delta:g} the relative error is below it. <b>N needed = ⌈z² (a + b/M) / (ρ² ‖I‖²)⌉</b> "
            f"for ρ = {rho:g}, "
            f"so a design that meets the target has RMS relative error ρ/z = {rho / z:.3g}. The plan also "
            f"shows Chebyshev's distribution-free N (z² = {z * z:.3g} replaced by 1/δ = {1 / delta:.3g}); "
            f"docs/theory.md §8.2.</p>")


def _accuracy(summary: dict) -> str:
    plan, run = summary["plan"], summary["run"]
    confidence = f"err @{100 * (1 - plan['delta']):g}%"
    headers = ["layer", "‖Fisher‖", "std error", "rel error", confidence, "N needed", "enough"]

    def cells(g: dict, a: dict, label: str | None = None) -> list[str]:
        enough = ("—" if a["inputs_needed"] is None else "<span class=\"ok\">yes</span>" if a["enough"] else
                  f"<span class=\"bad\">no</span> (has {plan['available']:,})")
        first = [_e(g["layer"])] + ([label] if label is not None else [])
        return first + [_num(a["fisher_norm"]), _num(a["standard_error"]), _error(a["relative_error"]),
                         _error(a["error_at_confidence"]), _num(a["inputs_needed"]), enough]

    groups = summary["groups"]
    classes = ["model" if g["group"] == MODEL_GROUP else "" for g in groups]
    rows = [cells(g, g["accuracy"]["exact"]) for g in groups if "exact" in g["accuracy"]]
    sampled, sclasses = [], []
    for g in groups:
        for e in ("i1", "i2", "combined"):
            if e in g["accuracy"]:
                sampled.append(cells(g, g["accuracy"][e], _e(LABELS[e])))
                sclasses.append("model" if g["group"] == MODEL_GROUP else "")
    draws = "draw" if run["samples"] == 1 else "draws"
    return (f"<h2 id=\"accuracy\">Accuracy with the N = {run['inputs']:,} inputs analysed</h2>"
            f"<p>Your Fisher, <code>r.fisher</code>: exact over the labels, an average over the inputs, so "
            f"its error comes from the inputs alone (<code>r.standard_error(\"exact\")</code> per "
            f"parameter). "
            f"Target: relative error ≤ {plan['rho']:g} with probability ≥ {1 - plan['delta']:g}.</p>"
            + _table(headers, rows, classes=classes)
            + f"<details><summary>The sampled estimators "
              f"{'Î1, Î2 and their combination' if run.get('second_order', True) else 'Î1'}, with M = "
              f"{run['samples']} {draws} per input</summary>"
            + _table(["layer", "estimator"] + headers[1:], sampled, left=2, classes=sclasses)
            + "</details>" + _rule(plan))


def _bound_status(b: dict) -> str:
    if not b["holds"]:
        return f"<span class=\"bad\">{b['violations']} violations</span>"
    values = [v for v in b["tightness"].values() if v is not None]
    if b["side"] == "lower" and all(v == 0 for v in values):
        return "<span class=\"muted\">vacuous (0)</span>"
    return "<span class=\"ok\">holds</span>"


def _tightness(b: dict, value) -> str:
    if b["side"] == "lower" and value == 0:
        return "<span class=\"muted\">vacuous</span>"
    return _num(value)


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
                 f"{_e(summary['created'])}, summary schema v{summary['schema_version']}. Column names: "
                 f"docs/usage.md.</p>")
    parts.append(_accuracy(summary))
    parts.append("<h2 id=\"findings\">Findings</h2><ul>"
                 + "".join(f"<li>{f}</li>" for f in _findings(summary)) + "</ul>")
    meta_rows = [[_e(k), _num(v) if isinstance(v, (bool, float)) else
                  "<br>".join(_e(n) for n in v) if isinstance(v, list) else _e(v)] for k, v in run.items()
                 if v is not None]
    parts.append("<h2 id=\"run\">Run</h2>"
                 + _table(["setting", "value"], meta_rows, left=2, css="run"))

    bounded = [(name, label) for name, label in (("thm4.1_v1_upper", "UB/V1"), ("thm4.1_v2_upper", "UB/V2"),
                                                 ("thm4.1_fisher_upper", "UB/I"))
               if any(g["tightness"].get(name) is not None for g in groups)]
    headers = [COLUMNS[k] for k in ("layer", "parameters", "fisher", "std_i1", "std_i2", "relative_std_i1",
                                    "relative_std_i2", "input_noise_share_i1", "input_noise_share_i2",
                                    "better", "alpha_star")] + [label for _, label in bounded]
    rows, classes = [], []
    for g in groups:
        t = g["tightness"]
        rows.append([_e(g["layer"]), _num(g["parameters"]), _num(g["fisher"]), _num(g["std_i1"]),
                     _num(g["std_i2"]), _times(g["relative_std_i1"]), _times(g["relative_std_i2"]),
                     _pct(g["input_noise_share_i1"]), _pct(g["input_noise_share_i2"]),
                     _e(LABELS[g["better"]]), _num(g["alpha_star"], 2)]
                    + [_num(t.get(name)) for name, _ in bounded])
        classes.append("model" if g["group"] == MODEL_GROUP else "")
    parts.append("<h2 id=\"layers\">Per-layer summary of the estimators' noise</h2>"
                 + _table(headers, rows, classes=classes))
    parts.append(
        f"<p class=\"muted\">Means over each layer's parameters. std: one draw (one input, one sampled "
        f"label), sqrt of the mean label variance v1 = Var[(u·ε)²], v2 = wᵀIw ([B] Lemma 3.1); rel std: "
        f"std / Fisher, a multiple of the Fisher (14× = 14 times the Fisher). input noise: share of the "
        f"inputs in the variance, Var_x I(θ|x) / (Var_x I(θ|x) + v/M) with M={run['samples']} ([B] Thm "
        f"4.7). better: the estimator with the lower variance. α*: weight of Î1 in the minimum-variance "
        f"combination."
        + (" UB/·: Σ bound / Σ exact of [B] Thm 4.1's upper bounds." if bounded else "") + "</p>")
    if run.get("labels"):
        erows = [[_e(g["layer"]), _num(g["fisher"]), _num(g["empirical"]["fisher"]),
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
            prow.append([_e(g["layer"]), _e(LABELS[e]) + (" ★" if e == best else ""),
                         _design(n), _num(n["cost"]) if n else "—", _design(c),
                         _num(c["cost"]) if c else "—"])
            pclass.append("model" if e == best else "")
    cost = plan["cost_model"]
    parts.append(f"<h2 id=\"plan\">Plan: relative error ≤ {plan['rho']:g} with probability ≥ "
                 f"{1 - plan['delta']:g}</h2>"
                 + _table(["layer", "estimator", "normal: inputs × draws", "cost",
                           "Chebyshev: inputs × draws", "cost"], prow, left=2, classes=pclass)
                 + f"<p class=\"muted\">The cheapest number of draws M of each estimator and the inputs N it "
                   f"needs by the rule above (normal approximation; Chebyshev: distribution-free). Cost in "
                   f"backward passes of one input: forward {cost['forward']:g}, Î1 {cost['backward']:g} per "
                   f"draw, Î2 and the combination {cost['hessian']:g} per draw (Hessian-diagonal pass), "
                   f"exact T={cost['outputs']} backward passes per input. ★ cheapest.</p>"
                 + "".join(f"<p class=\"muted\">Note: {_e(n)}</p>" for n in plan["notes"]))

    if summary["bounds"]:
        names = [g["group"] for g in groups]
        brow = [[_e(b["name"]), _e(b["source"]), _e(b["quantity"]), _e(b["side"]), _bound_status(b)]
                + [_tightness(b, b["tightness"].get(n)) for n in names] for b in summary["bounds"]]
        parts.append("<h2 id=\"bounds\">Bounds and their tightness (Σ bound / Σ exact)</h2>"
                     + _table(["bound", "source", "quantity", "side", "status"]
                              + [_e(g["layer"]) for g in groups], brow, left=5)
                     + "<p class=\"muted\">vacuous: a lower bound equal to 0, true but uninformative.</p>")
    if summary["group_bounds"]:
        grow = []
        for b in summary["group_bounds"]:
            for group, v in b["groups"].items():
                vacuous = b["side"] == "lower" and v["bound"] == 0
                grow.append([_e(b["name"]), _e(b["source"]), _e(_layer_of(groups, group)), _num(v["bound"]),
                             _num(v["exact"]), _num(v["tightness"]),
                             "<span class=\"muted\">vacuous (0)</span>" if vacuous and b["holds"]
                             else _status(b["holds"])])
        parts.append(f"<details><summary><b>Trace and Frobenius bounds</b> ({len(grow)} rows)</summary>"
                     + _table(["bound", "source", "layer", "bound", "exact", "tightness", "status"],
                              grow, left=3) + "</details>")

    if figures:
        parts.append("<h2 id=\"figures\">Figures</h2>")
        parts += _figures(figures)
    files = summary.get("files") or {}
    if files:
        parts.append(_files([files.get("summary", "summary.json"), files.get("tensors"), files.get("report"),
                             *files.get("figures", [])]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _layer_of(groups: list[dict], group: str) -> str:
    return next((g["layer"] for g in groups if g["group"] == group), group)


def _files(listed: list[str | None]) -> str:
    """The files of the folder as relative links (they sit next to ``report.html``)."""
    items = "".join(f"<li><a href=\"{_e(f)}\"><code>{_e(f)}</code></a></li>" for f in listed if f)
    return f"<h2 id=\"files\">Files</h2><ul>{items}</ul>"


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
        parts.append(_files([files.get("audit"), files.get("report"), *files.get("figures", [])]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_audit(document: dict, path: str | Path, figures: dict[str, Path] | None = None) -> None:
    Path(path).write_text(render_audit(document, figures), encoding="utf-8")


CAPTIONS_SAMPLED = {
    "fisher_std": "Per layer (log scale): the mean of Î1, the standard deviation of one draw of Î1 (label "
                  "noise, "
                  "sqrt v1), the input noise sqrt Var_x I(θ|x), and the standard error of Î1 with this "
                  "run's N × M, "
                  "all estimated from the draws (docs/theory.md §17).",
    "sample_size": "Inputs Î1 needs, by the sample-size rule above: left, per layer against the target ρ "
                   "with this "
                   "run's M (● at the report's ρ, □ the error this run's N reaches); right, per layer at the "
                   "report's ρ against the draws M (● the plan's cheapest M).",
}


def render_sampled(summary: dict, figures: dict[str, Path] | None = None) -> str:
    """The HTML page of a sampled analysis's summary (``kind: "sampled"``)."""
    run, groups, plan = summary["run"], summary["groups"], summary["plan"]
    whole = groups[-1]
    layers = _layers(groups)
    classes = ["model" if g["group"] == MODEL_GROUP else "" for g in groups]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>fimvar report: {_e(run.get('model', run['family']))}</title><style>{CSS}</style>"
             f"</head><body>", "<h1>fimvar report (sampled Fisher)</h1>",
             "<p class=\"muted\">Î1, the squared score with labels sampled from the model, and its variance "
             "estimated from the draws themselves — label noise from the spread of the M draws of each "
             "input, "
             "input noise from the spread between inputs — at any number of outputs (docs/theory.md §17; "
             "Soen &amp; Sun, NeurIPS 2021 and 2024). "
             + ("Î2 is estimated too, by one Hutchinson probe of the Hessian per draw (docs/theory.md "
                "§17.5; its tensors are in sampled.safetensors; the text report compares its "
                "variance with Î1's); no exact Fisher or bound is computed. " if run.get("i2") else
                "No exact Fisher, Î2 or bound is computed. ")
             + f"fimvar "
             f"{_e(summary['fimvar_version'])}, {_e(summary['created'])}, summary schema "
             f"v{summary['schema_version']}.</p>"]
    confidence = f"err @{100 * (1 - plan['delta']):g}%"
    headers = ["layer", "‖Î1‖", "std error", "rel error", confidence, "N needed", "enough"]
    rows = []
    for g in groups:
        a = g["accuracy"].get("i1")
        if a is None:
            continue
        enough = ("—" if a["inputs_needed"] is None else "<span class=\"ok\">yes</span>" if a["enough"] else
                  f"<span class=\"bad\">no</span> (has {plan['available']:,})")
        rows.append([_e(g["layer"]), _num(a["fisher_norm"]), _num(a["standard_error"]),
                     _error(a["relative_error"]), _error(a["error_at_confidence"]), _num(a["inputs_needed"]),
                     enough])
    draws = "draw" if run["samples"] == 1 else "draws"
    parts.append(f"<h2 id=\"accuracy\">Accuracy of Î1 with N = {run['inputs']:,} inputs × M = "
                 f"{run['samples']} "
                 f"{draws}</h2><p>Per layer, the standard error sqrt(Σ Var Î1) of the layer's Î1 and its "
                 "ratio to "
                 f"‖Î1‖₂ (the plug-in for ‖I‖₂). Target: relative error ≤ {plan['rho']:g} with probability ≥ "
                 f"{1 - plan['delta']:g}; N needed at this M.</p>"
                 + _table(headers, rows, classes=classes) + _rule(plan))
    findings = []
    a = whole["accuracy"].get("i1")
    if a and a["relative_error"] is not None:
        verdict = _verdict(layers, "i1")
        findings.append(f"Whole model: Î1 has relative error {_error(a['relative_error'])} (RMS), below "
                        f"{_error(a['error_at_confidence'])} with probability {1 - plan['delta']:g}; "
                        "relative "
                        f"error ≤ {plan['rho']:g} in every layer needs "
                        f"{_num(max((g['accuracy']['i1']['inputs_needed'] or 0) for g in layers))} inputs "
                        "at M = "
                        f"{run['samples']}: the {plan['available']:,} analysed are {verdict}.")
    findings.append(f"With M = {run['samples']} draws, {_pct(whole['input_noise_share_i1'])} of Î1's "
                    "variance over "
                    f"the whole model comes from the inputs and {_pct(1 - whole['input_noise_share_i1'])} "
                    "from "
                    "the sampled labels; one draw has a standard deviation "
                    f"{_times(whole['relative_std_i1'])} "
                    f"the mean Î1.")
    rec = whole["recommended"]["normal"]
    if rec:
        findings.append(f"The cheapest design for relative error ≤ {plan['rho']:g} with probability ≥ "
                        f"{1 - plan['delta']:g} over the whole model is <b>{rec['inputs']:,} inputs × "
                        f"{rec['draws']} draws</b> (cost ≈ {_num(rec['cost'])} backward passes).")
    if run.get("precision") in ("float16", "bfloat16"):
        findings.append(f"<span class=\"bad\">The model computes in {_e(run['precision'])}</span>: its "
                        "outputs and "
                        f"derivatives carry that rounding (every sum is float64); docs/theory.md §13.2.")
    parts.append("<h2 id=\"findings\">Findings</h2><ul>" + "".join(f"<li>{f}</li>" for f in findings)
                 + "</ul>")
    meta_rows = [[_e(k), _num(v) if isinstance(v, (bool, float)) else
                  "<br>".join(_e(n) for n in v) if isinstance(v, list) else _e(v)] for k, v in run.items()
                 if v is not None]
    parts.append("<h2 id=\"run\">Run</h2>" + _table(["setting", "value"], meta_rows, left=2, css="run"))
    keys = ("layer", "parameters", "i1", "trace_i1", "std_i1", "relative_std_i1", "input_noise_share_i1")
    lrows = [[_e(g["layer"]), _num(g["parameters"]), _num(g["i1"]), _num(g["trace_i1"]), _num(g["std_i1"]),
              _times(g["relative_std_i1"]), _pct(g["input_noise_share_i1"]),
              _pct(1 - g["input_noise_share_i1"])]
             for g in groups]
    parts.append("<h2 id=\"layers\">Per-layer Fisher and noise</h2>"
                 + _table([SAMPLED_COLUMNS[k] for k in keys] + ["label noise Î1"], lrows, classes=classes)
                 + "<p class=\"muted\">Î1: mean over the layer's parameters; Σ Î1: their sum, the estimate "
                   "of the "
                   "layer's Fisher trace. std Î1: one draw, sqrt of the mean v1 estimated from the spread "
                   "of the "
                   f"draws; rel std: std / Î1. input noise / label noise: the shares of Var_x I(θ|x)/N and "
                   f"v1/(N M) in Î1's variance with M = {run['samples']}.</p>")
    prow, pclass = [], []
    for g in plan["groups"]:
        designs = {d["method"]: d for d in g["designs"] if d["estimator"] == "i1"}
        n, c = designs.get("normal"), designs.get("chebyshev")
        prow.append([_e(g["layer"]), _design(n), _num(n["cost"]) if n else "—", _design(c),
                     _num(c["cost"]) if c else "—"])
        pclass.append("model" if g["group"] == MODEL_GROUP else "")
    cost = plan["cost_model"]
    parts.append(f"<h2 id=\"plan\">Plan: relative error ≤ {plan['rho']:g} with probability ≥ "
                 f"{1 - plan['delta']:g}</h2>"
                 + _table(["layer", "normal: inputs × draws", "cost", "Chebyshev: inputs × draws", "cost"],
                          prow, classes=pclass)
                 + "<p class=\"muted\">The cheapest number of draws M of Î1 and the inputs N it needs by "
                   "the rule "
                   f"above. Cost in backward passes of one input: forward {cost['forward']:g}, "
                   f"{cost['backward']:g} per draw (the exact Fisher would cost T = {cost['outputs']} per "
                   f"input).</p>"
                 + "".join(f"<p class=\"muted\">Note: {_e(n)}</p>" for n in plan["notes"]))
    if figures:
        parts.append("<h2 id=\"figures\">Figures</h2>")
        for name, path in figures.items():
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            caption = _e(CAPTIONS_SAMPLED.get(name, name))
            parts.append(f"<figure id=\"fig-{_e(name)}\"><img alt=\"{caption}\" "
                         f"src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{caption}</figcaption></figure>")
    files = summary.get("files") or {}
    if files:
        parts.append(_files([files.get("summary", "summary.json"), files.get("tensors"), files.get("report"),
                             *files.get("figures", [])]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_sampled(summary: dict, path: str | Path, figures: dict[str, Path] | None = None) -> None:
    Path(path).write_text(render_sampled(summary, figures), encoding="utf-8")
