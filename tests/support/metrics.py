"""Reading a Prometheus scrape with prometheus-client's own parser."""

from prometheus_client.parser import text_string_to_metric_families


def scrape_text(text: str) -> str:
    """The scrape, after checking that prometheus-client parses it whole."""
    list(text_string_to_metric_families(text))
    return text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` (`x_total`, `x_bucket`, `x_count` ...) with its labels."""
    return [
        (s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples if s.name == name
    ]


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    """The value of the one sample called `name` with exactly these labels; None if there is none."""
    found = [value for sample_labels, value in samples(text, name) if sample_labels == labels]
    assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
    return found[0] if found else None
