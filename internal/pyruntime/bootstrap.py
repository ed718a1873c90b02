"""ebb's Python runtime: a client of the AWS Lambda Runtime API.

It imports the module named by _HANDLER ("module.function") once, then asks
the Runtime API at AWS_LAMBDA_RUNTIME_API for invocations and calls
function(event, context) for each, as AWS Lambda's Python runtime does.

Only the standard library is used, so that it runs on any Python >= 3.9
without installing anything next to the user's code.

load_handler() and serve() are separate so that a fork-server can import the
user's module once and fork children that each call serve(); everything that
must not be shared between processes (the HTTP connection) is made in serve().

Priming: when EBB_WARMUP holds a JSON event, serve() calls the handler once
with it before its first poll of /next (which ebb takes as "ready"), so that
an instance started ahead of need pays for the handler's first call (lazy
imports, caches, the page faults of a freshly forked child) before it is
handed a request. The result is discarded; an exception is one "[WARN] warmup"
line on stderr. The variable is removed before user code runs again.
"""

import decimal
import http.client
import importlib
import json
import os
import sys
import time
import traceback

API_VERSION = "2018-06-01"
NEXT_PATH = "/" + API_VERSION + "/runtime/invocation/next"
INVOCATION_PREFIX = "/" + API_VERSION + "/runtime/invocation/"
INIT_ERROR_PATH = "/" + API_VERSION + "/runtime/init/error"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
JSON_HEADERS = {"Content-Type": "application/json"}

# The handler found by load_handler, for serve() in this or a forked process.
_handler = None

WARMUP_ENV = "EBB_WARMUP"
WARMUP_REQUEST_ID = "warmup"
# The warmup call's deadline: generous, since nobody waits on its answer;
# ebb bounds how long it waits for the instance to become ready.
WARMUP_DEADLINE_MS = 15 * 60 * 1000


class InitError(Exception):
    """A failure to load the handler, reported to /runtime/init/error."""

    def __init__(self, error_type, message, stack_trace=None):
        Exception.__init__(self, message)
        self.error_type = error_type
        self.message = message
        self.stack_trace = stack_trace or []


class CognitoIdentity(object):
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, identity_id=None, pool_id=None):
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id


class Client(object):
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __init__(self, d):
        self.installation_id = d.get("installation_id")
        self.app_title = d.get("app_title")
        self.app_version_name = d.get("app_version_name")
        self.app_version_code = d.get("app_version_code")
        self.app_package_name = d.get("app_package_name")


class ClientContext(object):
    __slots__ = ("client", "custom", "env")

    def __init__(self, d):
        client = d.get("client") or d.get("Client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = d.get("custom")
        self.env = d.get("env")


class LambdaContext(object):
    """The context argument of a handler, with the attributes Lambda gives."""

    __slots__ = (
        "aws_request_id",
        "function_name",
        "function_version",
        "invoked_function_arn",
        "memory_limit_in_mb",
        "log_group_name",
        "log_stream_name",
        "identity",
        "client_context",
        "tenant_id",
        "trace_context",
        "_deadline_ms",
    )

    def __init__(self, statics, request_id, deadline_ms, arn, identity, client_context, tenant_id, trace_context=None):
        (
            self.function_name,
            self.function_version,
            self.memory_limit_in_mb,
            self.log_group_name,
            self.log_stream_name,
        ) = statics
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self.identity = identity
        self.client_context = client_context
        self.tenant_id = tenant_id
        # The invocation's W3C trace context, {"traceparent": ..., and
        # "tracestate": ... when there is one}; {} when untraced. It is a
        # carrier as OpenTelemetry's propagators take it:
        # TraceContextTextMapPropagator().extract(context.trace_context)
        # makes the handler's spans children of ebb's.
        self.trace_context = trace_context if trace_context is not None else {}
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def __repr__(self):
        return "LambdaContext(aws_request_id=%r, function_name=%r, function_version=%r)" % (
            self.aws_request_id,
            self.function_name,
            self.function_version,
        )


def _log_error(error_type, message, stack_trace):
    # The function's log is its stderr; a traceback there is what a user
    # reads in `ebb logs` when an invocation fails.
    lines = ["[ERROR] %s: %s\n" % (error_type, message)]
    if stack_trace:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(stack_trace)
    try:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()
    except Exception:
        pass


def _user_frames(tb):
    """Formats the frames of tb below the runtime's and importlib's own."""
    frames = traceback.extract_tb(tb)
    while frames and _is_runtime_frame(frames[0].filename):
        frames = frames[1:]
    return traceback.format_list(frames)


_RUNTIME_FILES = frozenset(os.path.abspath(f) for f in (__file__, importlib.__file__))


def _is_runtime_frame(filename):
    return filename.startswith("<frozen importlib") or os.path.abspath(filename) in _RUNTIME_FILES


def _setup_path(task_root):
    # The shim's own directory must not shadow user modules (or be found
    # again as a module named like the shim).
    shim_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != shim_dir or shim_dir == task_root]
    extra = [task_root]
    for sub in ("vendor", "site-packages"):
        d = os.path.join(task_root, sub)
        if os.path.isdir(d):
            extra.append(d)
    sys.path[:] = extra + [p for p in sys.path if p not in extra]


