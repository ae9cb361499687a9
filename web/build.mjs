// Builds the console into dist/: app.js (src/main.ts and the TypeScript
// client, bundled from source), index.html and app.css. The node embeds
// dist/ when it is compiled (crates/busbar-server/build.rs).
import { build } from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  entryPoints: [join(here, 'src/main.ts')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  platform: 'browser',
  outfile: join(dist, 'app.js'),
  // The client's Node-only WebSocket package is never loaded in a browser
  // (the page has its own WebSocket).
  external: ['ws'],
  legalComments: 'none',
  logLevel: 'warning',
});
for (const file of ['favicon.svg', 'app.css', 'index.html']) {
  await copyFile(join(here, 'static', file), join(dist, file));
}
