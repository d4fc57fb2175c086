"""The results of every mode: data and mathematics only (their presentation is fimvar.report)."""