def load_handler():
    """Imports the handler's module once and returns the handler function.

    Raises InitError with Lambda's error type when it cannot.
    """
    global _handler
    if _handler is not None:
        return _handler
    task_root = os.path.abspath(os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd())
    _setup_path(task_root)
    spec = os.environ.get("_HANDLER", "")
    module_name, _, function_name = spec.replace("/", ".").rpartition(".")
    if not module_name or not function_name:
        raise InitError("Runtime.MalformedHandlerName", "Bad handler '%s': not enough values to unpack (expected 2, got 1)" % spec)
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as e:
        raise InitError(
            "Runtime.UserCodeSyntaxError",
            "Syntax error in module '%s': %s" % (module_name, e),
            traceback.format_exception_only(type(e), e),
        )
    except ImportError as e:
        raise InitError(
            "Runtime.ImportModuleError",
            "Unable to import module '%s': %s" % (module_name, e),
            _user_frames(e.__traceback__),
        )
    except (Exception, SystemExit) as e:
        raise InitError(
            "Runtime.ImportModuleError",
            "Unable to import module '%s': %s" % (module_name, _describe(e)),
            _user_frames(e.__traceback__),
        )
    handler = getattr(module, function_name, None)
    if handler is None:
        raise InitError("Runtime.HandlerNotFound", "Handler '%s' missing on module '%s'" % (function_name, module_name))
    if not callable(handler):
        raise InitError("Runtime.HandlerNotFound", "Handler '%s' on module '%s' is not callable" % (function_name, module_name))
    _handler = handler
    return handler


def _describe(e):
    text = str(e)
    return text if text else type(e).__name__


def _json_default(o):
    if isinstance(o, decimal.Decimal):
        return int(o) if o == o.to_integral_value() else float(o)
    raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)


