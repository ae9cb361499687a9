// The browser's path: a standard global WebSocket instead of the `ws`
// package, in a child Node.js started with --experimental-websocket.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { TestNode } from './node.js';

let node: TestNode;

before(async () => {
  node = await TestNode.start();
});

after(async () => {
  await node?.stop();
});

test('calls, SQL and rooms work over a standard WebSocket', () => {
  const caFile = `${node.dataDir}.ca.pem`;
  writeFileSync(caFile, node.ca);
  const child = fileURLToPath(new URL('./standard-websocket.child.js', import.meta.url));
  const run = spawnSync(process.execPath, ['--experimental-websocket', '--no-warnings', child], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: caFile, BUSBAR_WS: node.websocket, BUSBAR_PASSWORD: node.password },
  });
  assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
  assert.match(run.stdout, /standard WebSocket: ok/);
});
