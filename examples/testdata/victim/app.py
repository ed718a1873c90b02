"""The victim of examples/sandbox_test.go: an ordinary function with a
secret in its environment."""

import os


def handler(event, context):
    return {"alive": True, "has_secret": bool(os.environ.get("VICTIM_SECRET"))}