_ENCODER = json.JSONEncoder(default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(default=_json_default, allow_nan=False, separators=(",", ":"))


def _to_json(result):
    try:
        return _ENCODER.encode(result).encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8; escaped they are still valid JSON.
        return _ASCII_ENCODER.encode(result).encode("ascii")


def _error_body(error_type, message, stack_trace):
    return json.dumps(
        {"errorMessage": message, "errorType": error_type, "stackTrace": stack_trace},
        ensure_ascii=True,
        default=str,
    ).encode("ascii")


class _API(object):
    """One keep-alive HTTP connection to the Runtime API, remade if it breaks."""

    def __init__(self, addr):
        self.addr = addr
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        """Returns (status, headers, body); retries once on a broken connection."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.addr)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, resp, data
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None


def report_init_error(api_addr, err):
    """Posts err (an InitError) to /runtime/init/error."""
    _log_error(err.error_type, err.message, err.stack_trace)
    api = _API(api_addr)
    try:
        headers = {"Content-Type": "application/json", ERROR_TYPE_HEADER: err.error_type}
        api.request("POST", INIT_ERROR_PATH, _error_body(err.error_type, err.message, err.stack_trace), headers)
    finally:
        api.close()


def _statics():
    name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
    version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    try:
        memory = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0"))
    except ValueError:
        memory = 0
    group = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME") or "/aws/lambda/" + name
    stream = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or "%s/[%s]%d" % (time.strftime("%Y/%m/%d"), version, os.getpid())
    return (name, version, memory, group, stream)


def _json_header(resp, name, factory):
    raw = resp.getheader(name)
    if not raw:
        return None
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    return factory(d) if isinstance(d, dict) else None


def _identity(d):
    return CognitoIdentity(d.get("cognitoIdentityId", d.get("CognitoIdentityID")), d.get("cognitoIdentityPoolId", d.get("CognitoIdentityPoolID")))


def serve(api_addr, handler=None):
    """Runs the invocation loop against the Runtime API at api_addr; it
    returns only by raising when the API goes away or refuses to serve."""
    if handler is None:
        handler = load_handler()
    statics = _statics()
    warmup(handler, statics)
    api = _API(api_addr)
    environ = os.environ
    try:
        while True:
            status, resp, body = api.request("GET", NEXT_PATH)
            if status != 200:
                raise RuntimeError("GET %s: status %d: %s" % (NEXT_PATH, status, body[:200]))
            request_id = resp.getheader("Lambda-Runtime-Aws-Request-Id", "")
            trace_id = resp.getheader("Lambda-Runtime-Trace-Id")
            if trace_id:
                environ["_X_AMZN_TRACE_ID"] = trace_id
            else:
                environ.pop("_X_AMZN_TRACE_ID", None)
            try:
                deadline_ms = int(resp.getheader("Lambda-Runtime-Deadline-Ms", "0"))
            except ValueError:
                deadline_ms = 0
            identity = _json_header(resp, "Lambda-Runtime-Cognito-Identity", _identity) or CognitoIdentity()
            client_context = _json_header(resp, "Lambda-Runtime-Client-Context", ClientContext)
            trace_context = {}
            traceparent = resp.getheader("traceparent")
            if traceparent:
                trace_context["traceparent"] = traceparent
                tracestate = resp.getheader("tracestate")
                if tracestate:
                    trace_context["tracestate"] = tracestate
            context = LambdaContext(
                statics,
                request_id,
                deadline_ms,
                resp.getheader("Lambda-Runtime-Invoked-Function-Arn", ""),
                identity,
                client_context,
                resp.getheader("Lambda-Runtime-Aws-Tenant-Id"),
                trace_context,
            )
            _invoke(api, handler, request_id, body, context)
    finally:
        api.close()


def warmup(handler, statics=None):
    """Calls handler once with the event in EBB_WARMUP, if any, and removes
    the variable. Nothing it does is fatal: a spare that failed to prime is
    still a working instance."""
    raw = os.environ.pop(WARMUP_ENV, None)
    if not raw:
        return
    try:
        event = json.loads(raw)
        context = LambdaContext(
            statics or _statics(),
            WARMUP_REQUEST_ID,
            time.time() * 1000 + WARMUP_DEADLINE_MS,
            "",
            CognitoIdentity(),
            None,
            None,
        )
        # Encoded and dropped: the encoder's first run is part of the
        # first request's cost too.
        _to_json(handler(event, context))
    except (Exception, SystemExit) as e:
        try:
            sys.stderr.write("[WARN] warmup: %s: %s\n" % (type(e).__name__, " ".join(_describe(e).split())))
        except Exception:
            pass
    finally:
        # The warmup's output must be out before the first poll, when ebb
        # stops tagging the instance's lines as the warmup's.
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass


def _invoke(api, handler, request_id, body, context):
    base = INVOCATION_PREFIX + request_id
    try:
        event = json.loads(body) if body else {}
    except ValueError as e:
        return _post_error(api, base, "Runtime.UnmarshalError", "Unable to unmarshal input: %s" % e, [])
    try:
        result = handler(event, context)
    except Exception as e:
        return _post_error(api, base, type(e).__name__, str(e), _user_frames(e.__traceback__))
    try:
        out = _to_json(result)
    except (TypeError, ValueError, RecursionError) as e:
        return _post_error(api, base, "Runtime.MarshalError", "Unable to marshal response: %s" % e, [])
    _post(api, base + "/response", out, JSON_HEADERS)


def _post_error(api, base, error_type, message, stack_trace):
    _log_error(error_type, message, stack_trace)
    headers = {"Content-Type": "application/json", ERROR_TYPE_HEADER: error_type}
    _post(api, base + "/error", _error_body(error_type, message, stack_trace), headers)


def _post(api, path, body, headers):
    status, _, data = api.request("POST", path, body, headers)
    if status != 202:
        # The API already settled this invocation (timed out, or the result
        # was too large); the process itself is fine, so go on serving.
        sys.stderr.write("[WARNING] POST %s: status %d: %s\n" % (path, status, data[:200].decode("utf-8", "replace")))
        sys.stderr.flush()


def main():
    api_addr = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not api_addr:
        sys.stderr.write("[ERROR] AWS_LAMBDA_RUNTIME_API is not set\n")
        sys.exit(2)
    try:
        handler = load_handler()
    except InitError as e:
        try:
            report_init_error(api_addr, e)
        except (http.client.HTTPException, OSError) as post_err:
            sys.stderr.write("[ERROR] report init error: %s\n" % post_err)
        sys.exit(1)
    try:
        serve(api_addr, handler)
    except (http.client.HTTPException, OSError, RuntimeError) as e:
        # The instance is being stopped or its API is gone: nothing to serve.
        sys.stderr.write("[ERROR] runtime API: %s\n" % e)
        sys.exit(1)


if __name__ == "__main__":
    main()
