// One APNs client, @parse/node-apn (Node's http2, nghttp2 underneath), pushing N
// notifications over one connection: the Node peer of push_clients.py, same protocol.
// It connects, sends warm-up pushes (not counted), then fires --count pushes at once
// and prints one JSON line: wall-clock time, the process's CPU time (user + system,
// process.cpuUsage: every thread) and how many were answered 200.
//
//   node benchmarks/node/push_node_apn.js --url https://127.0.0.1:8443 --ca ca.crt \
//     --key AuthKey.p8 --key-id ABC123DEFG --team-id DEF123GHIJ --topic T [--count N]
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const apn = require('@parse/node-apn');

function args() {
  const out = { count: 10000, warmup: 500 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    out[name] = argv[i + 1];
  }
  out.count = Number(out.count);
  out.warmup = Number(out.warmup);
  return out;
}

// The same doorbell payload as push_clients.py's PAYLOAD.
const MESSAGE = {
  aps: {
    alert: { title: 'Doorbell', body: 'Someone is at the Front door' },
    sound: 'default',
    'interruption-level': 'time-sensitive',
    'thread-id': 'front',
  },
  edgebell: { ring_id: 'bench-ring', button: 'front', at: '2025-01-01T12:00:00Z' },
};

let failure = null;

async function main() {
  const a = args();
  const url = new URL(a.url);
  const provider = new apn.Provider({
    token: { key: fs.readFileSync(a.key), keyId: a.keyId, teamId: a.teamId },
    production: true,
    address: url.hostname,
    port: Number(url.port || 443),
    ca: fs.readFileSync(a.ca),
    requestTimeout: 120000,
    // Passed on to http2.connect: room for 10,000 requests queued behind the server's
    // stream limit (the 10 MB default ends them with ENHANCE_YOUR_CALM).
    maxSessionMemory: 256,
  });
  const send = async token => {
    const note = new apn.Notification();
    note.rawPayload = MESSAGE;
    note.topic = a.topic;
    note.id = crypto.randomUUID();
    note.collapseId = 'bench-ring';
    note.expiry = Math.floor(Date.now() / 1000) + 900;
    note.priority = 10;
    note.pushType = 'alert';
    const result = await provider.send(note, token);
    if (result.failed.length && !failure) failure = result.failed[0];
    return result.sent.length === 1;
  };
  const tokens = n => Array.from({ length: n }, () => crypto.randomBytes(32).toString('hex'));
  await Promise.all(tokens(a.warmup).map(send));
  const batch = tokens(a.count);
  const cpu0 = process.cpuUsage();
  const start = process.hrtime.bigint();
  const results = await Promise.all(batch.map(send));
  const wall = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  provider.shutdown();
  const cpuS = (cpu.user + cpu.system) / 1e6;
  const ok = results.filter(Boolean).length;
  console.log(
    JSON.stringify({
      client: 'node-apn',
      count: a.count,
      ok,
      wall_s: wall,
      cpu_s: cpuS,
      user_s: cpu.user / 1e6,
      sys_s: cpu.system / 1e6,
      rate: a.count / wall,
      cpu_us_per_push: (cpuS / a.count) * 1e6,
    })
  );
  if (failure) console.error('first failure:', JSON.stringify(failure).slice(0, 500));
  process.exit(ok === a.count ? 0 : 1);
}

main().catch(err => {
  console.error(err);
  process.exit(2);
});
