"""Reading a service's `/metrics` (a Prometheus text exposition), for tests and the benchmark."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One `/metrics` answer, parsed."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def values(self, name: str, **labels: str) -> list[float]:
        """The values of every sample called `name` whose labels include `labels`."""
        return [
            value
            for sample, sample_labels, value in self.samples
            if sample == name and labels.items() <= sample_labels.items()
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum over the matching samples; None when there is none."""
        found = self.values(name, **labels)
        return sum(found) if found else None

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """The cumulative buckets of histogram `name` (without `_bucket`) whose labels include
        `labels`: (upper bound, count), ascending, ending with +Inf."""
        return sorted(
            (float(sample_labels["le"]), value)
            for sample, sample_labels, value in self.samples
            if sample == f"{name}_bucket" and labels.items() <= sample_labels.items()
        )

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [labels for sample, labels, _ in self.samples if sample == name]

    def __repr__(self) -> str:
        # What a failed wait saw, without the `_created` timestamps.
        seen = [f"{n}{labels}={v}" for n, labels, v in self.samples if "_created" not in n]
        return f"Scrape({len(self.samples)} samples: {seen[:60]})"
