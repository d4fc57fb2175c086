"""Save a result into a directory (summary, tensors, figures, HTML) and load it back."""

from __future__ import annotations

import os
from pathlib import Path

from fimvar.errors import FimvarError
from fimvar.report import html as html_report
from fimvar.report import summary as summaries
from fimvar.report import tensors

SUMMARY = "summary.json"
TENSORS = "fisher.safetensors"
REPORT = "report.html"
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


def save(result, directory: str | os.PathLike, *, rho: float = 0.1, delta: float = 0.05,
         run: dict | None = None, figures: bool = True, html: bool = True) -> Path:
    """Write ``summary.json``, ``fisher.safetensors``, ``figures/*.png|svg`` and ``report.html``.

    Args:
        result: a :class:`~fimvar.DiagonalResult`.
        directory: output folder (created if needed).
        rho, delta: target of the plan stored in the summary (relative error ρ, confidence 1−δ).
        run: extra run metadata for the summary (model and data description, command…).
        figures: write the figures (needs matplotlib).
        html: write ``report.html`` (with the figures embedded when ``figures``).

    Returns:
        The output folder.
    """
    directory = writable_directory(directory)
    try:
        files: dict = {"summary": SUMMARY, "tensors": TENSORS, "figures": []}
        tensors.write(result, directory / TENSORS)
        pngs: dict[str, Path] = {}
        if figures:
            from fimvar.report.plots import save_figures

            written = save_figures(result, directory / FIGURE_DIR, rho=rho, delta=delta)
            files["figures"] = [str(p.relative_to(directory)) for p in written]
            pngs = {p.stem: p for p in written if p.suffix == ".png"}
        if html:
            files["report"] = REPORT
        document = summaries.build_summary(result, rho=rho, delta=delta, run=run, files=files)
        summaries.write(document, directory / SUMMARY)
        if html:
            html_report.write(document, directory / REPORT, pngs)
    except OSError as error:
        reason = error.strerror or error
        raise FimvarError(f"cannot write to {directory} ({reason}); choose a writable --out") from error
    return directory


def load(path: str | os.PathLike):
    """Read a result saved by :func:`save` (a folder, or its ``fisher.safetensors``).

    Every tensor and every summary method (variances, α*, plan, bounds, tables) works on the loaded
    result as on the original.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / TENSORS
    if not path.exists():
        raise FimvarError(f"no saved fimvar result at {path} (expected a folder written by "
                          "`fimvar analyze --out` or DiagonalResult.save)")
    return tensors.read(path)
