#!/usr/bin/env python3
"""A stock gRPC client for the Vantage scheduler, written with nothing but
the standard Python gRPC packages and the repository's .proto files:

    pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection

It generates the vantage.v1 stubs at run time from proto/vantage/v1/routes.proto
(grpc_tools.protoc, no system protoc), then:

  1. checks health, overall ("") and for vantage.v1.RouteDiscovery;
  2. lists the services by server reflection (grpc.reflection.v1, falling
     back to v1alpha) and fetches the descriptor of vantage.v1.RouteDiscovery;
  3. opens StreamRoutes with a bad credential and expects UNAUTHENTICATED;
  4. subscribes as --node-id with the credential in --credential-file,
     NACKs the first RouteTable it receives, ACKs every later one, and stays
     subscribed until stdin is closed or --max-seconds pass.

Every step prints one JSON line on stdout, e.g.
    {"event": "table", "version": 4, "nonce": "...", ...}
    {"event": "nacked", "version": 4, "nonce": "..."}
Errors print {"event": "error", ...} and exit with status 1.

Used by tests/tests/grpc_stock_client.rs; see docs/grpc-clients.md.
"""

import argparse
import importlib
import json
import os
import queue
import sys
import tempfile
import threading
import time


def emit(**fields):
    print(json.dumps(fields), flush=True)


def fail(step, err):
    emit(event="error", step=step, detail=str(err))
    sys.exit(1)


def generate_stubs(proto_dir, out_dir):
    """Runs grpc_tools.protoc on routes.proto; returns the imported modules."""
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "vantage", "v1", "routes.proto"),
    ])
    if rc != 0:
        raise RuntimeError(f"protoc exited with {rc}")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("vantage.v1.routes_pb2")
    pb2_grpc = importlib.import_module("vantage.v1.routes_pb2_grpc")
    return pb2, pb2_grpc


def channel(target, ca_file):
    import grpc

    with open(ca_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    # The dev server certificate names localhost, 127.0.0.1 and ::1.
    return grpc.secure_channel(
        target, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def check_health(chan, timeout):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(chan)
    for service in ("", "vantage.v1.RouteDiscovery"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        emit(
            event="health",
            service=service,
            status=health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status),
        )


def reflect(chan, timeout):
    """Lists services; v1 first (the messages are identical to v1alpha's)."""
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2

    def ask(method, request):
        call = chan.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return next(iter(call(iter([request]), timeout=timeout)))

    last_err = None
    for protocol in ("v1", "v1alpha"):
        method = f"/grpc.reflection.{protocol}.ServerReflection/ServerReflectionInfo"
        try:
            resp = ask(method, reflection_pb2.ServerReflectionRequest(list_services=""))
        except grpc.RpcError as e:
            last_err = e
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            raise
        services = sorted(s.name for s in resp.list_services_response.service)
        emit(event="services", protocol=protocol, services=services)

        # The descriptor of RouteDiscovery, as grpcurl would fetch it.
        from google.protobuf import descriptor_pb2

        resp = ask(
            method,
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="vantage.v1.RouteDiscovery"
            ),
        )
        methods = []
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for svc in fd.service:
                if f"{fd.package}.{svc.name}" == "vantage.v1.RouteDiscovery":
                    methods += [m.name for m in svc.method]
        emit(event="descriptor", service="vantage.v1.RouteDiscovery", methods=methods)
        return
    raise RuntimeError(f"no reflection service: {last_err}")


def bad_credential(chan, pb2, pb2_grpc, node_id, timeout):
    import grpc

    stub = pb2_grpc.RouteDiscoveryStub(chan)
    bogus = f"vn1.{node_id}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    try:
        call = stub.StreamRoutes(
            iter([pb2.RouteRequest(node_id=node_id)]),
            metadata=[("authorization", f"Bearer {bogus}")],
            timeout=timeout,
        )
        for table in call:
            emit(event="bad_credential_accepted", version=table.version)
            return
        emit(event="bad_credential", code="OK")
    except grpc.RpcError as e:
        emit(event="bad_credential", code=e.code().name, detail=e.details())


def subscribe(chan, pb2, pb2_grpc, node_id, credential, max_seconds):
    import grpc

    requests = queue.Queue()
    done = threading.Event()

    def request_iter():
        while not done.is_set():
            try:
                item = requests.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    stub = pb2_grpc.RouteDiscoveryStub(chan)
    call = stub.StreamRoutes(
        request_iter(),
        metadata=[("authorization", f"Bearer {credential}")],
    )
    requests.put(pb2.RouteRequest(node_id=node_id, version_info=0, response_nonce=""))
    emit(event="subscribed", node_id=node_id)

    def stop_on_stdin_close():
        sys.stdin.read()
        done.set()
        requests.put(None)
        call.cancel()

    threading.Thread(target=stop_on_stdin_close, daemon=True).start()
    timer = threading.Timer(max_seconds, lambda: (done.set(), call.cancel()))
    timer.daemon = True
    timer.start()

    good_version = 0
    first = True
    try:
        for table in call:
            emit(
                event="table",
                node_id=table.node_id,
                version=table.version,
                nonce=table.nonce,
                weights_version=table.weights_version,
                streams=len(table.streams),
                probe_targets=len(table.probe_targets),
                at_ms=int(time.time() * 1000),
            )
            if first:
                first = False
                requests.put(
                    pb2.RouteRequest(
                        node_id=node_id,
                        version_info=good_version,
                        response_nonce=table.nonce,
                        error_detail=pb2.ErrorDetail(
                            code=3, message="rejected by the stock client test"
                        ),
                    )
                )
                emit(event="nacked", version=table.version, nonce=table.nonce)
            else:
                good_version = table.version
                requests.put(
                    pb2.RouteRequest(
                        node_id=node_id, version_info=table.version, response_nonce=table.nonce
                    )
                )
                emit(event="acked", version=table.version, nonce=table.nonce)
    except grpc.RpcError as e:
        if not done.is_set():
            fail("subscribe", f"{e.code().name}: {e.details()}")
    emit(event="closed")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="host:port of the scheduler's gRPC listener")
    p.add_argument("--ca", required=True, help="CA certificate (PEM), e.g. <data-dir>/dev/ca.pem")
    p.add_argument("--proto-dir", required=True, help="directory holding vantage/v1/*.proto")
    p.add_argument("--node-id", required=True)
    p.add_argument("--credential-file", required=True, help="the node's node.credential")
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=10.0, help="per-call deadline")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="vantage-stubs-") as out:
        try:
            pb2, pb2_grpc = generate_stubs(args.proto_dir, out)
        except Exception as e:  # noqa: BLE001 - reported to the test
            fail("stubs", e)
        emit(event="stubs", dir=out)

        chan = channel(args.target, args.ca)
        for step, fn in (
            ("health", lambda: check_health(chan, args.timeout)),
            ("reflection", lambda: reflect(chan, args.timeout)),
            ("bad_credential", lambda: bad_credential(chan, pb2, pb2_grpc, args.node_id, args.timeout)),
        ):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - reported to the test
                fail(step, e)

        with open(args.credential_file) as f:
            credential = f.read().strip()
        subscribe(chan, pb2, pb2_grpc, args.node_id, credential, args.max_seconds)


if __name__ == "__main__":
    main()
