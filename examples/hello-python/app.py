"""hello-python: the smallest ebb python function.

Everything at module level runs once per instance, when ebb loads the module
(with the fork-server, once in the zygote before instances are forked from
it); the handler runs once per invocation. The invocation counter below shows
the difference: it climbs while requests reuse a warm instance and starts over
on a cold start.
"""

import os

# Module-level state: initialised once, then shared by every invocation that
# this instance serves. A real function would load its model here.
_invocations = 0


def handler(event, context):
    """Greet event["name"] (default "world") and report instance state."""
    global _invocations
    _invocations += 1

    name = "world"
    if isinstance(event, dict) and isinstance(event.get("name"), str) and event["name"]:
        name = event["name"]

    return {
        "message": f"hello, {name}",
        "request_id": context.aws_request_id,
        "instance_invocations": _invocations,
        # getpid() is read per call, not at import, because under the
        # fork-server the import ran in the zygote, not in this instance.
        "pid": os.getpid(),
    }
