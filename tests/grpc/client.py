"""A gRPC client for tests/grpc.rs: `client.py TARGET CALLS` where CALLS is a
JSON list of [name, kind, method, argument, api_key or null]; kind is unary,
server_stream or client_stream (the argument then a list). Prints one JSON
object: name -> {"ok": ..., "trailers": {...}} or {"code": "UNAUTHENTICATED",
"details": ...}.
"""
import json
import sys

import grpc

target, calls = sys.argv[1], json.loads(sys.argv[2])
channel = grpc.insecure_channel(target)
out = {}
for name, kind, method, arg, key in calls:
    metadata = [("x-api-key", key)] if key else []
    try:
        if kind == "unary":
            resp, call = channel.unary_unary(method).with_call(
                arg.encode(), metadata=metadata, timeout=20)
            out[name] = {"ok": resp.decode(), "trailers": dict(call.trailing_metadata() or ())}
        elif kind == "server_stream":
            out[name] = {"ok": [m.decode() for m in channel.unary_stream(method)(
                arg.encode(), metadata=metadata, timeout=20)]}
        elif kind == "client_stream":
            out[name] = {"ok": channel.stream_unary(method)(
                iter([a.encode() for a in arg]), metadata=metadata, timeout=20).decode()}
    except grpc.RpcError as e:
        out[name] = {"code": e.code().name, "details": e.details()}
print(json.dumps(out))
