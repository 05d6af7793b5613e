"""Metric names referenced by a PromQL expression (enough of PromQL for dashboards: no subqueries needed)."""

from __future__ import annotations

import re

GRAFANA_VARIABLES = re.compile(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}")
KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def concrete(expr: str) -> str:
    """The expression with Grafana's interval variables replaced, as Prometheus would receive it."""
    return GRAFANA_VARIABLES.sub("5m", expr)


def metric_names(expr: str) -> set[str]:
    text = concrete(expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # strings (label values, legends)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = LABEL_LISTS.sub(r"\1", text)  # label names after by/without/on/ignoring/group_*
    names = set()
    for match in IDENTIFIER.finditer(text):
        word, rest = match.group(), text[match.end() :].lstrip()
        if word.lower() in KEYWORDS or rest.startswith("(") or re.match(r"(by|without)\b", rest):
            continue  # keywords, functions, aggregations (`sum(...)`, `sum by (...) (...)`)
        if re.fullmatch(r"\d+[smhdwy]", word) or text[max(0, match.start() - 1)].isdigit():
            continue
        names.add(word)
    return names
