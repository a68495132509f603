"""Checks the fuzzer (schemathesis) runs on every response of spot-scheduler's api, besides its own
`not_a_server_error`: a refused input is answered with a body that says which field is wrong, and
every route the OpenAPI document lists is served.

Loaded by tests/fuzz.rs through SCHEMATHESIS_HOOKS=spot_checks.
"""

import json

import schemathesis

# Statuses that mean "your input is wrong": their bodies must name the field.
INPUT_ERRORS = {400, 413, 422, 429}
# Minion answers in plain text, as minion does (seed 000); the field is named in the text.
PLAIN_TEXT_PREFIXES = ("/v1/minion/",)


def _names_a_field(body) -> bool:
    if not isinstance(body, dict):
        return False
    field = body.get("field")
    if isinstance(field, str) and field:
        return True
    # HRM's shape (seed 001): {"errors": {field: reason}}.
    errors = body.get("errors")
    return isinstance(errors, dict) and len(errors) > 0


@schemathesis.check
def input_errors_name_the_field(ctx, response, case):
    if response.status_code not in INPUT_ERRORS:
        return None
    path = case.operation.path
    text = response.content.decode("utf-8", errors="replace")
    if path.startswith(PLAIN_TEXT_PREFIXES):
        assert text.strip(), f"{response.status_code} with an empty body"
        return None
    try:
        body = json.loads(text)
    except ValueError:
        raise AssertionError(f"{response.status_code} whose body is not JSON: {text[:200]!r}")
    assert _names_a_field(body), f"{response.status_code} naming no field: {text[:200]!r}"
    return None


@schemathesis.check
def documented_routes_are_served(ctx, response, case):
    """A route in the document must exist: the api's fallback answers 404 "no such route"."""
    # The coverage phase also tries undocumented methods (TRACE): those are not routes.
    if response.status_code != 404 or case.method.upper() != case.operation.method.upper():
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("message") == "no such route":
        raise AssertionError(f"{case.method} {case.operation.path} is documented but not served")
    return None
