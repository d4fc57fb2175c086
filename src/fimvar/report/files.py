"""Save a result into a folder (summary, tensors, figures, HTML) and load it back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fimvar.errors import FimvarError
from fimvar.estimators.design import DEFAULT_TARGET, Target
from fimvar.report import html as html_report
from fimvar.report import plots, tensors
from fimvar.report import summary as summaries
from fimvar.results.audit import AuditResult
from fimvar.results.diagonal import DiagonalResult
from fimvar.results.full import FullResult
from fimvar.results.hidden import HiddenResult
from fimvar.results.plan import Plan
from fimvar.results.presentation import presents
from fimvar.results.sampled import SampledResult
from fimvar.results.weight_norms import LayerNormBound, WeightNormResult

SUMMARY = "summary.json"
TENSORS = "fisher.safetensors"
FULL_TENSORS = "full.safetensors"
HIDDEN_TENSORS = "hidden.safetensors"
SAMPLED_TENSORS = "sampled.safetensors"
REPORT = "report.html"
AUDIT = "audit.json"
FIGURE_DIR = "figures"


def writable_directory(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and check it can be written, with one clear error."""
    directory = Path(directory).expanduser()
    try:
        if directory.exists() and not directory.is_dir():
            raise FimvarError(f"the output {directory} exists and is not a folder; choose another --out")
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".fimvar-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise FimvarError(f"cannot write to the output folder {directory} ({error.strerror or error}); "
                          "choose a writable --out") from error
    return directory


