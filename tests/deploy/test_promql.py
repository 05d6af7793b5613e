from __future__ import annotations

import pytest

from tests.deploy.promql import metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("chorus_queue_depth", {"chorus_queue_depth"}),
        (
            'sum by (status) (rate(chorus_requests_total{status!~"2..", adapter="x"}[$__rate_interval]))',
            {"chorus_requests_total"},
        ),
        ("histogram_quantile(0.95, sum by (le) (rate(chorus_a_bucket[5m])))", {"chorus_a_bucket"}),
        ("sum(rate(a_sum[1m])) / sum(rate(a_count[1m]))", {"a_sum", "a_count"}),
        ("sum by (tier) (rate(h[1m])) / ignoring(tier) group_left() (sum(rate(h[1m])) + sum(rate(m[1m])))", {"h", "m"}),
        ("topk(10, sum without (instance, job) (x))", {"x"}),
        ("up == 1 and on(job) y offset 5m", {"up", "y"}),
        ("sum(rate(x[${__rate_interval}])) * 1e3", {"x"}),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names
