"""The real servers this test session started, with their versions: listed at the end of the
pytest report (``pytest_terminal_summary`` in conftest.py), so a CI log always says which Kafka,
schema registry and Weaviate the suite ran on, even with output captured."""
USED: list[str] = []


def record(line: str) -> None:
    USED.append(line)
