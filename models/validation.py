"""Turn pydantic validation errors into one sentence that names each bad field."""

from pydantic import ValidationError

# A refusal is recorded in the deal's history and shown to people: it names what was wrong, it
# never echoes an arbitrarily long payload (a 5,000-character field name, say) back into it.
MAX_NAME = 40
MAX_PROBLEMS = 5


def _short(part: object) -> str:
    text = str(part)
    return text if len(text) <= MAX_NAME else f"{text[:MAX_NAME]}…"


def explain(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        field = ".".join(_short(part) for part in item["loc"]) or "(payload)"
        problems.append(f"{field}: {item['msg'][:200]}")
    more = len(problems) - MAX_PROBLEMS
    return "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