@contextmanager
def _write_errors(directory: Path) -> Iterator[None]:
    """Context for writing into ``directory``: an ``OSError`` becomes one clear error."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or error
        raise FimvarError(f"cannot write to {directory} ({reason}); choose a writable --out") from error


def _remove_stale(directory: Path, written: list[Path], *, drop_report: bool) -> None:
    """Remove the files of fimvar's own kinds that this save did not write, so that a folder
    never mixes two runs: every ``figures/<name>.png|svg`` of a known figure name not in
    ``written``, and ``report.html`` when ``drop_report``. Nothing else is touched; an emptied
    ``figures/`` is removed."""
    kept = {path.resolve() for path in written}
    folder = directory / FIGURE_DIR
    names = {name for builders in plots.BUILDERS.values() for name in builders}
    for name in sorted(names):
        for fmt in plots.FORMATS:
            path = folder / f"{name}.{fmt}"
            if path.is_file() and path.resolve() not in kept:
                path.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    report = directory / REPORT
    if drop_report and report.is_file():
        report.unlink()


@presents(DiagonalResult, "save")
def save(result: DiagonalResult, directory: str | os.PathLike, target: Target = DEFAULT_TARGET, *,
         run: dict | None = None, figures: bool = True, html: bool = True, plan: Plan | None = None) -> Path:
    """Write ``summary.json``, ``fisher.safetensors``, ``figures/*.png|svg`` and ``report.html``.

    Args:
        result: a :class:`~fimvar.DiagonalResult`.
        directory: output folder (created if needed).
        target: target of the plan stored in the summary (relative error ρ, confidence 1−δ).
        run: extra run metadata for the summary (model and data description, command…).
        figures: write the figures (needs matplotlib).
        html: write ``report.html`` (with the figures embedded when ``figures``).
        plan: the plan for ``target`` when it is already made (it is made otherwise).

    Returns:
        The output folder.
    """
    directory = writable_directory(directory)
    with _write_errors(directory):
        files: dict = {"summary": SUMMARY, "tensors": TENSORS, "figures": []}
        tensors.write(result, directory / TENSORS)
        pngs: dict[str, Path] = {}
        written: list[Path] = []
        if figures:
            written = plots.save_figures(result, directory / FIGURE_DIR, target)
            files["figures"] = [str(p.relative_to(directory)) for p in written]
            pngs = {p.stem: p for p in written if p.suffix == ".png"}
        if html:
            files["report"] = REPORT
        document = summaries.build_summary(result, target, run=run, files=files, plan=plan)
        summaries.write(document, directory / SUMMARY)
        if html:
            html_report.write(document, directory / REPORT, pngs)
        _remove_stale(directory, written, drop_report=not html)
    return directory


@presents(SampledResult, "save")
def save_sampled(result: SampledResult, directory: str | os.PathLike, target: Target = DEFAULT_TARGET, *,
                 run: dict | None = None, figures: bool = True, html: bool = True,
                 plan: Plan | None = None) -> Path:
    """Write a sampled analysis: ``summary.json`` (``kind: "sampled"``), ``sampled.safetensors``,
    ``figures/fisher_std|sample_size.png|svg`` and ``report.html``; arguments as :func:`save`."""
    directory = writable_directory(directory)
    with _write_errors(directory):
        files: dict = {"summary": SUMMARY, "tensors": SAMPLED_TENSORS, "figures": []}
        tensors.write_sampled(result, directory / SAMPLED_TENSORS)
        written: list[Path] = []
        if figures:
            written = plots.save_figures(result, directory / FIGURE_DIR, target)
            files["figures"] = [str(p.relative_to(directory)) for p in written]
        if html:
            files["report"] = REPORT
        document = summaries.sampled_summary(result, target, run=run, files=files, plan=plan)
        summaries.write(document, directory / SUMMARY)
        if html:
            html_report.write_sampled(document, directory / REPORT,
                                      {p.stem: p for p in written if p.suffix == ".png"})
        _remove_stale(directory, written, drop_report=not html)
        stale = directory / TENSORS  # a diagonal run's tensors would not match this summary
        if stale.is_file():
            stale.unlink()
    return directory


def _save_other(result, directory, tensor_file: str | None, write_tensors, figures: bool) -> Path:
    directory = writable_directory(directory)
    with _write_errors(directory):
        files: dict = {"summary": SUMMARY, "figures": []}
        if tensor_file is not None:
            write_tensors(result, directory / tensor_file)
            files["tensors"] = tensor_file
        written: list[Path] = []
        if figures:
            written = plots.save_figures(result, directory / FIGURE_DIR)
            files["figures"] = [str(p.relative_to(directory)) for p in written]
        summaries.write(result.summary() | {"files": files}, directory / SUMMARY)
        _remove_stale(directory, written, drop_report=False)  # these results have no report.html
    return directory


@presents(AuditResult, "save")
def save_audit(result: AuditResult, directory: str | os.PathLike, *, run: dict | None = None,
               figures: bool = True, html: bool = True) -> Path:
    """Write ``audit.json`` (:meth:`~fimvar.AuditResult.to_dict` with the run metadata, the
    version and the time; non-finite numbers as ``null``), ``figures/audit.png|svg`` and
    ``report.html`` (the audit's tables with the figure embedded).

    Args:
        result: an :class:`~fimvar.AuditResult`.
        directory: output folder (created if needed).
        run: run metadata shown in the report (model, data, command…).
        figures: write the figure (needs matplotlib).
        html: write ``report.html`` (with the figure embedded when ``figures``).

    Returns:
        The output folder.
    """
    directory = writable_directory(directory)
    with _write_errors(directory):
        files: dict = {"audit": AUDIT, "figures": []}
        written: list[Path] = []
        if figures:
            written = plots.save_figures(result, directory / FIGURE_DIR)
            files["figures"] = [str(p.relative_to(directory)) for p in written]
        if html:
            files["report"] = REPORT
        document = summaries.audit_document(result, run=run, files=files)
        summaries.write(document, directory / AUDIT)
        if html:
            html_report.write_audit(document, directory / REPORT, {p.stem: p for p in written
                                                                  if p.suffix == ".png"})
        _remove_stale(directory, written, drop_report=not html)
    return directory


@presents(FullResult, "save")
def save_full(result: FullResult, directory: str | os.PathLike, *, figures: bool = True) -> Path:
    """Write ``summary.json``, ``full.safetensors`` and ``figures/`` of a full-matrix result."""
    return _save_other(result, directory, FULL_TENSORS, tensors.write_full, figures)


@presents(HiddenResult, "save")
def save_hidden(result: HiddenResult, directory: str | os.PathLike, *, figures: bool = True) -> Path:
    """Write ``summary.json``, ``hidden.safetensors`` and ``figures/`` of a hidden-layer result."""
    return _save_other(result, directory, HIDDEN_TENSORS, tensors.write_hidden, figures)


@presents(WeightNormResult, "save")
def save_weight_norms(result: WeightNormResult, directory: str | os.PathLike, *,
                      figures: bool = True) -> Path:
    """Write ``summary.json`` (every number of the result) and ``figures/``."""
    return _save_other(result, directory, None, None, figures)


def _resolve(path: str | os.PathLike, name: str) -> Path:
    """The file ``name`` of a saved result given its folder, that file itself, or the folder's
    ``summary.json``; one clear error for anything else."""
    path = Path(path).expanduser()
    expected = ("a folder written by `fimvar analyze --out` or a result's save(), its summary.json "
                f"or its {name}")
    if path.is_dir():
        path = path / name
    elif path.is_file() and path.name != name:
        if path.name == SUMMARY:
            path = path.parent / name  # the summary sits next to the tensors
        elif path.suffix != Path(name).suffix:
            raise FimvarError(f"{path} is not a saved fimvar result; give {expected}")
    if not path.exists():
        raise FimvarError(f"no saved fimvar result at {path} (expected {expected})")
    return path


def load(path: str | os.PathLike) -> DiagonalResult | SampledResult:
    """Read a result saved by :func:`save` (a folder, its ``summary.json`` or its
    ``fisher.safetensors``), or a sampled analysis saved by :func:`save_sampled` (its folder,
    ``summary.json`` or ``sampled.safetensors``).

    Every tensor and every summary method (variances, α*, plan, bounds, tables) works on the loaded
    result as on the original.
    """
    candidate = Path(path).expanduser()
    folder = candidate if candidate.is_dir() else candidate.parent
    if candidate.name == SAMPLED_TENSORS or (candidate.name in ("", SUMMARY) or candidate.is_dir()) and \
            (folder / SAMPLED_TENSORS).is_file() and not (folder / TENSORS).is_file():
        return load_sampled(path)
    return load_diagonal(path)


@presents(DiagonalResult, "load")
def load_diagonal(path: str | os.PathLike) -> DiagonalResult:
    """Read a :class:`~fimvar.DiagonalResult` saved by :func:`save`."""
    return tensors.read(_resolve(path, TENSORS))


@presents(SampledResult, "load")
def load_sampled(path: str | os.PathLike) -> SampledResult:
    """Read a sampled analysis saved by :func:`save_sampled` (its folder, its ``summary.json`` or
    its ``sampled.safetensors``)."""
    return tensors.read_sampled(_resolve(path, SAMPLED_TENSORS))


@presents(FullResult, "load")
def load_full(path: str | os.PathLike) -> FullResult:
    return tensors.read_full(_resolve(path, FULL_TENSORS))


@presents(HiddenResult, "load")
def load_hidden(path: str | os.PathLike) -> HiddenResult:
    return tensors.read_hidden(_resolve(path, HIDDEN_TENSORS))


@presents(WeightNormResult, "load")
def load_weight_norms(path: str | os.PathLike) -> WeightNormResult:
    document = summaries.read(_resolve(path, SUMMARY))
    if document.get("kind") != "weight_norms":
        raise FimvarError(f"{path} does not hold weight-norm bounds")
    layers = [LayerNormBound(**{k: (float("nan") if v is None else v) for k, v in row.items()})
              for row in document["layers"]]
    return WeightNormResult(document["run"]["family"], int(document["run"]["inputs"]), layers)
