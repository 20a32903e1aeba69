"""Turn pydantic validation errors into one sentence that names each bad field."""

from pydantic import ValidationError


def explain(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "(payload)"
        problems.append(f"{field}: {item['msg']}")
    return "; ".join(problems)
