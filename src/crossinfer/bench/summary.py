"""LoadGen's own logs read back: mlperf_log_summary.txt's ``key : value`` lines, detail errors."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["detail_errors", "invalid_reason", "metric_key", "number", "parse_summary"]

_SUMMARY_LINE = re.compile(r"^\s*([^:*=][^:]*?)\s*:\s*(.*?)\s*$")
_METRIC_KEYS = {
    "singlestream": ("90.0th percentile latency (ns)",),
    "multistream": ("99.0th percentile latency (ns)",),
    "server": ("Completed samples per second", "Scheduled samples per second"),
    "offline": ("Samples per second",),
}


def parse_summary(text: str) -> dict[str, str]:
    """``key : value`` lines of mlperf_log_summary.txt; bullet sections joined under their title.

    The first occurrence of a key wins, so "Result is" and the reported metric come from the top
    block. Bullets ("Recommendations:", "Early Stopping Result:") are joined into one value.
    """
    out: dict[str, str] = {}
    section: str | None = None
    bullets: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("="):
            section = None
            continue
        if line.startswith("*"):
            body = line.lstrip("* ").strip()
            if section is not None:
                bullets.setdefault(section, []).append(body)
            match = _SUMMARY_LINE.match(body)
            if match and match.group(2):
                out.setdefault(match.group(1), match.group(2))
            continue
        if section is not None and not line.endswith(":") and ":" not in line:
            # a wrapped bullet (" with the run being successful if ...")
            if bullets.get(section):
                bullets[section][-1] += " " + line
            continue
        match = _SUMMARY_LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        if not value:
            section = key
            continue
        out.setdefault(key, value)
    for title, lines in bullets.items():
        out.setdefault(title, " ".join(lines))
    return out


def metric_key(scenario: str, summary: Mapping[str, str]) -> str:
    for key in _METRIC_KEYS[scenario]:
        if key in summary:
            return key
    # LoadGen spells the percentile after the settings ("90.0th" at the default percentile)
    for key in summary:
        if "percentile latency" in key and key[0].isdigit() and "th " in key:
            return key
    return _METRIC_KEYS[scenario][0]


def number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        return None


def detail_errors(path: Path) -> tuple[str, ...]:
    if not path.exists():
        return ()
    errors: list[str] = []
    with path.open() as handle:
        for line in handle:
            if '"is_error": true' not in line:
                continue
            try:
                record = json.loads(line.partition(":::MLLOG")[2])
            except json.JSONDecodeError:
                continue
            errors.append(str(record.get("value", "")))
    return tuple(errors)


def invalid_reason(summary: Mapping[str, str]) -> str:
    """Why LoadGen called a run INVALID, in its own words: each "... satisfied : NO" check, then
    its early-stopping verdict and recommendations; empty when nothing says why."""
    failed = [
        key.removesuffix(" satisfied").lower()
        for key, value in summary.items()
        if key.endswith("satisfied") and value.strip().upper() == "NO"
    ]
    parts = [f"not satisfied: {', '.join(failed)}"] if failed else []
    for section in ("Early Stopping Result", "Recommendations"):
        if summary.get(section):
            parts.append(f"{section.lower()}: {summary[section]}")
    return "; ".join(parts)
