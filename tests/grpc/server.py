"""A gRPC backend for tests/grpc.rs: grpcio's generic handlers over raw
bytes (no generated code). Prints the port it listens on (127.0.0.1, h2c).

    kg.Test/Echo   unary: a JSON of what arrived; sets a trailing header
    kg.Test/Count  server streaming: "0".."n-1" for a request "n"
    kg.Test/Sum    client streaming: the sum of the numbers sent
    kg.Test/Slow   unary: answers after 3 s
"""
import json
import sys
import time
from concurrent import futures

import grpc


def echo(request, context):
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-backend-trailer", "kept"),))
    return json.dumps({
        "echo": request.decode(),
        "key_id": metadata.get("x-keygate-key-id"),
        "access": metadata.get("x-keygate-access"),
        "saw_key": "x-api-key" in metadata,
    }).encode()


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()


def total(requests, context):
    return str(sum(int(r.decode()) for r in requests)).encode()


def slow(request, context):
    time.sleep(3)
    return request


handlers = grpc.method_handlers_generic_handler("kg.Test", {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Sum": grpc.stream_unary_rpc_method_handler(total),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handlers,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()  # until the test closes stdin (or dies)
server.stop(0)
