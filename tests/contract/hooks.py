"""Schemathesis hooks for kvsync's contract run (scripts/contract.sh).

They only teach schemathesis the JSON-lines media type of export and import, which it
has no serializer for; every check stays on (see schemathesis.toml for the exceptions).
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson_serializer(ctx, value):
    # One line per object: a list is several lines, anything else one.
    items = value if isinstance(value, list) else [value]
    return ("\n".join(json.dumps(item) for item in items) + "\n").encode("utf-8")


@schemathesis.deserializer("application/x-ndjson")
def ndjson_deserializer(ctx, response):
    # The schema is one line's: every line must be JSON, and the first is validated.
    # An empty stream has no line to validate.
    text = response.content.decode("utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not lines:
        raise NotImplementedError("an empty JSON-lines stream has no line to validate")
    return lines[0]
