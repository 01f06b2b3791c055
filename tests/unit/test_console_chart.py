"""The console's outcomes chart, drawn without a database: hours, stacks and escaping."""

from __future__ import annotations

from datetime import datetime, timezone

from gateway.console import chart

NOW = datetime(2026, 11, 21, 15, tzinfo=timezone.utc)


def test_buckets_are_the_last_hours_ending_with_the_current_one():
    hours = chart.hour_buckets(NOW, 24)
    assert len(hours) == 24 and hours[-1] == NOW and hours[0] == datetime(2026, 11, 20, 16, tzinfo=timezone.utc)


def test_each_hour_is_a_stack_scaled_to_the_busiest_hour():
    hours = chart.hour_buckets(NOW, 3)
    counts = chart.counts_by_processor([
        {"processor_id": "mock", "hour": NOW, "status": "succeeded", "count": 3},
        {"processor_id": "mock", "hour": NOW, "status": "failed", "count": 1},
        {"processor_id": "mock", "hour": hours[0], "status": "requires_attention", "count": 2}])["mock"]

    svg = chart.svg("mock", hours, counts)

    assert chart.totals(hours, counts) == {"succeeded": 3, "failed": 1, "requires_attention": 2}
    assert svg.count("<rect ") == 3
    assert 'height="72.0"><title>15:00 UTC: 3 succeeded</title>' in svg  # 3 of the top stack's 4: 3/4 of 96
    assert 'height="24.0"><title>15:00 UTC: 1 failed</title>' in svg
    assert "<title>13:00 UTC: 2 needs attention</title>" in svg
    assert '>4</text>' in svg  # the scale's top


def test_an_hour_without_outcomes_draws_nothing_and_names_are_escaped():
    svg = chart.svg('<script>"x"</script>', chart.hour_buckets(NOW, 24), {})
    assert "<rect" not in svg and "<script>" not in svg
    assert 'data-processor="&lt;script&gt;&quot;x&quot;&lt;/script&gt;"' in svg
