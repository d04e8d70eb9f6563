// Calls the hwbp.v1 Arbiter from Node.js with nothing but the .proto files: reserve a
// slot, release it, and show that a refusal carries the rich status. Prints one JSON
// object; exits 1 with {"error": ...} if any step fails.
//
//   node interop.js ARBITER_ADDRESS HOST CPU

"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "..", "protos");

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function main() {
  const [address, host, cpuText] = process.argv.slice(2);
  if (!address || !host || cpuText === undefined) {
    throw new Error("usage: node interop.js ARBITER_ADDRESS HOST CPU");
  }
  const definition = protoLoader.loadSync("hwbp/v1/arbiter.proto", {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const hwbp = grpc.loadPackageDefinition(definition).hwbp.v1;
  const client = new hwbp.Arbiter(address, grpc.credentials.createInsecure());
  const requestId = `node-${process.pid}-${Date.now()}`;
  try {
    const reserved = await call(client, "Reserve", {
      request_id: requestId,
      target: { host, scope: "SCOPE_CPU", cpu: Number(cpuText) },
      spec: { addr: String(0x7000), len: 8, type: "BREAKPOINT_TYPE_WRITE", enabled: true },
      owner: "node-interop",
    });
    const released = await call(client, "Release", {
      request_id: `${requestId}-release`,
      reservation_id: reserved.reservation.id,
    });
    let refusal = null;
    try {
      await call(client, "Reserve", {
        request_id: `${requestId}-refused`,
        target: { host: "no-such-host", scope: "SCOPE_CPU", cpu: 0 },
        spec: { addr: String(0x7000), len: 8, type: "BREAKPOINT_TYPE_WRITE", enabled: true },
      });
    } catch (err) {
      const details = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
      refusal = { code: err.code, rich_status_bytes: details.length ? details[0].length : 0 };
    }
    console.log(
      JSON.stringify({
        reserved: reserved.reservation.id,
        scope: reserved.reservation.target.scope,
        cpu: reserved.reservation.target.cpu,
        addr: reserved.reservation.spec.addr,
        generation: reserved.generation,
        released: released.reservation.id,
        release_generation: released.generation,
        refusal,
      }),
    );
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.log(JSON.stringify({ error: String(err.message || err), code: err.code }));
  process.exit(1);
});
