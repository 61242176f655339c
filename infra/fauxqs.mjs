// Local SQS emulator: fauxqs served on the loopback interface only.
//
// The fauxqs CLI (and its startFauxqs helper) always listens on 0.0.0.0, so this
// script builds the same Fastify app through the exported `buildApp` and binds it
// to 127.0.0.1 itself.
//
// Usage: node infra/fauxqs.mjs [PORT]      (or FAUXQS_PORT=PORT; default 9324)
// Env:   FAUXQS_LOGGER=true                 log every request (off by default: a
//                                           flash sale sends thousands per second)
//
// Queue URLs: fauxqs 1.9.2 defaults its SQS store's `host` to "localhost" and
// then answers CreateQueue with http://sqs.<region>.localhost:PORT/..., a name
// that plain /etc/hosts resolution does not know. With an empty `host` it builds
// the URL from the request's Host header instead, so a client that talks to
// http://127.0.0.1:PORT gets http://127.0.0.1:PORT/000000000000/<QueueName>.
// `buildApp` only copies a non-empty `host`, so the stores are built here; they
// are not exported from the package root, hence the file imports (the package
// is pinned to 1.9.2 in infra/package.json).

import { buildApp } from "fauxqs";
import { SqsStore } from "./node_modules/fauxqs/dist/sqs/sqsStore.js";
import { SnsStore } from "./node_modules/fauxqs/dist/sns/snsStore.js";
import { S3Store } from "./node_modules/fauxqs/dist/s3/s3Store.js";

const HOST = "127.0.0.1";
const REGION = "us-east-1";

const port = Number.parseInt(process.argv[2] ?? process.env.FAUXQS_PORT ?? "9324", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`fauxqs: invalid port ${JSON.stringify(process.argv[2] ?? process.env.FAUXQS_PORT)}`);
  process.exit(2);
}

const sqsStore = new SqsStore();
sqsStore.host = "";

const app = buildApp({
  logger: process.env.FAUXQS_LOGGER === "true",
  defaultRegion: REGION,
  stores: { sqsStore, snsStore: new SnsStore(), s3Store: new S3Store() },
});

try {
  const address = await app.listen({ port, host: HOST });
  console.log(`fauxqs listening on ${address} (region ${REGION})`);
} catch (err) {
  console.error(`fauxqs: cannot listen on ${HOST}:${port}: ${err.message}`);
  process.exit(1);
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, async () => {
    await app.close();
    process.exit(0);
  });
}
