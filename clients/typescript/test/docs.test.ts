// Every ```ts block of docs/typescript.md runs as written: the blocks, in
// order, make one script (later ones use the `conn` of the first), compiled
// by tsc with the package's own settings and run by Node.js from a directory
// holding a real node's data as ./busbar-data (as after `make run`).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT, REPO_ROOT, TestNode } from './node.js';

const DOCUMENT = join(REPO_ROOT, 'docs', 'typescript.md');
const EXAMPLE_TIMEOUT_MS = 60_000;

function tsBlocks(text: string): string[] {
  return [...text.matchAll(/^```ts[ \t]*\n([\s\S]*?)^```[ \t]*$/gm)].map((m) => m[1]!);
}

test('the document has examples', () => {
  assert.ok(tsBlocks(readFileSync(DOCUMENT, 'utf8')).length >= 8);
});

test('the examples of docs/typescript.md compile and run against a node', async () => {
  const work = mkdtempSync(join(tmpdir(), 'busbar-ts-docs-'));
  const node = await TestNode.start([], join(work, 'busbar-data'));
  try {
    // Inside the package, so `import ... from 'busbar'` finds the package itself (its "exports").
    const dir = join(PACKAGE_ROOT, 'build-test', 'doc-example');
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'example.ts'), tsBlocks(readFileSync(DOCUMENT, 'utf8')).join('\n'));
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        extends: '../../tsconfig.json',
        compilerOptions: { rootDir: '.', outDir: 'out', declaration: false, sourceMap: false, types: ['node'] },
        include: ['example.ts'],
      }),
    );
    const tsc = spawnSync(join(PACKAGE_ROOT, 'node_modules', '.bin', 'tsc'), ['-p', dir], { encoding: 'utf8' });
    assert.equal(tsc.status, 0, `the examples do not compile:\n${tsc.stdout}${tsc.stderr}`);
    const run = spawnSync(process.execPath, [join(dir, 'out', 'example.js')], {
      cwd: work,
      encoding: 'utf8',
      timeout: EXAMPLE_TIMEOUT_MS,
      env: { ...process.env, BUSBAR_WS: node.websocket },
    });
    assert.equal(run.status, 0, `the examples failed:\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}\n${node.log()}`);
    // What the comments in the document say they print.
    for (const line of ['admin', 'CANCELLED', '1 0', 'first chunk', 'chat: hello', "chat [ 'hello' ] admin", "2 [ 'tea', 'coffee' ]", 'no such resource']) {
      assert.ok(run.stdout.split('\n').includes(line), `"${line}" not printed:\n${run.stdout}`);
    }
  } finally {
    await node.stop();
    rmSync(work, { recursive: true, force: true });
  }
});
