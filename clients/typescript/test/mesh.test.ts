// Mesh: a provider's methods called by name through the gateway. The
// provider is the Python SDK's (a provider needs the bidirectional
// Mesh/Provide stream with binary descriptors, which this client does not
// offer). $BUSBAR_PYTHON names the Python (it must have `busbar`); without
// it the repo's .venv is tried, and the test is skipped when that has none.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Connection } from '../src/index.js';
import { PACKAGE_ROOT, REPO_ROOT, TestNode, cleanEnv } from './node.js';

function python(): string | null {
  const asked = process.env.BUSBAR_PYTHON;
  // Named explicitly (as `make test-typescript` does), it must work: the
  // test then fails rather than skips.
  if (asked && spawnSync(asked, ['-c', 'import busbar'], { env: cleanEnv() }).status !== 0) {
    throw new Error(`BUSBAR_PYTHON=${asked} cannot import busbar: run \`make python-package\``);
  }
  const candidates = [asked, join(REPO_ROOT, '.venv', 'bin', 'python')];
  for (const candidate of candidates) {
    if (!candidate || !existsSync(candidate)) continue;
    if (spawnSync(candidate, ['-c', 'import busbar'], { env: cleanEnv() }).status === 0) return candidate;
  }
  return null;
}

describe('mesh', () => {
  let node: TestNode;
  let conn: Connection;
  let provider: ChildProcess | undefined;
  const service = `mesh.tstest.Greeter${Math.random().toString(16).slice(2, 10)}`;
  const interpreter = python();

  before(async () => {
    node = await TestNode.start();
    conn = await connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca });
    if (!interpreter) return;
    provider = spawn(interpreter, [join(PACKAGE_ROOT, 'test', 'fixtures', 'provider.py'), join(node.dataDir, 'admin.json'), service], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: cleanEnv(),
    });
    await new Promise<void>((ready, failed) => {
      const timer = setTimeout(() => failed(new Error('the provider did not get ready within 60 s')), 60_000);
      provider!.stdout!.on('data', (d) => {
        if (String(d).includes('ready')) {
          clearTimeout(timer);
          ready();
        }
      });
      provider!.once('exit', (code) => failed(new Error(`the provider exited with ${code}`)));
    });
  });

  after(async () => {
    provider?.stdin?.end();
    if (provider && provider.exitCode === null) await new Promise((done) => provider!.once('exit', done));
    await conn?.close();
    await node?.stop();
  });

  test('remote(service).method(request) calls a provider by name', { skip: interpreter ? false : 'no Python with the busbar package' }, async () => {
    const greeter = conn.remote(service);
    assert.deepEqual(await greeter.hello({ name: 'ts' }), { value: 'hello ts' });
    assert.deepEqual(await conn.call(`${service}/hello`, { name: 'by name' }), { value: 'hello by name' });
    const [listed] = (await conn.services()).filter((s) => s.name === service);
    assert.deepEqual(listed!.methods, ['hello']);
    assert.equal(listed!.providers.length, 1);
    await assert.rejects(greeter.nope({}), { code: 'UNIMPLEMENTED' });
  });

  test('a service nobody provides fails, and the remote proxy is not thenable', async () => {
    const nobody = conn.remote('mesh.tstest.Nobody');
    assert.equal(await Promise.resolve(nobody), nobody);
    await assert.rejects(nobody.hello({}), (error: any) => ['UNIMPLEMENTED', 'UNAVAILABLE', 'NOT_FOUND'].includes(error.code));
    assert.deepEqual(
      (await conn.services()).filter((s) => s.name === 'mesh.tstest.Nobody'),
      [],
    );
  });
});
